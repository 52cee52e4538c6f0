"""The training DAG's shape, parsed without a database or services: tasks, fan-out, params."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from mlops_platform.settings import REPO_ROOT
from training_pipeline.config import TrainingConfig


@pytest.fixture(scope="module")
def dag(dagbag):
    assert dagbag.import_errors == {}
    return dagbag.dags["training"]


def test_parsing_the_dag_loads_no_step_feast_or_mlflow_and_reads_no_settings():
    probe = ("import runpy, sys\n"
             "import mlops_platform.settings as s\n"
             "s.get_settings = lambda: (_ for _ in ()).throw(AssertionError('settings read at parse time'))\n"
             "runpy.run_path('airflow/dags/training.py')\n"
             "steps = ('training_pipeline.flow', 'training_pipeline.final_model', 'training_pipeline.promotion')\n"
             "print(sorted(m for m in (*steps, 'feast', 'mlflow', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


# Instants around the weekly tick (Monday 03:00 UTC), where an unpause is most likely to start a run.
UNPAUSE_INSTANTS = [
    "2026-11-30T02:59:00", "2026-11-30T03:00:01", "2026-11-30T04:30:00", "2026-11-30T19:00:00",
    "2026-12-01T10:00:00", "2026-12-06T23:59:59", "2027-02-28T12:00:00",
]


@pytest.mark.parametrize("now", UNPAUSE_INSTANTS)
def test_weekly_one_run_at_a_time_no_catchup_and_unpausing_starts_nothing_at_once(dag, monkeypatch, now):
    from datetime import UTC, datetime

    import airflow.timetables.trigger as trigger
    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable

    assert dag.catchup is False and dag.max_active_runs == 1
    assert isinstance(dag.timetable, CronTriggerTimetable) and dag.timetable.summary == "0 3 * * 1"
    # What the scheduler asks when the DAG is unpaused without runs of its own, whatever the day and hour:
    # the next run is in the future, so a run triggered by hand (the demo, the monitoring service) is not
    # joined by a missed one.
    instant = datetime.fromisoformat(now).replace(tzinfo=UTC)
    monkeypatch.setattr(trigger, "utcnow", lambda: instant)
    first = dag.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=TimeRestriction(
        earliest=dag.start_date, latest=None, catchup=False))
    assert first.run_after > instant
    assert first.run_after.weekday() == 0 and (first.run_after.hour, first.run_after.minute) == (3, 0)
    assert first.run_after - instant <= timedelta(days=7)


def test_folds_and_final_fit_fan_out_after_the_training_set_and_join_before_registration(dag):
    upstream = {task.task_id: task.upstream_task_ids for task in dag.tasks}
    assert upstream == {
        "start": set(),
        "prepare_training_set": {"start"},
        "cross_validate_fold": {"start", "prepare_training_set"},
        "fit_final_model": {"start", "prepare_training_set"},
        "aggregate": {"start", "cross_validate_fold"},
        "register_and_promote": {"start", "aggregate", "fit_final_model"},
    }
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(dag.get_task("cross_validate_fold"), MappedOperator)


def test_params_default_to_the_pipeline_defaults(dag):
    defaults = TrainingConfig(tracking_uri="")
    params = {key: dag.params[key] for key in dag.params}
    assert params["alpha"] == defaults.alpha and params["l1_ratio"] == defaults.l1_ratio
    assert params["folds"] == defaults.folds and params["mode"] == defaults.mode
    assert params["model_name"] == "driver_trip_completion" and params["features"] == []
    assert set(params) <= set(TrainingConfig.__dataclass_fields__)
