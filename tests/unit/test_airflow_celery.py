"""Airflow's executor and Celery workers as configured, without services: environment, worker command and names,
local mode's remembered `--workers` choice, the front door's grammar, and the compose service that scales."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlops_platform import airflow_executor, instances
from mlops_platform.airflow_config import airflow_env, airflow_worker_command, worker_refusal
from mlops_platform.errors import PlatformError
from mlops_platform.local_stacks import with_requirements
from mlops_platform.services import BY_NAME, python_command
from mlops_platform.settings import SettingsError, get_settings
from tests.compose_file import environment
from tests.conftest import REPO_ROOT, TEST_SECRETS, build_settings
from tests.unit.test_run_sh import run

CELERY = {"AIRFLOW_EXECUTOR": "CeleryExecutor"}


def test_local_executor_gets_no_celery_configuration():
    env = airflow_env(build_settings())
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert not [key for key in env if key.startswith("AIRFLOW__CELERY__")]
    assert "AIRFLOW__CORE__HOSTNAME_CALLABLE" not in env


def test_celery_uses_a_redis_database_of_its_own_and_airflows_database_for_results():
    settings = build_settings(**CELERY, REDIS_PASSWORD="p@ss/word", REDIS_PORT="6390", AIRFLOW_WORKER_CONCURRENCY="3")
    env = airflow_env(settings)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:p%40ss%2Fword@127.0.0.1:6390/1"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{settings.postgres_url(settings.airflow_db)}"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith(f"/{settings.airflow_db}")
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "3"


def test_tasks_a_dead_worker_had_received_are_queued_again_after_the_platforms_timeout():
    env = airflow_env(build_settings(**CELERY, AIRFLOW_TASK_QUEUED_TIMEOUT_SECONDS="90"))
    assert env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"] == "90"
    assert env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL"] == "15"
    assert "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT" not in airflow_env(build_settings())


@pytest.mark.parametrize("database", ["0", "16", "-1"])
def test_the_broker_never_shares_feasts_redis_database(database):
    with pytest.raises(SettingsError, match="AIRFLOW_CELERY_REDIS_DB must be a Redis database in 1..15"):
        build_settings(**CELERY, AIRFLOW_CELERY_REDIS_DB=database)


def test_a_named_worker_reports_its_name_as_the_host_of_its_tasks():
    settings = build_settings(**CELERY, AIRFLOW_WORKER_NAME="airflow-worker-2")
    argv = airflow_worker_command(settings)
    assert argv[1:] == ["-m", "mlops_platform.airflow_preload", "celery", "worker", "--skip-serve-logs",
                        "--celery-hostname", "airflow-worker-2"]
    assert airflow_env(settings)["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "mlops_platform.airflow_worker.hostname"
    assert python_command("airflow-worker", settings).argv == argv


def test_an_unnamed_worker_is_celerys_default_node_on_its_host():
    argv = airflow_worker_command(build_settings(**CELERY))
    assert "--celery-hostname" not in argv and argv[-1] == "--skip-serve-logs"


def test_a_worker_refuses_to_start_without_celery(tmp_path):
    env = {**os.environ, **TEST_SECRETS, "PLATFORM_MODE": "local", "PLATFORM_HOME": str(tmp_path),
           "AIRFLOW_EXECUTOR": "LocalExecutor"}
    result = subprocess.run([sys.executable, "-m", "mlops_platform.exec", "airflow-worker"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "AIRFLOW_EXECUTOR is LocalExecutor (its scheduler runs them)" in result.stderr
    assert worker_refusal(build_settings(**CELERY)) == ""


def test_local_mode_runs_workers_only_with_celery_each_named_after_its_instance():
    worker = BY_NAME["airflow-worker"]
    assert instances.planned(worker, build_settings(AIRFLOW_WORKERS="3")) == []
    planned = instances.planned(worker, build_settings(**CELERY, AIRFLOW_WORKERS="2"))
    assert [(one.name, one.instance_variables) for one in planned] == [
        ("airflow-worker", {"AIRFLOW_WORKER_NAME": "airflow-worker"}),
        ("airflow-worker-2", {"AIRFLOW_WORKER_NAME": "airflow-worker-2"})]
    assert len(instances.planned(worker, build_settings(**CELERY, AIRFLOW_WORKERS="0"))) == 1


def test_airflow_needs_redis_only_with_celery():
    local = [s.name for s in with_requirements("airflow", build_settings())]
    celery = [s.name for s in with_requirements("airflow", build_settings(**CELERY))]
    assert "redis" not in local and "airflow-worker" not in local
    assert celery.index("redis") < celery.index("airflow-worker")
    assert celery.index("airflow-api-server") < celery.index("airflow-worker")


@pytest.fixture
def platform_env(monkeypatch, tmp_path):
    """This process's settings read from a platform in tmp_path; the environment and cache restored after."""
    for key, value in {**TEST_SECRETS, "PLATFORM_MODE": "local", "PLATFORM_HOME": str(tmp_path),
                       "AIRFLOW_EXECUTOR": "LocalExecutor", "AIRFLOW_WORKERS": "0"}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_workers_switch_the_platform_to_celery_until_zero_returns_it(platform_env, monkeypatch):
    chosen = airflow_executor.choose(get_settings(), 2)
    assert (chosen.airflow_executor, chosen.airflow_workers) == ("CeleryExecutor", 2)
    # A later run without the flag (status, restart) sees the same choice.
    monkeypatch.setenv("AIRFLOW_EXECUTOR", "LocalExecutor")
    get_settings.cache_clear()
    later = airflow_executor.choose(get_settings(), None)
    assert (later.airflow_executor, later.airflow_workers) == ("CeleryExecutor", 2)
    monkeypatch.setenv("AIRFLOW_EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("AIRFLOW_WORKERS", "0")
    get_settings.cache_clear()
    back = airflow_executor.choose(get_settings(), 0)
    assert back.airflow_executor == "LocalExecutor"
    assert airflow_executor.remembered_workers(back) is None


def test_zero_workers_is_refused_when_the_setting_itself_is_celery(platform_env, monkeypatch):
    monkeypatch.setenv("AIRFLOW_EXECUTOR", "CeleryExecutor")
    get_settings.cache_clear()
    with pytest.raises(PlatformError, match="CeleryExecutor needs at least one worker"):
        airflow_executor.choose(get_settings(), 0)


@pytest.mark.parametrize("args, expected", [
    (("kafka", "up", "--workers", "2"), "--workers scales Airflow's Celery workers: use it with airflow or all"),
    (("airflow", "status", "--workers", "2"), "--workers goes with up or restart"),
    (("airflow", "up", "--workers", "two"), "--workers needs a number of Celery workers"),
    (("airflow", "up", "--workers", "2", "--mode", "docker"), "--scale airflow-worker=2"),
])
def test_the_front_door_explains_a_misplaced_workers_flag(args, expected):
    result = run(*args, env={"PLATFORM_MODE": "local"})
    assert result.returncode != 0
    assert expected in result.stderr


def test_compose_worker_scales_with_the_airflow_image_and_the_shared_executor_setting(raw, compose):
    worker, scheduler = compose["services"]["airflow-worker"], compose["services"]["airflow-scheduler"]
    assert "container_name" not in worker and "ports" not in worker, "a named or published container cannot scale"
    assert worker["image"] == scheduler["image"] and worker["build"] == scheduler["build"]
    assert worker["profiles"] == ["airflow"]
    assert worker["command"] == ["python", "-m", "mlops_platform.exec", "airflow-worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "mlops_platform.health", "airflow-worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "airflow" in compose["services"]["redis"]["profiles"]
    # No worker with the default LocalExecutor; AIRFLOW_WORKERS of them otherwise.
    assert raw["services"]["airflow-worker"]["deploy"]["replicas"] == "${AIRFLOW_WORKERS:-0}"
    for name in ("airflow-worker", "airflow-scheduler", "airflow-api-server"):
        env = environment(raw["services"][name])
        assert env["AIRFLOW_EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
        assert env["AIRFLOW_CELERY_REDIS_DB"] == "${AIRFLOW_CELERY_REDIS_DB:-1}"
