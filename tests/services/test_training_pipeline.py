"""The training pipeline against real services: point-in-time join, early failures, champion/challenger, the DAG.

Rows live in 2022 with driver ids from 8,000,000 up, a window and an id range no other test writes,
and each test has a month of its own. Registered models get names of their own, except in the DAG
test, which runs the DAG as shipped and so uses the default name.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_pipeline.generate import FIRST_DRIVER_ID, generate_driver_stats, generate_orders
from data_pipeline.offline_store import ORDERS_TABLE, STATS_TABLE, connect, ensure_schema
from tests.conftest import REPO_ROOT, airflow_dags_test
from training_pipeline import flow, model, registry, tracking, training_set
from training_pipeline.config import ConfigError
from training_pipeline.tracking import TrackingUnavailable

ID_RANGE = (8_000_000, 8_999_999)
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
SERVICE = "driver_trip_completion"


def copy_rows(frame: pd.DataFrame, table: str, columns: tuple[str, ...]) -> None:
    buffer = io.StringIO()
    frame[list(columns)].assign(source="test-training").to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with connect() as conn, conn.cursor() as cur:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}, source) FROM STDIN WITH (FORMAT csv)", buffer)


def load_generated(first_id: int, drivers: int, days: int, end: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generated stats and orders for drivers first_id.., the `days` before `end`, loaded with COPY."""
    stats = generate_driver_stats(drivers, days, end, seed)
    orders = generate_orders(stats, seed)
    stats["driver_id"] += first_id - FIRST_DRIVER_ID
    orders["driver_id"] += first_id - FIRST_DRIVER_ID
    delete_drivers(first_id, first_id + drivers - 1)
    copy_rows(stats, STATS_TABLE, ("driver_id", "event_timestamp", "created", "conv_rate", "acc_rate",
                                   "avg_daily_trips"))
    copy_rows(orders, ORDERS_TABLE, ("driver_id", "event_timestamp", "trip_completed"))
    return stats, orders


def delete_drivers(first: int, last: int) -> None:
    with connect() as conn, conn.cursor() as cur:
        for table in (STATS_TABLE, ORDERS_TABLE):
            cur.execute(f"delete from {table} where driver_id between %s and %s", (first, last))


@pytest.fixture(scope="module")
def offline_store(feast_up):
    ensure_schema()
    yield
    delete_drivers(*ID_RANGE)


@pytest.fixture(scope="module")
def mlflow_client(mlflow_up, settings):
    return tracking.client(settings.mlflow_tracking_uri)


def window(end: str, days: int) -> dict[str, str]:
    stop = datetime.fromisoformat(end).replace(tzinfo=UTC)
    return {"label_start": (stop - timedelta(days=days)).isoformat(), "label_end": stop.isoformat()}


# ---------------------------------------------------------------------------------------------
# point in time
# ---------------------------------------------------------------------------------------------
def test_a_label_never_gets_a_feature_row_from_after_it(offline_store, settings):
    from data_pipeline.materialize import feature_store

    driver, t = 8_100_001, datetime(2022, 1, 10, tzinfo=UTC)
    delete_drivers(driver, driver)
    stats = pd.DataFrame({"driver_id": [driver] * 2, "event_timestamp": [t, t + timedelta(hours=2)],
                          "created": [t + timedelta(minutes=5), t + timedelta(hours=2, minutes=5)],
                          "conv_rate": [0.1, 0.2], "acc_rate": [0.3, 0.4], "avg_daily_trips": [1, 2]})
    copy_rows(stats, STATS_TABLE, ("driver_id", "event_timestamp", "created", "conv_rate", "acc_rate",
                                   "avg_daily_trips"))
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


