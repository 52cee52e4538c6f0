"""Test session configuration.

The tests run the platform through its own front door (`bash run.sh ...`) in local mode, in a state
folder and on ports of their own, so a developer's running platform is neither used nor disturbed.
Everything is set here, before any settings are read, and inherited by every `run.sh` subprocess.
"""

from __future__ import annotations

import json
import os
import socket
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


def free_port() -> int:
    """A TCP port nothing listens on right now, for a second instance of a service."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """The settings of the platform the service tests run (TEST_ENVIRONMENT above, then .env)."""
    from mlops_platform.settings import load_settings

    return load_settings()


# The secrets every settings load requires; no test's assertion depends on their values unless it passes its own.
TEST_SECRETS = {key: "x" for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_ADMIN_PASSWORD",
                                     "AIRFLOW_FERNET_KEY", "AIRFLOW_SECRET_KEY")}


def build_settings(home: Path | str | None = None, **env: str):
    """Settings from these values alone: the secrets, local mode, `home` as PLATFORM_HOME, `env` on top.

    Neither this process's environment nor `.env` is read, so a unit test sees the same settings on every
    machine; without `home`, PLATFORM_HOME is .env.example's default (for settings no test writes through).
    """
    from mlops_platform.settings import load_settings

    values = {**TEST_SECRETS, "PLATFORM_MODE": "local", **({"PLATFORM_HOME": str(home)} if home else {}), **env}
    return load_settings(values, REPO_ROOT / "tests" / "no-such.env")


@pytest.fixture
def make_settings(tmp_path):
    """`make_settings(**env)`: the unit tests' settings, with PLATFORM_HOME in the test's own tmp_path."""

    def make(**env: str):
        return build_settings(tmp_path, **env)

    return make


TEST_EXPERIMENT = "tests"  # the experiment of temporary_mlflow, with its artifacts in the temporary folder


@pytest.fixture(scope="session")
def temporary_mlflow(tmp_path_factory):
    """A real MLflow tracking store and model registry without a server: SQLite and artifacts in a temporary
    folder. Returns an MlflowClient on it; each test registers models under names of its own."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_experiment(TEST_EXPERIMENT, artifact_location=(folder / "artifacts").as_uri())
    return client


def register_version(client, name: str, artifacts: dict[str, Path] | None = None, alias: str | None = None) -> str:
    """A new version of registered model `name` (created if missing), made by a run holding `artifacts`
    (artifact folder -> local file); `alias` is moved to it when given. Returns the version number."""
    from mlflow.exceptions import MlflowException

    run = client.create_run(client.get_experiment_by_name(TEST_EXPERIMENT).experiment_id)
    for artifact_folder, path in (artifacts or {}).items():
        client.log_artifact(run.info.run_id, str(path), artifact_folder)
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


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


def scaled_up(settings, stack: str, flag: str, service: str, count: int):
    """`bash run.sh <stack> up <flag> <count>`, yielding the service's instances; afterwards a plain `up`
    returns the stack to its configured count. For module fixtures: `yield from scaled_up(...)`."""
    from mlops_platform.instances import instance
    from mlops_platform.services import BY_NAME

    run_sh(stack, "up", flag, str(count))
    _started.add(stack)
    yield [instance(BY_NAME[service], settings, i) for i in range(1, count + 1)]
    run_sh(stack, "up")


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
