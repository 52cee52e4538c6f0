"""The training pipeline against real services: point-in-time join, early failures, champion/challenger, the DAG.
Models on other features than the champion's, and runs failing after registration: test_training_promotion.py.

Rows live in 2022 with driver ids from 8,000,000 up, a window and an id range no other test writes,
and each test has a month of its own. Registered models get names of their own, except in the DAG
test, which runs the DAG as shipped and so uses the default name.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from data_pipeline.offline_store import ORDERS_TABLE, STATS_COLUMNS, STATS_TABLE
from mlops_platform.model_registry import TrackingUnavailable
from mlops_platform.postgres import connect
from tests.conftest import REPO_ROOT, airflow_dags_test
from tests.services.training_data import FEATURES, SERVICE, copy_rows, delete_drivers, load_generated, run_cli, window
from training_pipeline import flow, model, registry, training_set
from training_pipeline.config import ConfigError


# ---------------------------------------------------------------------------------------------
# point in time
# ---------------------------------------------------------------------------------------------
def test_a_label_never_gets_a_feature_row_from_after_it(offline_store, settings):
    from mlops_platform.feature_store import feature_store

    driver, t = 8_100_001, datetime(2022, 1, 10, tzinfo=UTC)
    delete_drivers(driver, driver)
    stats = pd.DataFrame({"driver_id": [driver] * 2, "event_timestamp": [t, t + timedelta(hours=2)],
                          "created": [t + timedelta(minutes=5), t + timedelta(hours=2, minutes=5)],
                          "conv_rate": [0.1, 0.2], "acc_rate": [0.3, 0.4], "avg_daily_trips": [1, 2]})
    copy_rows(stats, STATS_TABLE, STATS_COLUMNS)
    labels = {
        t - timedelta(minutes=1): None,                    # before any row: no features
        t + timedelta(minutes=30): 0.1,                    # first row
        t + timedelta(hours=1, minutes=59): 0.1,           # the second row is 1 minute in its future
        t + timedelta(hours=2): 0.2,                       # exactly at the second row: valid
        t + timedelta(hours=3): 0.2,
        t + timedelta(days=2, hours=2, seconds=1): None,   # past the 2-day TTL: no features
    }
    orders = pd.DataFrame({"driver_id": driver, "event_timestamp": list(labels), "trip_completed": 1})
    copy_rows(orders, ORDERS_TABLE, ("driver_id", "event_timestamp", "trip_completed"))

    store = feature_store(settings)
    sql = training_set.labels_sql(t - timedelta(hours=1), t + timedelta(days=3))
    sql += f" AND driver_id = {driver}"
    fast, _ = training_set.build(store, sql, SERVICE, FEATURES, settings, "fast", check_rows=100, seed=1)
    by_feast, _ = training_set.build(store, sql, SERVICE, FEATURES, settings, "feast")
    expected = [np.nan if v is None else float(np.float32(v)) for v in labels.values()]
    np.testing.assert_array_equal(fast["conv_rate"].to_numpy(), expected)
    pd.testing.assert_frame_equal(fast, by_feast)


# ---------------------------------------------------------------------------------------------
# early failures
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, error, expected", [
    ({"features": ["conv_rate", "rating"]}, ConfigError, "unknown feature(s) ['rating']: feature service "
                                                         "'driver_trip_completion' serves"),
    ({"folds": 1}, ConfigError, "folds must be >= 2"),
    ({"alpha": -0.1}, ConfigError, "alpha must be >= 0"),
    ({"l1_ratio": 1.2}, ConfigError, "l1_ratio must be between 0 and 1"),
    ({"tracking_uri": "http://127.0.0.1:9"}, TrackingUnavailable,
     "MLflow tracking server http://127.0.0.1:9 does not answer http://127.0.0.1:9/health"),
])
def test_bad_configuration_fails_before_a_run_is_opened(offline_store, mlflow_client, overrides, error, expected):
    run_name = f"bad-config-{uuid.uuid4().hex[:8]}"
    began = time.monotonic()
    with pytest.raises(error) as raised:
        flow.start(overrides, run_name)
    assert expected in str(raised.value)
    assert time.monotonic() - began < 30
    experiment = mlflow_client.get_experiment_by_name("driver_trip_completion")
    if experiment is not None:
        found = mlflow_client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_name}'")
        assert found == []


def test_the_cli_refuses_a_bad_configuration_with_exit_status_2(offline_store):
    result = subprocess.run([sys.executable, "-m", "training_pipeline", "--folds", "1", "--alpha", "-1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "folds must be >= 2" in result.stderr and "alpha must be >= 0" in result.stderr


# ---------------------------------------------------------------------------------------------
# champion / challenger
# ---------------------------------------------------------------------------------------------
def shuffle_labels_before(start: str, end: str, first: int, last: int, seed: float = 0.42) -> int:
    """Permute trip_completed among the orders of [start, end) (the fit part; the holdout keeps its truth)."""
    with connect() as conn, conn.cursor() as cur:
        cur.execute("select setseed(%s)", (seed,))
        cur.execute(f"""
            with fit as (
                select driver_id, event_timestamp, trip_completed,
                       row_number() over (order by driver_id, event_timestamp) as k,
                       row_number() over (order by random()) as r
                from {ORDERS_TABLE}
                where event_timestamp >= %s and event_timestamp < %s and driver_id between %s and %s)
            update {ORDERS_TABLE} o set trip_completed = b.trip_completed
            from fit a join fit b on a.k = b.r
            where o.driver_id = a.driver_id and o.event_timestamp = a.event_timestamp""", (start, end, first, last))
        return cur.rowcount


def test_champion_moves_only_to_a_better_model(offline_store, mlflow_client):
    first = 8_000_001
    load_generated(first, drivers=60, days=14, end="2022-03-01", seed=11)
    labels = window("2022-03-01", 14)
    name = f"test_promotion_{uuid.uuid4().hex[:8]}"
    base = {**labels, "model_name": name, "folds": 3, "min_rows": 500, "rmse_threshold": 0.5}

    # 1. No champion yet: even a weak model (a penalty so strong it predicts a constant) takes it.
    weak = run_cli("--alpha", "1.0", "--l1-ratio", "0.5", "--folds", "3", "--min-rows", "500", "--rmse-threshold",
                   "0.5", "--model-name", name, "--label-start", labels["label_start"], "--label-end",
                   labels["label_end"])
    assert weak["decision"] == "promoted" and "no champion yet" in weak["reason"]

    # 2. A model that ranks better takes it from the weak one.
    good = flow.run({**base, "alpha": 0.01}, f"test-good-{uuid.uuid4().hex[:6]}")
    assert good["decision"] == "promoted" and "beats champion's" in good["reason"], good
    assert registry.aliases(mlflow_client, name) == {"champion": good["version"]}

    # 3. Trained on shuffled labels (the holdout keeps the true ones): registered, but the champion stays.
    holdout_start = mlflow_client.get_run(good["parent_run_id"]).data.params["holdout_start"]
    assert shuffle_labels_before(labels["label_start"], holdout_start, first, first + 59) > 500
    shuffled = flow.run({**base, "alpha": 0.01}, f"test-shuffled-{uuid.uuid4().hex[:6]}")
    assert shuffled["decision"] == "kept_champion" and "champion kept" in shuffled["reason"], shuffled
    assert registry.aliases(mlflow_client, name) == {"champion": good["version"], "challenger": shuffled["version"]}
    version = mlflow_client.get_model_version(name, shuffled["version"])
    parent = mlflow_client.get_run(shuffled["parent_run_id"])
    for tags in (version.tags, parent.data.tags):
        assert tags["promotion_decision"] == "kept_champion"
        assert tags["promotion_reason"] == shuffled["reason"]
        assert tags["compared_with_version"] == good["version"]
    assert float(version.tags["challenger_holdout_roc_auc"]) < float(version.tags["champion_holdout_roc_auc"])

    # 4. Above the RMSE threshold: nothing is registered, and the run says why.
    versions = len(mlflow_client.search_model_versions(f"name = '{name}'"))
    refused = flow.run({**base, "rmse_threshold": 0.3}, f"test-refused-{uuid.uuid4().hex[:6]}")
    assert refused["decision"] == "not_registered" and refused["version"] is None
    assert "not below the registration threshold 0.3" in refused["reason"]
    assert len(mlflow_client.search_model_versions(f"name = '{name}'")) == versions
    assert mlflow_client.get_run(refused["parent_run_id"]).data.tags["promotion_decision"] == "not_registered"
    assert registry.aliases(mlflow_client, name)["champion"] == good["version"]


# ---------------------------------------------------------------------------------------------
# the DAG, end to end
# ---------------------------------------------------------------------------------------------
def test_training_dag_trains_registers_and_serves_a_champion(offline_store, mlflow_client, airflow_up, settings):
    import mlflow.pyfunc

    from data_pipeline.materialize import materialize_interval
    from mlops_platform.feature_store import feature_store

    first, drivers = 8_200_001, 50
    load_generated(first, drivers=drivers, days=14, end="2022-05-01", seed=23)
    labels = window("2022-05-01", 14)
    name = registry.DEFAULT_MODEL_NAME
    if registry.CHAMPION in registry.aliases(mlflow_client, name):  # the test platform's registry is ours
        mlflow_client.delete_registered_model_alias(name, registry.CHAMPION)
    folds = 3
    conf = {**labels, "folds": folds, "min_rows": 500}
    began = int(time.time() * 1000)
    airflow_dags_test(settings, "training", conf=conf)

    experiment = mlflow_client.get_experiment_by_name("driver_trip_completion").experiment_id
    parents = mlflow_client.search_runs([experiment], "tags.run_source = 'airflow'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
    assert parents and parents[0].info.start_time >= began, "no parent run from this DAG run"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["label_start"] == labels["label_start"] and parent.data.params["folds"] == "3"
    children = mlflow_client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(c.data.params["fold"]) for c in children) == list(range(folds))
    assert all(set(model.METRICS) <= set(c.data.metrics) for c in children)
    assert all(int(c.data.params["train_rows"]) + int(c.data.params["test_rows"]) ==
               int(parent.data.metrics["rows_fit"]) for c in children)
    for metric in model.METRICS:
        assert {f"cv_{metric}_mean", f"cv_{metric}_std"} <= set(parent.data.metrics)
    assert len(parent.data.params["training_set_sha256"]) == 64

    version = parent.data.tags["model_version"]
    assert parent.data.tags["promotion_decision"] == "promoted"
    assert registry.aliases(mlflow_client, name)["champion"] == version
    champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert registry.input_columns(champion) == FEATURES

    ids = list(range(first, first + 10))
    materialize_interval(datetime.fromisoformat(labels["label_start"]), datetime.fromisoformat(labels["label_end"]),
                         settings, overlap=timedelta(0))
    store = feature_store(settings)
    online = store.get_online_features(features=store.get_feature_service(SERVICE),
                                       entity_rows=[{"driver_id": d} for d in ids]).to_df()
    assert not online[FEATURES].isna().any().any()
    scores = registry.score(champion, online)
    assert scores.shape == (10,) and np.isfinite(scores).all() and np.ptp(scores) > 0

    served = registry.load_champion(name)
    assert served.version == version and served.features == FEATURES
    np.testing.assert_allclose(served.predict(online), scores)

    # Monitoring's drift reference travels with the run: what the model learned from, and its scores.
    from training_pipeline.final_model import REFERENCE_ARTIFACT

    reference = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=settings.mlflow_tracking_uri))
    assert list(reference.columns) == [*FEATURES, "score"] and len(reference) > 0
    assert not reference.isna().any().any()
