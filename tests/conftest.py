"""Test session configuration.

The tests run the platform through its own front door (`bash run.sh ...`) in local mode, in a state
folder and on ports of their own, so a developer's running platform is neither used nor disturbed.
Everything is set here, before any settings are read, and inherited by every `run.sh` subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
    "STREAM_CONSUMER_PORT": "19108",
    "PREDICTION_LOGGER_PORT": "19109",
    "MONITORING_SERVICE_PORT": "19110",
    # The platform's monitoring service evaluates often enough for a test to watch, and never retrains
    # by itself (tests that check the trigger start a service of their own).
    "MONITOR_INTERVAL_SECONDS": "5",
    "MONITOR_MIN_ROWS": "50",
    "RETRAIN_SUSTAIN_MINUTES": "1440",
}
for _key, _value in TEST_ENVIRONMENT.items():  # an exported variable still wins, e.g. to run two sessions
    os.environ.setdefault(_key, _value)
TEST_HOME = Path(os.environ["PLATFORM_HOME"])


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


def eventually(probe, timeout: float = 90.0, interval: float = 0.25, what: str = "condition"):
    """Poll `probe` until it returns a truthy value; the last value (or error: a service may be warming
    up or restarting) explains a failure."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s; last result: {last!r}")


def secrets_on_command_lines(secrets: dict[str, str]) -> list[tuple[int, str, str]]:
    """(pid, secret's name, command line) of every process on this machine whose arguments hold a secret:
    what `ps` shows any user (and the host, for a container's processes)."""
    leaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        leaks += [(int(entry.name), key, line[:200]) for key, value in secrets.items() if value and value in line]
    return leaks


@pytest.fixture(scope="session")
def settings():
    from mlops_platform.settings import load_settings

    return load_settings()


def airflow_dags_test(settings, dag_id: str, logical_date: str | None = None, conf: dict | None = None,
                      env: dict[str, str] | None = None) -> str:
    """Run a DAG in-process with `airflow dags test` and require a successful run; returns the output.

    The DAG is paused first: the platform's scheduler also advances the running runs of an unpaused
    DAG, and the two would race over the same task instances ("Task Instance not found").
    """
    from mlops_platform.airflow_client import AirflowClient
    from mlops_platform.services import airflow_env, merged_env

    AirflowClient.from_settings(settings).pause(dag_id)
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    if logical_date:
        command.append(logical_date)
    if conf:
        command += ["--conf", json.dumps(conf)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env=merged_env(airflow_env(settings), env or {}))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    assert finished and "state=success" in finished[-1], output[-5000:]
    return output


_started: set[str] = set()


def stack_up(stack: str) -> subprocess.CompletedProcess:
    """`bash run.sh <stack> up` once per session; the session ends with `all down`."""
    result = run_sh(stack, "up")
    _started.add(stack)
    return result


@pytest.fixture(scope="session", autouse=True)
def _stop_platform_at_session_end():
    yield
    if _started and os.environ.get("TEST_KEEP_PLATFORM") != "1":
        run_sh("all", "down", check=False)


@pytest.fixture(scope="session")
def platform_up(settings):
    """The whole local platform, brought up once per session by `bash run.sh all up`."""
    return stack_up("all")


@pytest.fixture(scope="session")
def feast_up(settings):
    """PostgreSQL, Redis and an applied feature repo."""
    return stack_up("feast")


@pytest.fixture(scope="session")
def kafka_up(feast_up):
    """The Kafka broker and the stream consumer (which needs the feature store)."""
    return stack_up("kafka")


@pytest.fixture(scope="session")
def mlflow_up(settings):
    return stack_up("mlflow")


@pytest.fixture(scope="session")
def airflow_up(settings):
    return stack_up("airflow")
