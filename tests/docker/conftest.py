"""Docker-mode tests: the platform in containers, driven through `bash run.sh ... --mode docker`.

They run after the unit and service tests (`bash run.sh test docker`, part of `bash run.sh test`), with
host ports of their own, so neither a local-mode test platform nor a developer's platform on the default
ports is in the way. The session brings the platform up once; the last test takes it down with its
volumes and checks nothing of it remains.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.conftest import REPO_ROOT, run_sh

PROJECT = "ride-mlops"
DOCKER_ENV = {
    "PLATFORM_MODE": "docker",
    "POSTGRES_PORT": "25432", "REDIS_PORT": "26379", "MLFLOW_PORT": "25000", "AIRFLOW_PORT": "28080",
    "KAFKA_PORT": "29192", "PROMETHEUS_PORT": "29090", "SERVING_PORT": "28000", "MONITORING_SERVICE_PORT": "29110",
    "GRAFANA_PORT": "23000", "ELASTICSEARCH_PORT": "29200", "KIBANA_PORT": "25601", "JENKINS_PORT": "28081",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/docker/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


def docker_sh(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    return run_sh(*args, "--mode", "docker", env=DOCKER_ENV, timeout=timeout, check=check)


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def project_containers(all_states: bool = True) -> list[dict]:
    result = docker("ps", *(["--all"] if all_states else []), "--filter", f"label=com.docker.compose.project={PROJECT}",
                    "--format", "{{json .}}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def env_value(key: str) -> str:
    from mlops_platform.settings import read_env_file

    return os.environ.get(key) or read_env_file(REPO_ROOT / ".env")[key]


@pytest.fixture(scope="session")
def docker_platform():
    """`bash run.sh all up --mode docker`, once; what it printed is returned for the tests to read."""
    if docker("info").returncode != 0:
        pytest.skip("no Docker engine answers `docker info` (bash run.sh setup --mode docker starts one as root)")
    foreign = [c["Names"] for c in project_containers(all_states=False)]
    if foreign and os.environ.get("CI") == "true":
        # A CI machine's engine may bring back what an earlier run left (restart: unless-stopped).
        docker_sh("all", "down", "--volumes", timeout=600)
    elif foreign and os.environ.get("TEST_KEEP_PLATFORM") != "1":
        pytest.skip(f"a {PROJECT} platform is already running here ({', '.join(foreign)}): "
                    "the docker tests would replace it; stop it with `bash run.sh all down` first")
    os.environ.update(DOCKER_ENV)  # for the tests' own requests and for compose's `ps`
    started = time.monotonic()
    result = docker_sh("all", "up", timeout=3000)
    result.seconds = time.monotonic() - started
    yield result
    if os.environ.get("TEST_KEEP_PLATFORM") != "1" and project_containers():
        docker_sh("all", "down", "--volumes", check=False, timeout=600)
