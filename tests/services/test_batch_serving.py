"""batch_serving end to end: a champion of our own, stats of our own, the DAG run with `airflow dags test`.

Stats rows live around September 2024 with driver ids from 9,100,000 up, a window and an id range no
other test writes, so "every driver active at the run's timestamp" is exactly the drivers made here.
(The window must follow the DAG's start_date: `dags test` creates no task for an earlier date.)
The registered model has a name of its own, passed to the DAG's process as MODEL_NAME.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow.parquet as parquet
import pytest

from data_pipeline.offline_store import STATS_TABLE, ensure_schema
from feast_repo.features import FEATURE_NAMES
from mlops_platform import model_registry
from mlops_platform.model_registry import NoChampion
from mlops_platform.postgres import connect
from mlops_platform.services import merged_env
from model_serving import prediction_store
from model_serving.batch import export_path, load_champion_model
from model_serving.prediction_store import BATCH_TABLE
from tests.conftest import REPO_ROOT, airflow_dags_test
from training_pipeline import tracking

AT = datetime(2024, 9, 15, tzinfo=UTC)  # the run's timestamp: the end of its data interval
LOGICAL_DATE = AT.isoformat()  # `dags test` with this date runs the interval [AT - 1 day, AT)
FIRST_ID = 9_100_000
SOURCE = "test-batch-serving"
FEATURES = list(FEATURE_NAMES)
TTL = timedelta(days=2)


def stats_row(driver_id: int, at: datetime, rng: np.random.Generator) -> dict:
    # Rates on a 1/1024 grid survive PostgreSQL's real and Feast's Float32 exactly.
    return {"driver_id": driver_id, "event_timestamp": at, "created": at + timedelta(minutes=5),
            "conv_rate": int(rng.integers(1025)) / 1024, "acc_rate": int(rng.integers(1025)) / 1024,
            "avg_daily_trips": int(rng.integers(60))}


@pytest.fixture(scope="module")
def stats(feast_up) -> dict:
    """Active drivers (rows within the TTL, some also after AT), one inactive, one seen only after AT."""
    rng = np.random.default_rng(5)
    active = list(range(FIRST_ID, FIRST_ID + 8))
    inactive, future_only, edge = FIRST_ID + 100, FIRST_ID + 101, FIRST_ID + 102
    rows = []
    for driver in active:
        rows += [stats_row(driver, AT - timedelta(hours=h), rng) for h in (47, 20, 3, 1)]
        rows.append(stats_row(driver, AT + timedelta(hours=1), rng))  # the future: never used
    rows.append(stats_row(inactive, AT - TTL - timedelta(hours=1), rng))
    rows.append(stats_row(inactive, AT - timedelta(days=5), rng))
    rows.append(stats_row(future_only, AT + timedelta(hours=2), rng))
    rows.append(stats_row(edge, AT - TTL + timedelta(minutes=1), rng))  # just inside the TTL
    frame = pd.DataFrame(rows)

    ensure_schema()
    prediction_store.ensure_schema()  # a fresh platform has no batch_predictions table before its first run
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where source = %s or driver_id between %s and %s",
                    (SOURCE, FIRST_ID, FIRST_ID + 999))
        cur.execute(f"delete from {BATCH_TABLE} where driver_id between %s and %s", (FIRST_ID, FIRST_ID + 999))
        cur.executemany(
            f"insert into {STATS_TABLE} (driver_id, event_timestamp, created, conv_rate, acc_rate, avg_daily_trips, "
            "source) values (%s, %s, %s, %s, %s, %s, %s)",
            [(r["driver_id"], r["event_timestamp"], r["created"], r["conv_rate"], r["acc_rate"],
              r["avg_daily_trips"], SOURCE) for r in rows])
    # What Feast must return: each active driver's newest row at or before AT.
    past = frame[frame["event_timestamp"] <= AT].sort_values("event_timestamp")
    latest = past.groupby("driver_id").tail(1).set_index("driver_id")
    expected = latest.loc[[*active, edge], FEATURES].astype(np.float64)
    yield {"expected_features": expected, "inactive": inactive, "future_only": future_only}
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where source = %s", (SOURCE,))


@pytest.fixture(scope="module")
def champion(mlflow_up, settings):
    """A tiny sklearn Pipeline registered under a name of its own, with alias `champion`."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = pd.DataFrame({"conv_rate": rng.random(200), "acc_rate": rng.random(200),
                      "avg_daily_trips": rng.integers(0, 60, 200).astype(np.float64)})
    y = 0.2 + 0.5 * x["conv_rate"] + 0.3 * x["acc_rate"] + 0.004 * x["avg_daily_trips"] + rng.normal(0, 0.05, 200)
    pipeline = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=0.1))]).fit(x, y)

    name = f"batch-serving-test-{uuid.uuid4().hex[:8]}"
    client = model_registry.client(settings.mlflow_tracking_uri)
    # An explicit experiment, not mlflow.set_experiment: that would leak into later tests of the session.
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "batch-serving-test")):
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=name,
                                        signature=infer_signature(x, pipeline.predict(x)))
    client.set_registered_model_alias(name, "champion", str(info.registered_model_version))
    yield {"name": name, "version": str(info.registered_model_version), "pipeline": pipeline}
    client.delete_registered_model(name)


