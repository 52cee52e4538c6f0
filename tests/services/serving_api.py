"""The running API of the serving tests: two registered model versions, drivers in both stores, the service.

Drivers use ids from 9,600,000 up, a range no other test writes: fresh rows, one row past the feature view's
TTL, and ids with no rows at all. Two model versions are registered under the served name from tiny synthetic
pipelines (imputer, scaler, ElasticNet); the `champion` alias is restored afterwards. The fixtures are
module-scoped: each test module that imports them gets its own versions and rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest

from data_pipeline import materialize as mat
from data_pipeline.offline_store import STATS_TABLE, ensure_schema
from feast_repo.features import FEATURE_NAMES, FEATURE_SERVICE
from mlops_platform import local_service
from mlops_platform.feature_store import feature_store
from mlops_platform.postgres import connect
from mlops_platform.services import BY_NAME
from tests.conftest import eventually

FIRST_ID = 9_600_000
FRESH = list(range(FIRST_ID + 1, FIRST_ID + 31))
STALE = FIRST_ID + 900  # its only row is three days old: past the two-day TTL
UNKNOWN = FIRST_ID + 999  # no rows at all
FEATURES = list(FEATURE_NAMES)
SERVICE = FEATURE_SERVICE
SWAP_DEADLINE_SECONDS = 30.0


# ---------------------------------------------------------------------------------------------
# Models, features and the running API
# ---------------------------------------------------------------------------------------------
def train(seed: int):
    """A small fitted pipeline; different seeds give clearly different coefficients."""
    from training_pipeline.model import make_model

    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"conv_rate": rng.random(400), "acc_rate": rng.random(400),
                      "avg_daily_trips": rng.integers(0, 60, 400).astype(np.float64)})
    weights = rng.normal(0, 1, 3)
    y = ((x.to_numpy() / [1, 1, 60]) @ weights + rng.normal(0, 0.2, 400) > 0).astype(np.float64)
    return x, make_model(0.001, 0.5, seed).fit(x, y)


def register(settings, seed: int) -> str:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from mlops_platform import model_registry
    from training_pipeline import tracking
    from training_pipeline.model import SKOPS_TRUSTED_TYPES

    x, pipeline = train(seed)
    experiment = tracking.experiment_id(model_registry.client(settings.mlflow_tracking_uri), "serving-tests")
    # An explicit experiment, not mlflow.set_experiment: that would leak into later tests of the session.
    with mlflow.start_run(run_name=f"serving-test-{seed}", experiment_id=experiment):
        info = mlflow.sklearn.log_model(pipeline, name="model", signature=infer_signature(x, pipeline.predict(x)),
                                        input_example=x.head(3), registered_model_name=settings.model_name,
                                        skops_trusted_types=SKOPS_TRUSTED_TYPES)
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def registry(mlflow_up, settings):
    """(client, version_a, version_b), champion on version_a; the alias is put back afterwards."""
    from mlops_platform import model_registry

    client = model_registry.client(settings.mlflow_tracking_uri)
    champion = model_registry.find_champion(client, settings.model_name, settings.model_alias)
    previous = champion.version if champion else None
    version_a, version_b = register(settings, 1), register(settings, 2)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version_a)
    yield client, version_a, version_b
    if previous is None:
        client.delete_registered_model_alias(settings.model_name, settings.model_alias)
    else:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, previous)


def delete_rows() -> None:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where driver_id between %s and %s", (FIRST_ID, FIRST_ID + 999))


@pytest.fixture(scope="module")
def store(feast_up):
    ensure_schema()
    return feature_store()


@pytest.fixture(scope="module")
def online_rows(store):
    """Fresh stats for FRESH, a three-day-old row for STALE, nothing for UNKNOWN; materialized into Redis."""
    rng = np.random.default_rng(3)
    now = datetime.now(UTC).replace(microsecond=0)
    delete_rows()
    mat.delete_online_rows(store, [*FRESH, STALE, UNKNOWN])
    rows = [(d, now - timedelta(minutes=10), float(rng.random()), float(rng.random()), int(rng.integers(0, 60)))
            for d in FRESH]
    rows[1] = (FRESH[1], rows[1][1], rows[0][2], rows[0][3], rows[0][4])  # same features as FRESH[0]: a tie
    rows.append((STALE, now - timedelta(days=3), 0.5, 0.5, 10))
    with connect() as conn, conn.cursor() as cur:
        for driver_id, ts, conv, acc, trips in rows:
            cur.execute(f"insert into {STATS_TABLE} (driver_id, event_timestamp, created, conv_rate, acc_rate, "
                        "avg_daily_trips, source) values (%s, %s, %s, %s, %s, %s, 'test-serving')",
                        (driver_id, ts, ts, conv, acc, trips))
    mat.materialize_interval(now - timedelta(days=4), now + timedelta(minutes=1), overlap=timedelta(0), store=store)
    yield
    mat.delete_online_rows(store, [*FRESH, STALE, UNKNOWN])
    delete_rows()


def ready_version(url: str) -> str | None:
    response = httpx.get(f"{url}/ready", timeout=5)
    return response.json()["model"]["version"] if response.status_code == 200 else None


@pytest.fixture(scope="module")
def api(registry, online_rows, kafka_up, settings):
    """The serving service's URL, once it serves the champion (version_a)."""
    local_service.start(BY_NAME["serving"], settings)  # a no-op when already running
    _client, version_a, _ = registry
    eventually(lambda: ready_version(settings.serving_url) == version_a, timeout=90,
               what=f"serving ready with version {version_a}")
    return settings.serving_url


def predict(url: str, ids: list[int], headers: dict | None = None, **extra) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"driver_ids": ids, **extra}, headers=headers, timeout=10)


def feast_vectors(store, ids: list[int]) -> pd.DataFrame:
    frame = store.get_online_features(features=store.get_feature_service(SERVICE),
                                      entity_rows=[{"driver_id": d} for d in ids]).to_df()
    return frame.set_index("driver_id")


def pyfunc_scores(version: str, settings, vectors: pd.DataFrame) -> pd.Series:
    """What mlflow.pyfunc predicts on a DataFrame of the same vectors (columns by the signature)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
    columns = model.metadata.get_input_schema().input_names()
    return pd.Series(np.asarray(model.predict(vectors[columns].astype(np.float64))).ravel(), index=vectors.index)


def assert_scores_match(scores: list[dict], expected: pd.Series) -> None:
    """Each API score equals pyfunc's for its driver, up to rounding.

    Not bit for bit: the API and pyfunc score different matrices (row order, memory layout), and BLAS
    rounds a row differently depending on where it falls (vector block or scalar tail, FMA or not), so
    the same vector can differ in its last bit (CI: 0.4310736936498845 against 0.43107369364988457).
    rel=1e-9 allows millions of ulps, yet is far below what a wrong feature, a wrong model version or
    a float32 round trip (~1e-7) would change.
    """
    for item in scores:
        assert item["score"] == pytest.approx(expected[item["driver_id"]], rel=1e-9, abs=1e-12), item


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))
