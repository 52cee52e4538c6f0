"""Airflow on Celery with two workers: a sharded materialization's shards and the training DAG's mapped folds
run on both, and a worker killed while running some folds costs a retry of those on the other worker, not the
run.

The module switches the session's platform to CeleryExecutor with `bash run.sh airflow up --workers 2` (which
restarts the scheduler and starts two supervised workers) and returns it to LocalExecutor with `--workers 0`
afterwards. Both ways a dying worker loses tasks come back sooner here than by default (docs/airflow.md):
the scheduler gives up on a running task whose worker stopped heartbeating after 20 s (Airflow's default
is 300), and queues again a task the worker had received but not started after 45 s (the platform's
default is 180). Rows: drivers 8,600,001.., labels in the two weeks before 2022-10-01, a model name of
the module's own.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest

from mlops_platform import supervisor
from mlops_platform.airflow_client import AirflowClient
from mlops_platform.local import main_pid
from tests.conftest import eventually, run_sh
from tests.services.training_data import load_generated, window

pytestmark = pytest.mark.slow  # switches the scheduler's executor twice and runs the training DAG: minutes

DAG = "training"
WORKERS = ("airflow-worker", "airflow-worker-2")
# What the scheduler is started with (an Airflow variable, a platform setting).
FAST_RECOVERY = {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                 "AIRFLOW_TASK_QUEUED_TIMEOUT_SECONDS": "45"}
FOLDS = 4
SHARDS = 4  # as many as the two workers' slots: each worker takes two (Celery prefetches one per slot)


def scheduler_variable(settings, name: str) -> str | None:
    """A variable of the environment the supervised scheduler was started with (None: not running)."""
    if main_pid(settings, "airflow-scheduler") is None:
        return None
    spec = json.loads(supervisor.launch_file(settings, "airflow-scheduler").read_text())
    return spec["env"].get(name)


@pytest.fixture(scope="module")
def celery_airflow(offline_store, mlflow_up, settings):
    """The platform's Airflow on CeleryExecutor with two workers; LocalExecutor again afterwards."""
    env = {**FAST_RECOVERY, "MATERIALIZATION_SHARDS": str(SHARDS)}

    def recovers_fast() -> bool:
        return all(scheduler_variable(settings, name) == value for name, value in FAST_RECOVERY.items())

    if scheduler_variable(settings, "AIRFLOW_EXECUTOR") == "CeleryExecutor" and not recovers_fast():
        run_sh("airflow", "up", "--workers", "0", env=env)  # a scheduler of an earlier run, without the timeouts
    before = scheduler_variable(settings, "AIRFLOW_EXECUTOR")
    began = time.monotonic()
    result = run_sh("airflow", "up", "--workers", "2", env=env)
    print(f"airflow up --workers 2 (executor was {before}): {time.monotonic() - began:.0f}s")
    if before == "LocalExecutor":
        assert "executor LocalExecutor -> CeleryExecutor, restarting airflow-scheduler" in result.stdout
    assert scheduler_variable(settings, "AIRFLOW_EXECUTOR") == "CeleryExecutor"
    assert recovers_fast()
    assert all(main_pid(settings, name) for name in WORKERS), result.stdout
    yield AirflowClient.from_settings(settings), env
    run_sh("airflow", "up", "--workers", "0", env=env)
    assert scheduler_variable(settings, "AIRFLOW_EXECUTOR") == "LocalExecutor"
    assert not any(main_pid(settings, name) for name in WORKERS)


@pytest.fixture(scope="module")
def training_conf(offline_store):
    load_generated(8_600_001, drivers=40, days=14, end="2022-10-01", seed=47)
    return {**window("2022-10-01", 14), "folds": FOLDS, "min_rows": 300,
            "model_name": f"test_celery_{uuid.uuid4().hex[:8]}"}


def task_instances(client: AirflowClient, run_id: str, dag: str = DAG) -> list[dict]:
    return client.request("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]


def tries(client: AirflowClient, run_id: str, ti: dict) -> list[dict]:
    mapped = f"/{ti['map_index']}" if ti["map_index"] >= 0 else ""
    path = f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{ti['task_id']}{mapped}/tries"
    return sorted(client.request("GET", path)["task_instances"], key=lambda t: t["try_number"])


def wall_seconds(client: AirflowClient, run_id: str) -> float:
    from datetime import datetime

    run = client.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")
    return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()


def test_a_sharded_materialization_runs_its_shards_on_both_workers(celery_airflow):
    client, _ = celery_airflow
    dag = "feature_materialization"
    run_id = client.trigger(dag, {"lookback_hours": 1}, note="test_celery_workers")
    try:
        assert client.wait(dag, run_id, timeout=600) == "success"
    finally:
        client.pause(dag)  # asset-scheduled: other tests' ingestions must not start runs of it
    shards = [ti for ti in task_instances(client, run_id, dag) if ti["task_id"] == "materialize_shard"]
    assert sorted(ti["map_index"] for ti in shards) == list(range(SHARDS))
    assert {ti["hostname"] for ti in shards} == set(WORKERS), [(ti["map_index"], ti["hostname"]) for ti in shards]


def test_folds_run_on_both_workers_and_a_killed_workers_task_is_retried_on_the_other(celery_airflow, training_conf,
                                                                                       settings):
    client, env = celery_airflow
    run_id = client.trigger(DAG, training_conf, note="test_celery_workers")

    def folds_running_on_both_workers():
        running = [ti for ti in task_instances(client, run_id)
                   if ti["state"] == "running" and ti["task_id"] == "cross_validate_fold"]
        return running if {ti["hostname"] for ti in running} == set(WORKERS) else None

    running = eventually(folds_running_on_both_workers, timeout=300, interval=0.5,
                         what=f"mapped folds of the run running on both {WORKERS}")
    victims = [ti for ti in running if ti["hostname"] == WORKERS[1]]
    os.kill(main_pid(settings, WORKERS[1]), signal.SIGKILL)
    # The worker's machine is gone for good: scaled down, so supervision does not bring it back.
    run_sh("airflow", "up", "--workers", "1", env=env)
    assert main_pid(settings, WORKERS[1]) is None

    assert client.wait(DAG, run_id, timeout=600) == "success"
    folds = [ti for ti in task_instances(client, run_id) if ti["task_id"] == "cross_validate_fold"]
    assert sorted(ti["map_index"] for ti in folds) == list(range(FOLDS))
    assert all(ti["state"] == "success" for ti in folds)
    for victim in victims:
        history = tries(client, run_id, victim)
        assert history[0]["hostname"] == WORKERS[1] and history[0]["state"] == "failed", history
        assert history[-1]["hostname"] == WORKERS[0] and history[-1]["state"] == "success", history
    print(f"training DAG, {len(victims)} fold(s) lost with a worker and retried: {wall_seconds(client, run_id):.0f}s")