def run_dag(settings, model_name: str) -> str:
    return airflow_dags_test(settings, "batch_serving", LOGICAL_DATE, env={"MODEL_NAME": model_name})


def table_rows(run_id: str | None = None) -> pd.DataFrame:
    where, params = (("run_id = %s", (run_id,)) if run_id
                     else ("driver_id between %s and %s", (FIRST_ID, FIRST_ID + 999)))
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"select run_id, driver_id, event_timestamp, score, model_name, model_version, created_at "
                    f"from {BATCH_TABLE} where {where} order by driver_id", params)
        columns = [c.name for c in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=columns)


@pytest.fixture(scope="module")
def first_run(settings, stats, champion, airflow_up) -> pd.DataFrame:
    run_dag(settings, champion["name"])
    return table_rows()


def test_the_dag_scores_each_active_driver_once_with_the_point_in_time_features(first_run, stats, champion):
    expected = stats["expected_features"]
    assert first_run["run_id"].nunique() == 1
    assert list(first_run["driver_id"]) == sorted(expected.index), "one row per active driver, nobody else"
    assert stats["inactive"] not in set(first_run["driver_id"]), "last stats older than the TTL: not scored"
    assert stats["future_only"] not in set(first_run["driver_id"]), "stats only after the run: not scored"
    want = champion["pipeline"].predict(expected.loc[first_run["driver_id"]].reset_index(drop=True))
    assert first_run["score"].to_numpy() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert set(first_run["event_timestamp"]) == {AT}
    assert set(first_run["model_name"]) == {champion["name"]}
    assert set(first_run["model_version"]) == {champion["version"]}


def test_the_parquet_export_matches_the_table(settings, first_run):
    run_id = first_run["run_id"].iloc[0]
    exported = parquet.read_table(export_path(settings, run_id)).to_pandas()
    columns = ["run_id", "driver_id", "event_timestamp", "score", "model_name", "model_version"]
    exported = exported.sort_values("driver_id").reset_index(drop=True)[columns]
    stored = first_run[columns].reset_index(drop=True)
    exported["event_timestamp"] = pd.to_datetime(exported["event_timestamp"], utc=True)
    stored["event_timestamp"] = pd.to_datetime(stored["event_timestamp"], utc=True)
    pd.testing.assert_frame_equal(exported, stored, check_dtype=False)
    assert not list(export_path(settings, run_id).parent.glob(".*.tmp-*")), "no temporary file left behind"


def test_rerunning_a_run_id_replaces_its_rows(settings, first_run, champion):
    run_id = first_run["run_id"].iloc[0]
    result = subprocess.run([sys.executable, "-m", "model_serving.batch", "--at", AT.isoformat(), "--run-id", run_id],
                            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
                            env=merged_env({"PYTHONPATH": str(REPO_ROOT), "MODEL_NAME": champion["name"]}))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replaced_rows"] == len(first_run) == report["scored"]

    again = table_rows(run_id)
    assert len(again) == len(first_run), "re-running replaced the run's rows instead of adding to them"
    assert list(again["driver_id"]) == list(first_run["driver_id"])
    assert again["score"].to_numpy() == pytest.approx(first_run["score"].to_numpy())
    assert (again["created_at"] > first_run["created_at"].max()).all()
    assert len(parquet.read_table(export_path(settings, run_id))) == len(first_run)


