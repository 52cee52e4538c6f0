"""Every DAG imports cleanly and is shaped as its docstring says, without a database or services."""

from __future__ import annotations

import pytest


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"platform_health", "data_ingestion", "feature_materialization"} <= set(dagbag.dag_ids)


def test_ingestion_is_daily_and_retries_and_feeds_materialization(dagbag):
    ingestion = dagbag.dags["data_ingestion"]
    from airflow.timetables.interval import CronDataIntervalTimetable

    assert isinstance(ingestion.timetable, CronDataIntervalTimetable)
    assert ingestion.timetable.summary in ("@daily", "0 0 * * *")
    assert all(t.retries >= 1 for t in ingestion.tasks)
    stats = ingestion.get_task("ingest_driver_stats")
    materialization = dagbag.dags["feature_materialization"]
    assert [o.uri for o in stats.outlets] == ["postgres://postgres:5432/feast/public/driver_hourly_stats"]
    assert "driver_hourly_stats" in str(materialization.timetable.asset_condition)
    assert materialization.get_task("plan_shards").upstream_task_ids == {"apply_feature_repo"}


def test_materialization_maps_one_task_over_the_shards_and_records_only_after_all_of_them(dagbag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    materialization = dagbag.dags["feature_materialization"]
    shard = materialization.get_task("materialize_shard")
    assert isinstance(shard, MappedOperator) and shard.upstream_task_ids == {"plan_shards"}
    record = materialization.get_task("record_materialization")
    assert record.upstream_task_ids == {"plan_shards", "materialize_shard", "materialize_penguins"}
    assert record.trigger_rule == "all_success" and not record.downstream_task_ids
    assert all(t.retries >= 1 for t in materialization.tasks)


def test_batch_serving_is_daily_by_data_interval_and_retries(dagbag):
    from airflow.timetables.interval import CronDataIntervalTimetable

    batch = dagbag.dags["batch_serving"]
    assert isinstance(batch.timetable, CronDataIntervalTimetable)
    assert batch.timetable.summary in ("@daily", "0 0 * * *")
    assert not batch.catchup and batch.max_active_runs == 1
    from mlops_platform.projects import PROJECTS
    from mlops_platform.settings import get_settings

    others = [f"score_{p.name}" for p in PROJECTS.values() if p.model_name != get_settings().model_name]
    assert [t.task_id for t in batch.tasks] == ["score_active_drivers", *others] and others
    assert all(t.retries >= 1 for t in batch.tasks)


def test_a_batch_run_triggered_without_a_logical_date_scores_as_of_its_trigger_time(dagbag, monkeypatch):
    """The UI and the REST API trigger runs without a logical date, hence without a data interval."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    import model_serving.batch

    calls = []
    monkeypatch.setattr(model_serving.batch, "run_batch",
                        lambda at, run_id: calls.append((at, run_id)) or SimpleNamespace(as_dict=dict))
    callable_ = dagbag.dags["batch_serving"].get_task("score_active_drivers").python_callable
    triggered, interval_end = datetime(2026, 11, 22, 9, 26, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC)
    callable_(data_interval_end=None, run_id="manual", dag_run=SimpleNamespace(run_after=triggered))
    callable_(data_interval_end=interval_end, run_id="scheduled", dag_run=SimpleNamespace(run_after=triggered))
    assert calls == [(triggered, "manual"), (interval_end, "scheduled")]


def test_a_project_without_a_champion_is_skipped_not_failed_in_the_batch(dagbag, monkeypatch):
    from datetime import UTC, datetime

    from airflow.sdk.exceptions import AirflowSkipException

    import model_serving.project_batch
    from mlops_platform.model_registry import NoChampion

    def no_champion(project, at, run_id, settings):
        raise NoChampion(f"expected registered model {project.model_name!r} to have a champion")

    monkeypatch.setattr(model_serving.project_batch, "score_project", no_champion)
    task = dagbag.dags["batch_serving"].get_task("score_penguins")
    with pytest.raises(AirflowSkipException, match="penguin_species"):
        task.python_callable("penguins", data_interval_end=datetime(2026, 11, 22, tzinfo=UTC), run_id="r")


def test_model_rollout_runs_by_hand_with_typed_bounded_params(dagbag):
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    rollout = dagbag.dags["model_rollout"]
    assert type(rollout.timetable).__name__ == "NullTimetable", "triggered by hand only"
    assert rollout.max_active_runs == 1 and [t.task_id for t in rollout.tasks] == ["apply_rollout"]
    params = rollout.params
    assert (params["action"], params["mode"], params["share"], params["version"]) == ("start", "canary", None, None)

    def resolves(key: str, value) -> bool:
        try:
            Param(value, **params.get_param(key).schema).resolve()
        except ParamValidationError:
            return False
        return True

    for key, good in (("action", "rollback"), ("mode", "ab"), ("share", 0.25), ("version", "7"), ("outcomes", 500),
                      ("hours", 0.5), ("outcomes", None)):
        assert resolves(key, good), (key, good)
    for key, bad in (("action", "deploy"), ("mode", "champion"), ("share", 1.0), ("share", 0), ("outcomes", 0),
                     ("outcomes", 2.5), ("hours", -1), ("version", 7)):
        assert not resolves(key, bad), (key, bad)


def test_model_rollout_passes_its_params_to_the_same_actions_as_the_cli_as_airflow(dagbag, monkeypatch):
    import mlops_platform.rollout_cli

    calls = []
    monkeypatch.setattr(mlops_platform.rollout_cli, "perform",
                        lambda options, who: calls.append((options, who)) or {"action": options["action"]})
    callable_ = dagbag.dags["model_rollout"].get_task("apply_rollout").python_callable
    assert callable_(params={"action": "promote", "reason": "weekly review"}) == {"action": "promote"}
    assert calls == [({"action": "promote", "reason": "weekly review"}, "airflow")]


def test_a_refused_rollout_fails_the_task_without_retrying(dagbag, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    import mlops_platform.rollout_cli
    from mlops_platform.rollout import RolloutError

    def refuse(options, who):
        raise RolloutError("no rollout of 'm' is running: nothing to promote")

    monkeypatch.setattr(mlops_platform.rollout_cli, "perform", refuse)
    task = dagbag.dags["model_rollout"].get_task("apply_rollout")
    assert task.retries == 0
    with pytest.raises(AirflowFailException, match="nothing to promote"):
        task.python_callable(params={"action": "promote"})
