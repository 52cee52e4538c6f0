"""A trained penguin model for the service tests: the palmerpenguins rows in `penguin_measurements`,
then one run of the `penguin_training` DAG through Airflow's scheduler, once per session.

Other modules reuse it: `from tests.services.penguin_project import trained_penguins  # noqa: F401`.

Until the data part of the penguin project (landing, ingestion and its Feast objects) is on main, the rows are
written here with a short helper, and the feature view and service are registered from the contract when
the Feast registry has none; once it is, `land_penguins` uses the ingestion path instead.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from feast_repo import penguin_features as contract
from mlops_platform.projects import PENGUINS

FOLDS = 3
CONF = {"folds": FOLDS, "epochs": 60, "mode": "development"}
# The session's penguins: ids 1..342 measured during one day of 2022 (their timestamps only order them).
DAY = datetime(2022, 3, 1, tzinfo=UTC)


def penguin_frame():
    """The palmerpenguins rows with every measurement, keyed and timed, encoded as the contract says."""
    import pandas as pd
    from palmerpenguins import load_penguins

    raw = load_penguins().dropna(subset=list(contract.MEASUREMENT_NAMES)).reset_index(drop=True)
    indicators = pd.DataFrame([contract.encode_categories(i, s) for i, s in zip(raw["island"], raw["sex"],
                                                                                strict=True)])
    frame = pd.concat([raw, indicators], axis=1)
    frame[contract.JOIN_KEY] = range(1, len(frame) + 1)
    frame[contract.TIMESTAMP_FIELD] = [DAY + timedelta(seconds=60 * n) for n in range(len(frame))]
    frame["sex"] = [contract.normalise_sex(s) for s in frame["sex"]]
    return frame


TABLE_SQL = f"""
CREATE TABLE IF NOT EXISTS {contract.OFFLINE_TABLE} (
    {contract.JOIN_KEY} bigint NOT NULL, {contract.TIMESTAMP_FIELD} timestamptz NOT NULL,
    {contract.CREATED_FIELD} timestamptz NOT NULL DEFAULT now(), species text NULL, island text NOT NULL,
    sex text NULL, {", ".join(f"{name} real NOT NULL" for name in contract.FEATURE_NAMES)},
    PRIMARY KEY ({contract.JOIN_KEY}, {contract.TIMESTAMP_FIELD}))"""


def write_rows(settings, frame) -> None:
    """The rows straight into the offline table (what ingestion writes after validation)."""
    from mlops_platform.postgres import connect

    columns = [contract.JOIN_KEY, contract.TIMESTAMP_FIELD, "species", "island", "sex", *contract.FEATURE_NAMES]
    rows = [tuple(None if v != v else v for v in row) for row in frame[columns].itertuples(index=False)]
    placeholders = ", ".join(["%s"] * len(columns))
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(TABLE_SQL)
        cur.executemany(f"INSERT INTO {contract.OFFLINE_TABLE} ({', '.join(columns)}) VALUES ({placeholders}) "
                        "ON CONFLICT DO NOTHING", rows)
        conn.commit()


def register_feast_objects(settings) -> None:
    """Entity, source, view and service of the contract, unless the applied repo registered them already."""
    from feast import Entity, FeatureService, FeatureView, Field
    from feast.errors import FeatureServiceNotFoundException
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.types import Float32
    from feast.value_type import ValueType

    from mlops_platform.feature_store import feature_store

    store = feature_store(settings)
    try:
        store.get_feature_service(contract.FEATURE_SERVICE)
        return
    except FeatureServiceNotFoundException:
        pass
    penguin = Entity(name=contract.ENTITY, join_keys=[contract.JOIN_KEY], value_type=ValueType.INT64)
    source = PostgreSQLSource(name=f"{contract.OFFLINE_TABLE}_source", table=contract.OFFLINE_TABLE,
                              timestamp_field=contract.TIMESTAMP_FIELD,
                              created_timestamp_column=contract.CREATED_FIELD)
    view = FeatureView(name=contract.FEATURE_VIEW, entities=[penguin], ttl=contract.FEATURE_TTL, source=source,
                       schema=[Field(name=name, dtype=Float32) for name in contract.FEATURE_NAMES], online=True)
    service = FeatureService(name=contract.FEATURE_SERVICE, features=[view[list(contract.FEATURE_NAMES)]])
    store.apply([penguin, source, view, service])


def land_penguins(settings) -> int:
    """The session's labelled penguins in the offline store and Feast's registry; returns how many."""
    frame = penguin_frame()
    write_rows(settings, frame)
    register_feast_objects(settings)
    return len(frame)


def run_training_dag(settings, conf: dict) -> tuple[str, float]:
    """Trigger penguin_training through the REST API (the scheduler runs it); (run id, wall seconds)."""
    from mlops_platform.airflow_client import AirflowClient

    client = AirflowClient.from_settings(settings)
    began = time.monotonic()
    run_id = client.trigger(PENGUINS.training_dag, conf=conf, note="service tests")
    state = client.wait(PENGUINS.training_dag, run_id, timeout=900)
    seconds = time.monotonic() - began
    assert state == "success", f"{PENGUINS.training_dag} run {run_id} ended {state}: see its task logs"
    return run_id, seconds


@pytest.fixture(scope="session")
def trained_penguins(feast_up, mlflow_up, airflow_up, settings) -> dict:
    """One penguin_training DAG run for the session: what it registered and how long it took."""
    from mlops_platform import model_registry
    from mlops_platform.airflow_client import AirflowClient
    from training_pipeline import registry

    rows = land_penguins(settings)
    client = AirflowClient.from_settings(settings)
    run_id, seconds = run_training_dag(settings, CONF)
    outcome = client.xcom(PENGUINS.training_dag, run_id, "register_and_promote")
    mlflow_client = model_registry.client(settings.mlflow_tracking_uri)
    version = mlflow_client.get_model_version(PENGUINS.model_name, outcome["version"])
    return {"dag_run_id": run_id, "wall_seconds": seconds, "rows": rows, "folds": FOLDS,
            "version": outcome["version"], "run_id": version.run_id, "decision": outcome["decision"],
            "holdout_accuracy": float(version.tags["holdout_accuracy"]),
            "majority_baseline": float(version.tags["majority_baseline"]),
            "aliases": registry.aliases(mlflow_client, PENGUINS.model_name),
            "model_uri": f"models:/{PENGUINS.model_name}/{outcome['version']}"}
