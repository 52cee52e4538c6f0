"""Local mode supervises its services: a service whose main process dies is restarted, and all of it goes.

What a user sees is checked: `run/<service>.pid`, the `RESTARTS` and `HEALTH` columns of `bash run.sh
status`, who listens on the port, and which processes are left on the machine (/proc).
"""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from mlops_platform import local, local_service, process_tree
from mlops_platform.settings import load_settings
from tests.conftest import TEST_HOME, eventually, run_sh, stack_up

LOGGER = "prediction-logger"


@pytest.fixture(scope="module")
def serving_up(settings):
    """The serving stack: the prediction logger, and MLflow among what it needs."""
    return stack_up("serving")


def recorded_pid(settings, name: str) -> int:
    return int((settings.home / "run" / f"{name}.pid").read_text())


def status_row(stack: str, name: str) -> dict[str, str]:
    """The service's row of `bash run.sh <stack> status`, by column name."""
    lines = run_sh(stack, "status", check=False).stdout.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("SERVICE "))
    header = lines[header_at]
    starts = [header.index(column) for column in header.split()]
    row = next(line for line in lines[header_at + 1:] if line.split()[0] == name)
    cells = [row[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)]
    return dict(zip(header.split(), cells, strict=True))


def live(pids) -> list[int]:
    return [pid for pid in pids if process_tree.alive(pid)]


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def new_main_pid(settings, name: str, old: int) -> int | None:
    """The recorded main pid once it is a live process other than `old`."""
    try:
        pid = recorded_pid(settings, name)
    except (OSError, ValueError):
        return None
    return pid if pid != old and process_tree.alive(pid) else None


def test_a_killed_prediction_logger_comes_back_healthy_by_itself(serving_up, settings):
    from mlops_platform import health

    old = recorded_pid(settings, LOGGER)
    assert local.main_pid(settings, LOGGER) == old

    os.kill(old, signal.SIGKILL)

    new = eventually(lambda: new_main_pid(settings, LOGGER, old), timeout=120, what="a new main process")
    eventually(lambda: health.check(LOGGER, settings)[0], timeout=180, what="prediction logger healthy again")
    assert local.main_pid(settings, LOGGER) == new
    assert local.restart_count(settings, LOGGER) >= 1
    row = status_row("serving", LOGGER)
    assert row["HEALTH"].startswith("healthy:"), row
    assert int(row["RESTARTS"]) >= 1, row


def test_a_service_killed_while_its_dependency_is_down_comes_back_when_the_dependency_returns(serving_up, settings):
    from mlops_platform import health
    from mlops_platform.services import BY_NAME

    old = recorded_pid(settings, LOGGER)
    restarts_before = local.restart_count(settings, LOGGER)
    local_service.stop(BY_NAME["kafka"], settings)
    try:
        os.kill(old, signal.SIGKILL)
        eventually(lambda: local.restart_count(settings, LOGGER) > restarts_before, timeout=60,
                   what="a restart while Kafka is down")
    finally:
        local_service.start(BY_NAME["kafka"], settings)

    eventually(lambda: health.check(LOGGER, settings)[0], timeout=240, what="prediction logger healthy again")
    assert local.main_pid(settings, LOGGER) not in (None, old)


def test_a_killed_mlflow_main_process_takes_its_whole_tree_with_it(serving_up, settings):
    old = recorded_pid(settings, "mlflow")
    old_tree = process_tree.instance_members(settings.home, "mlflow", old)
    assert len(old_tree) > 1, "MLflow's server runs uvicorn workers under its main process"

    os.kill(old, signal.SIGKILL)

    eventually(lambda: not live(old_tree), timeout=60, what=f"every process of the killed tree gone: {old_tree}")
    new = eventually(lambda: new_main_pid(settings, "mlflow", old), timeout=120, what="a new main process")
    eventually(lambda: answers(f"{settings.mlflow_tracking_uri}/health"), timeout=180, what="MLflow answering")
    new_tree = process_tree.instance_members(settings.home, "mlflow", new)
    assert not set(new_tree) & set(old_tree)
    assert not process_tree.foreign_listener(settings.mlflow_port, new_tree), "the port is served by the new tree"
    row = status_row("mlflow", "mlflow")
    assert row["HEALTH"].startswith("healthy:"), row
    assert int(row["RESTARTS"]) >= 1, row


# ---------------------------------------------------------------------------------------------
# `all down` on a private platform (own state folder and ports), so the session's platform is untouched
# ---------------------------------------------------------------------------------------------
PRIVATE = {
    "PLATFORM_HOME": str(TEST_HOME.parent / f"{TEST_HOME.name}-supervision"),
    "POSTGRES_PORT": str(int(os.environ["POSTGRES_PORT"]) + 2),
    "REDIS_PORT": str(int(os.environ["REDIS_PORT"]) + 2),
}


def processes_of(home: Path) -> list[str]:
    """Live processes whose command line names `home` or whose environment tags them as its services."""
    found = []
    tagged = set(process_tree.home_members(home))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not process_tree.alive(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(home) in cmdline or int(entry.name) in tagged:
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


@pytest.fixture(scope="module")
def private_settings():
    settings = load_settings({**os.environ, **PRIVATE})
    yield settings
    run_sh("all", "down", "--volumes", env=PRIVATE, check=False)


def test_all_down_leaves_no_process_of_the_state_folder(private_settings):
    settings = private_settings
    run_sh("feast", "up", env=PRIVATE)
    # A process that leaves its service's process group and session, as Airflow's task processes and
    # PostgreSQL's backends do: here a program a PostgreSQL backend starts, detached.
    conn = psycopg2.connect(settings.postgres_dsn(settings.feast_db))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"""copy (select 1) to program 'setsid sh -c "sleep 900; : {settings.home}" >/dev/null 2>&1 &'""")
    conn.close()
    eventually(lambda: any("sleep 900" in p for p in processes_of(settings.home)), timeout=30,
               what="the detached program running")
    os.kill(recorded_pid(settings, "redis"), signal.SIGKILL)  # a restart on the way: supervision has been busy
    eventually(lambda: local.restart_count(settings, "redis") >= 1, timeout=60, what="redis restarted")
    assert processes_of(settings.home)

    run_sh("all", "down", env=PRIVATE)

    assert processes_of(settings.home) == []
    for port in (settings.postgres_port, settings.redis_port):
        assert not local.port_in_use(settings.listen_address, port), port
    status = run_sh("all", "status", env=PRIVATE)
    assert "healthy:" not in status.stdout.replace("unhealthy", ""), status.stdout
