"""A trained penguin model for the service tests: the palmerpenguins rows in `penguin_measurements`,
then one run of the `penguin_training` DAG through Airflow's scheduler, once per session.

The fixture is registered once, in tests/services/conftest.py, so every module shares its one run.

The rows arrive as they do on the platform: simulation.penguins.prepare lands the palmerpenguins CSV for a day,
ingests it (validation, quarantine) and materializes it; the Feast objects are the applied feature repo's.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from feast_repo import penguin_features as contract
from mlops_platform.projects import PENGUINS

FOLDS = 3
CONF = {"folds": FOLDS, "epochs": 60, "mode": "development"}
DAY = datetime(2022, 3, 1, tzinfo=UTC)  # the day the session's penguins are landed for


def penguin_frame():
    """The palmerpenguins rows with every measurement, encoded as the contract says: inputs with their species."""
    import pandas as pd
    from palmerpenguins import load_penguins

    raw = load_penguins().dropna(subset=list(contract.MEASUREMENT_NAMES)).reset_index(drop=True)
    indicators = pd.DataFrame([contract.encode_categories(i, s) for i, s in zip(raw["island"], raw["sex"],
                                                                                strict=True)])
    return pd.concat([raw, indicators], axis=1)


def land_penguins(settings) -> int:
    """The session's penguins landed, ingested and materialized by the data part's own path; returns how many
    labelled penguins the offline store holds."""
    from mlops_platform.postgres import connect
    from simulation.penguins import prepare

    prepare(settings, DAY.date())
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {contract.OFFLINE_TABLE} WHERE {contract.LABEL} IS NOT NULL")
        return int(cur.fetchone()[0])


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
    assert rows >= 300, f"expected the ~342 labelled palmerpenguins rows in {contract.OFFLINE_TABLE}, found {rows}"
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