def test_a_missing_champion_fails_clearly(settings, mlflow_up):
    with pytest.raises(NoChampion, match="alias 'champion'"):
        load_champion_model(replace(settings, model_name=f"no-such-model-{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="module")
def challenger(champion, settings):
    """A second version of the test's model, scoring differently, under the alias `challenger`."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(4)
    x = pd.DataFrame({"conv_rate": rng.random(200), "acc_rate": rng.random(200),
                      "avg_daily_trips": rng.integers(0, 60, 200).astype(np.float64)})
    y = 0.9 - 0.4 * x["conv_rate"] + rng.normal(0, 0.05, 200)  # another model: scores differ from the champion's
    pipeline = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=0.1))]).fit(x, y)
    client = model_registry.client(settings.mlflow_tracking_uri)
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "batch-serving-test")):
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=champion["name"],
                                        signature=infer_signature(x, pipeline.predict(x)))
    client.set_registered_model_alias(champion["name"], "challenger", str(info.registered_model_version))
    return {"version": str(info.registered_model_version), "pipeline": pipeline, "client": client}


def run_module(model_name: str, run_id: str, *extra: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "model_serving.batch", "--at", AT.isoformat(), "--run-id", run_id,
                             *extra], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
                            env=merged_env({"PYTHONPATH": str(REPO_ROOT), "MODEL_NAME": model_name}))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def variant_rows(run_id: str) -> pd.DataFrame:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"select variant, driver_id, score, model_version from {BATCH_TABLE} where run_id = %s "
                    "order by variant, driver_id", (run_id,))
        return pd.DataFrame(cur.fetchall(), columns=["variant", "driver_id", "score", "model_version"])


def assert_both_variants_scored(settings, run_id: str, stats, champion, challenger) -> None:
    rows = variant_rows(run_id)
    expected = stats["expected_features"]
    for variant, model, version in (("champion", champion["pipeline"], champion["version"]),
                                    ("challenger", challenger["pipeline"], challenger["version"])):
        part = rows[rows["variant"] == variant]
        assert list(part["driver_id"]) == sorted(expected.index), f"every active driver scored by the {variant}"
        want = model.predict(expected.loc[part["driver_id"]].reset_index(drop=True))
        assert part["score"].to_numpy() == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert set(part["model_version"]) == {version}
    exported = parquet.read_table(export_path(settings, run_id)).to_pandas()
    assert sorted(zip(exported["variant"], exported["driver_id"], strict=True)) == \
        sorted(zip(rows["variant"], rows["driver_id"], strict=True))


def test_asked_for_both_variants_the_challenger_scores_every_driver_too(settings, stats, champion, challenger):
    run_id = f"variants-{uuid.uuid4().hex[:8]}"
    report = run_module(champion["name"], run_id, "--variants", "champion,challenger")
    assert report["versions"] == {"champion": champion["version"], "challenger": challenger["version"]}
    assert report["scored"] == 2 * len(stats["expected_features"]) and report["rollout_id"] is None
    assert_both_variants_scored(settings, run_id, stats, champion, challenger)
    only_champion = run_module(champion["name"], f"champion-{run_id}")  # no rollout runs: the champion alone
    assert only_champion["versions"] == {"champion": champion["version"]}
    assert set(variant_rows(f"champion-{run_id}")["variant"]) == {"champion"}


def test_while_a_rollout_runs_the_dag_scores_with_both_of_its_versions(settings, stats, champion, challenger):
    from mlops_platform import rollout_store

    rollout = rollout_store.start(replace(settings, model_name=champion["name"]), challenger["client"],
                                  champion["name"], "shadow", actor="test", reason="batch scoring test")
    try:
        run_dag(settings, champion["name"])
    finally:
        rollout_store.rollback(replace(settings, model_name=champion["name"]), challenger["client"], champion["name"],
                               actor="test", reason="batch scoring test done", rollout_id=rollout.rollout_id)
    run_id = table_rows().sort_values("created_at")["run_id"].iloc[-1]
    assert set(variant_rows(run_id)["variant"]) == {"champion", "challenger"}
    assert_both_variants_scored(settings, run_id, stats, champion, challenger)