def run_cli(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "training_pipeline", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


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
# models on other features than the champion's, and runs that fail after registering
# ---------------------------------------------------------------------------------------------
def log_version(mlflow_client, name: str, columns: list[str], seed: int) -> str:
    """A pipeline fitted on random values of `columns`, logged with its signature and registered under `name`."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.random((200, len(columns))), columns=columns)
    y = (x.iloc[:, 0] + rng.normal(0, 0.3, 200) > 0.5).astype(np.float64)
    pipeline = model.make_model(0.001, 0.5, seed).fit(x, y)
    # An explicit experiment, not mlflow.set_experiment: that would leak into later tests of the session.
    with mlflow.start_run(experiment_id=tracking.experiment_id(mlflow_client, "training-tests")):
        info = mlflow.sklearn.log_model(pipeline, name="model", signature=infer_signature(x, pipeline.predict(x)),
                                        registered_model_name=name, pip_requirements=model.requirements(),
                                        skops_trusted_types=model.SKOPS_TRUSTED_TYPES)
    return str(info.registered_model_version)


def damage_model_file(mlflow_client, name: str, version: str) -> None:
    """Overwrite the version's serialized model in the artifact store: MLmodel still reads, the model cannot load."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(mlflow_client.get_model_version_download_uri(name, version))
    files = [f.path for f in repository.list_artifacts()]
    assert "model.skops" in files, files
    with tempfile.TemporaryDirectory() as folder:
        damaged = Path(folder) / "model.skops"
        damaged.write_bytes(b"a truncated upload")
        repository.log_artifact(str(damaged))


def run_named(mlflow_client, experiment: str, run_name: str):
    experiment_id = mlflow_client.get_experiment_by_name(experiment).experiment_id
    runs = mlflow_client.search_runs([experiment_id], f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_a_challenger_on_a_feature_subset_is_compared_with_the_champion_on_the_same_rows(offline_store,
                                                                                          mlflow_client):
    load_generated(8_300_001, drivers=60, days=14, end="2022-07-01", seed=31)
    labels = window("2022-07-01", 14)
    name = f"test_subset_{uuid.uuid4().hex[:8]}"
    champion = flow.run({**labels, "model_name": name, "folds": 3, "min_rows": 500, "rmse_threshold": 0.5},
                        f"test-all-features-{uuid.uuid4().hex[:6]}")
    assert champion["decision"] == "promoted", champion

    # What the new user ran: a challenger on one feature, the champion on three.
    subset = run_cli("--features", "avg_daily_trips", "--folds", "3", "--min-rows", "500", "--rmse-threshold", "0.5",
                     "--model-name", name, "--label-start", labels["label_start"], "--label-end", labels["label_end"])
    assert subset["decision"] in ("promoted", "kept_champion"), subset
    parent = mlflow_client.get_run(subset["parent_run_id"])
    assert parent.info.status == "FINISHED"
    version = mlflow_client.get_model_version(name, subset["version"])
    for tags in (version.tags, parent.data.tags):
        assert tags["promotion_decision"] == subset["decision"] and tags["promotion_reason"] == subset["reason"]
        assert tags["compared_with_version"] == champion["version"]
        assert tags["challenger_features"] == "avg_daily_trips"
        assert tags["champion_features"] == ",".join(FEATURES) and tags["champion_features_from"] == "signature"
        assert tags["champion_features_fetched"] == "conv_rate,acc_rate" and tags["champion_rows_imputed"] == "0"

    # The same holdout rows for both: each model's AUC equals the one its own run measured on that holdout.
    champion_run = mlflow_client.get_run(champion["parent_run_id"])
    assert parent.data.params["holdout_start"] == champion_run.data.params["holdout_start"]
    assert version.tags["holdout_rows"] == str(int(champion_run.data.metrics["rows_holdout"]))
    assert float(version.tags["champion_holdout_roc_auc"]) == pytest.approx(
        champion_run.data.metrics["holdout_roc_auc"], abs=1e-6)
    assert float(version.tags["challenger_holdout_roc_auc"]) == pytest.approx(
        parent.data.metrics["holdout_roc_auc"], abs=1e-6)
    expected = ({"champion": subset["version"]} if subset["decision"] == "promoted"
                else {"champion": champion["version"], "challenger": subset["version"]})
    assert registry.aliases(mlflow_client, name) == expected


def test_a_champion_on_a_feature_no_longer_served_is_kept_unless_the_run_asks_to_replace_it(offline_store,
                                                                                            mlflow_client):
    load_generated(8_400_001, drivers=60, days=14, end="2022-08-01", seed=37)
    name = f"test_unservable_{uuid.uuid4().hex[:8]}"
    old = log_version(mlflow_client, name, ["conv_rate", "rating"], seed=5)  # "rating" left the feature service
    mlflow_client.set_registered_model_alias(name, registry.CHAMPION, old)
    base = {**window("2022-08-01", 14), "model_name": name, "folds": 3, "min_rows": 500, "rmse_threshold": 0.5,
            "features": ["conv_rate", "acc_rate"]}

    skipped = flow.run(base, f"test-unservable-{uuid.uuid4().hex[:6]}")
    assert skipped["decision"] == "comparison_skipped", skipped
    assert f"champion version {old} needs feature(s) ['rating']" in skipped["reason"]
    assert "no longer serves" in skipped["reason"] and "replace_unservable_champion=true" in skipped["reason"]
    assert registry.aliases(mlflow_client, name) == {"champion": old, "challenger": skipped["version"]}
    tags = mlflow_client.get_model_version(name, skipped["version"]).tags
    assert tags["champion_features_unserved"] == "rating" and "champion_holdout_roc_auc" not in tags
    assert mlflow_client.get_run(skipped["parent_run_id"]).info.status == "FINISHED"

    replaced = flow.run({**base, "replace_unservable_champion": True}, f"test-replace-{uuid.uuid4().hex[:6]}")
    assert replaced["decision"] == "promoted" and "as replace_unservable_champion asks" in replaced["reason"]
    assert registry.aliases(mlflow_client, name) == {"champion": replaced["version"]}


def test_a_run_failing_after_registration_leaves_no_alias_on_its_version(offline_store, mlflow_client):
    load_generated(8_500_001, drivers=60, days=14, end="2022-09-01", seed=41)
    name = f"test_failed_run_{uuid.uuid4().hex[:8]}"
    champion = log_version(mlflow_client, name, FEATURES, seed=7)
    loser = log_version(mlflow_client, name, FEATURES, seed=8)
    mlflow_client.set_registered_model_alias(name, registry.CHAMPION, champion)
    mlflow_client.set_registered_model_alias(name, registry.CHALLENGER, loser)
    damage_model_file(mlflow_client, name, champion)  # the champion's artifacts no longer load

    run_name = f"test-failing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(Exception) as raised:  # its message is checked below, after the aliases
        flow.run({**window("2022-09-01", 14), "model_name": name, "folds": 3, "min_rows": 500,
                  "rmse_threshold": 0.5}, run_name)

    parent = run_named(mlflow_client, "driver_trip_completion", run_name)
    assert parent.info.status == "FAILED" and parent.data.tags["failed_step"] == "register_and_promote"
    registered = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{parent.info.run_id}'")
    assert len(registered) == 1, "the run got as far as registering its version"
    version = registered[0]
    assert registry.aliases(mlflow_client, name) == {"champion": champion, "challenger": loser}
    assert version.tags["promotion_decision"] == parent.data.tags["promotion_decision"] == "failed"
    assert version.tags["failed_step"] == "register_and_promote"
    assert f"could not load the champion, version {champion} of '{name}'" in str(raised.value)
    assert f"could not load the champion, version {champion}" in version.tags["failure_reason"]


def test_a_runs_alias_changes_are_undone_and_a_stale_decision_moves_no_alias(mlflow_up, mlflow_client):
    name = f"test_aliases_{uuid.uuid4().hex[:8]}"
    champion = log_version(mlflow_client, name, FEATURES, seed=9)
    logged = mlflow_client.get_model_version(name, champion)
    model_id = logged.source.removeprefix("models:/")  # the version's source is its logged model
    challenger, new = (registry.register(mlflow_client, name, logged.source, logged.run_id, model_id, {})
                       for _ in range(2))
    before = {"champion": champion, "challenger": challenger}
    for alias, version in before.items():
        mlflow_client.set_registered_model_alias(name, alias, version)

    for decision, published in ((registry.PROMOTED, {"champion": new}),
                                (registry.KEPT_CHAMPION, {"champion": champion, "challenger": new})):
        writer = registry.AliasWriter(mlflow_client, name)
        writer.publish(new, registry.Decision(decision, "test"), compared_with=champion)
        assert registry.aliases(mlflow_client, name) == published
        writer.undo()
        assert registry.aliases(mlflow_client, name) == before

    with pytest.raises(RuntimeError, match=f"moved from version {challenger} to {champion}"):
        registry.AliasWriter(mlflow_client, name).publish(new, registry.Decision(registry.PROMOTED, "test"),
                                                          compared_with=challenger)
    assert registry.aliases(mlflow_client, name) == before

    # A retried task finds the versions its killed attempt registered without deciding, and tags them failed.
    undecided = registry.undecided_versions(mlflow_client, name, logged.run_id)
    assert sorted(undecided) == sorted([champion, challenger, new])
    registry.mark_failed(mlflow_client, name, new, "register_and_promote", RuntimeError("killed"))
    undecided = registry.undecided_versions(mlflow_client, name, logged.run_id)
    assert sorted(undecided) == sorted([champion, challenger])
    assert mlflow_client.get_model_version(name, new).tags["failure_reason"] == "RuntimeError: killed"


# ---------------------------------------------------------------------------------------------
# the DAG, end to end
# ---------------------------------------------------------------------------------------------
def test_training_dag_trains_registers_and_serves_a_champion(offline_store, mlflow_client, airflow_up, settings):
    import mlflow.pyfunc

    from data_pipeline.materialize import feature_store, materialize_interval

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
    from training_pipeline.flow import REFERENCE_ARTIFACT

    reference = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=settings.mlflow_tracking_uri))
    assert list(reference.columns) == [*FEATURES, "score"] and len(reference) > 0
    assert not reference.isna().any().any()
