"""Traffic the monitoring stack can watch: drivers in the stores, a champion with a drift reference, bookings.

Drivers 9,400,000.. get normal stats (simulation.drift_scenario) in the offline and online stores; a small
pipeline fitted on them is registered as the configured model's champion, with them and its scores as
drift reference, and the API is waited for until it serves that version. Bookings go through the real
API (simulation.traffic): predictions, then outcomes as feedback, which the prediction logger joins.
The fixtures wrapping these (tests/services/conftest.py) are module-scoped: each module gets its own
champion version, so its windows hold only its own predictions.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from data_pipeline.offline_store import STATS_TABLE
from feast_repo.features import FEATURE_NAMES
from mlops_platform.postgres import connect
from simulation.drift_scenario import normal_stats, outcome_features, write_driver_stats
from simulation.traffic import TrafficConfig, run_traffic
from tests.conftest import eventually

FIRST_ID = 9_400_000
DRIVERS = 120
SOURCE = "test-monitoring"


def metrics(url: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample on a /metrics page."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def drivers_in_stores(settings) -> Iterator[pd.DataFrame]:
    """Normal stats for the test drivers, written a minute ago; removed again afterwards."""
    stats = normal_stats(range(FIRST_ID, FIRST_ID + DRIVERS), np.random.default_rng(11))
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where source = %s", (SOURCE,))
    assert write_driver_stats(settings, stats, datetime.now(UTC) - timedelta(minutes=1), SOURCE) == DRIVERS
    yield stats
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where source = %s", (SOURCE,))


def served_champion(drivers: pd.DataFrame, settings) -> Iterator[dict]:
    """A tiny pipeline fitted on the drivers' stats, with them (and its scores) as drift reference,
    registered and aliased as the served champion; the previous champion is restored afterwards."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mlops_platform import model_registry
    from simulation.generate import completion_logit
    from training_pipeline import tracking

    x = drivers[list(FEATURE_NAMES)].astype(np.float64)
    y = 1 / (1 + np.exp(-completion_logit(x["conv_rate"], x["acc_rate"], x["avg_daily_trips"])))
    pipeline = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=0.1))]).fit(x, y)
    reference = x.assign(score=pipeline.predict(x))

    client = model_registry.client(settings.mlflow_tracking_uri)
    champion = model_registry.find_champion(client, settings.model_name, settings.model_alias)
    previous = champion.version if champion else None
    # An explicit experiment, not mlflow.set_experiment: that would leak into later tests of the session.
    experiment = tracking.experiment_id(client, "monitoring-test")
    with mlflow.start_run(experiment_id=experiment), tempfile.TemporaryDirectory() as folder:
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=settings.model_name,
                                        signature=infer_signature(x, pipeline.predict(x)))
        path = Path(folder) / "reference.parquet"
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), "reference")
    version = str(info.registered_model_version)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    probe = {"request_id": f"monitoring-probe-{version}", "driver_ids": [FIRST_ID]}
    eventually(lambda: post(f"{settings.serving_url}/predict", probe)["model"]["version"] == version,
               60, what=f"the API serving version {version}")
    yield {"version": version, "pipeline": pipeline}
    if previous is not None:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, previous)


def labeled_count(settings, version: str) -> int:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from labeled_predictions where model_name = %s and model_version = %s",
                    (settings.model_name, version))
        return cur.fetchone()[0]


def book(settings, stats: pd.DataFrame, drifted: bool, requests: int, seed: int) -> dict:
    """`requests` bookings through the API, each followed by its outcome as feedback."""
    config = TrafficConfig(requests=requests, rate=20, label_delay=0.5, seed=seed)
    summary = asyncio.run(run_traffic(config, outcome_features(stats, drifted), settings.serving_url))
    assert summary["responses"]["2xx"] == requests and summary["feedback_sent"] > 0, summary
    return summary


def book_and_wait_for_the_outcomes(settings, stats: pd.DataFrame, version: str, drifted: bool, requests: int,
                                   seed: int) -> dict:
    """Bookings, returned once the prediction logger has stored every outcome they sent."""
    before = labeled_count(settings, version)
    summary = book(settings, stats, drifted=drifted, requests=requests, seed=seed)
    eventually(lambda: labeled_count(settings, version) >= before + summary["feedback_sent"], 60,
               what="every outcome stored by the prediction logger")
    return summary
