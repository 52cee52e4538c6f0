"""Test session configuration.

The tests run the platform through its own front door (`bash run.sh ...`) in local mode, in a state
folder and on ports of their own, so a developer's running platform is neither used nor disturbed.
Everything is set here, before any settings are read, and inherited by every `run.sh` subprocess.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_HOME = REPO_ROOT / ".platform-test"

TEST_ENVIRONMENT = {
    "PLATFORM_MODE": "local",
    "PLATFORM_HOME": str(TEST_HOME),
    "POSTGRES_PORT": "15432",
    "REDIS_PORT": "16379",
    "MLFLOW_PORT": "15000",
    "AIRFLOW_PORT": "18080",
    "KAFKA_PORT": "19092",
    "KAFKA_CONTROLLER_PORT": "19093",
    "PROMETHEUS_PORT": "19090",
    "SERVING_PORT": "18000",
}
os.environ.update(TEST_ENVIRONMENT)


def run_sh(*args: str, env: dict[str, str] | None = None, timeout: float = 900,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run `bash run.sh ARGS` as a user would; output is kept for assertions and failure messages."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "run.sh"), *args], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"`bash run.sh {' '.join(args)}` exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def settings():
    from mlops_platform.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def platform_up(settings):
    """The whole local platform, brought up once per session by `bash run.sh all up`."""
    result = run_sh("all", "up")
    yield result
    run_sh("all", "down", check=False)
