"""The monitoring service against the running platform: gauges from real traffic, the alert, the trigger.

A champion of our own (registered under the configured model name, since the API follows it) is
trained on, and has as drift reference, the stats of drivers 9,400,000.. that this module writes
into the stores. Undrifted bookings through the API must give a low drift share and a live RMSE equal
to one computed by hand from `labeled_predictions`; drifted bookings (monitoring_service.scenario's
shifted stats and outcomes) must raise the drift share, make Prometheus evaluate the drift alert's
expression true, and start exactly one `training` run per cool-down, also across a restart.

The platform's own monitoring service evaluates once a minute, so the numbers and the trigger are
checked on a second service process started here with a short interval, sustain and cool-down, on
a port of its own; Prometheus scrapes the platform's one.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_pipeline.offline_store import STATS_TABLE, connect
from mlops_platform.airflow_client import AirflowClient
from model_serving.traffic import TrafficConfig, run_traffic
from monitoring_service.scenario import drifted_stats, normal_stats, outcome_features, write_driver_stats
from monitoring_service.trigger_store import TRIGGERS_TABLE
from tests.conftest import REPO_ROOT

FIRST_ID = 9_400_000
DRIVERS = 120
SOURCE = "test-monitoring-service"
PORT_OFFSET = 50  # the second service listens on the platform's monitoring port + this


def metrics(url: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample on a /metrics page."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}


def wait_for(condition, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except OSError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(poll)
    raise AssertionError(f"{what} within {timeout:.0f}s; last seen: {last!r}")


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def drivers(platform_up, settings) -> pd.DataFrame:
    stats = normal_stats(range(FIRST_ID, FIRST_ID + DRIVERS), np.random.default_rng(11))
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where source = %s", (SOURCE,))
    assert write_driver_stats(settings, stats, datetime.now(UTC) - timedelta(minutes=1), SOURCE) == DRIVERS
    yield stats
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where source = %s", (SOURCE,))


@pytest.fixture(scope="module")
def champion(drivers, settings):
    """A tiny pipeline fitted on the drivers' stats, with them (and its scores) as drift reference."""
    import mlflow
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from data_pipeline.generate import completion_logit
    from training_pipeline import tracking

    x = drivers[["conv_rate", "acc_rate", "avg_daily_trips"]].astype(np.float64)
    y = 1 / (1 + np.exp(-completion_logit(x["conv_rate"], x["acc_rate"], x["avg_daily_trips"])))
    pipeline = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=0.1))]).fit(x, y)
    reference = x.assign(score=pipeline.predict(x))

    client = tracking.client(settings.mlflow_tracking_uri)
    try:
        previous = client.get_model_version_by_alias(settings.model_name, settings.model_alias).version
    except MlflowException:
        previous = None
    # An explicit experiment, not mlflow.set_experiment: that would leak into later tests of the session.
    experiment = client.get_experiment_by_name("monitoring-service-test")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("monitoring-service-test")
    with mlflow.start_run(experiment_id=experiment_id), tempfile.TemporaryDirectory() as folder:
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=settings.model_name,
                                        signature=infer_signature(x, pipeline.predict(x)))
        path = Path(folder) / "reference.parquet"
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), "reference")
    version = str(info.registered_model_version)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    wait_for(lambda: post(f"{settings.serving_url}/predict", {"request_id": "monitoring-test-probe",
                                                              "driver_ids": [FIRST_ID]})["model"]["version"] == version,
             60, f"the API serving version {version}")
    yield {"version": version, "pipeline": pipeline}
    if previous is not None:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, previous)


@pytest.fixture(scope="module")
def second_service(champion, settings):
    """A monitoring service evaluating every 2 s, retraining after 6 s of breach, once an hour."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"drop table if exists {TRIGGERS_TABLE}")  # this test platform's cool-down starts clean
    port = settings.monitoring_service_port + PORT_OFFSET
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MONITORING_SERVICE_PORT": str(port),
           "MONITOR_INTERVAL_SECONDS": "2", "MONITOR_WINDOW_MINUTES": "30", "MONITOR_MIN_ROWS": "50",
           "RETRAIN_SUSTAIN_MINUTES": "0.1", "RETRAIN_COOLDOWN_MINUTES": "60", "LIVE_RMSE_THRESHOLD": "0.99"}
    log_path = settings.home / "logs" / "monitoring-service-test.log"
    url = f"http://127.0.0.1:{port}"
    processes = []

    def start() -> subprocess.Popen:
        log = open(log_path, "a")
        process = subprocess.Popen([sys.executable, "-m", "monitoring_service"], env=env, cwd=REPO_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        wait_for(lambda: metrics(url).get("monitoring_ready") == 1.0, 90, f"the second service ready at {url}")
        return process

    start()
    yield {"url": url, "start": start, "processes": processes, "log": log_path}
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def evaluated_after(url: str, moment: float) -> dict[str, float]:
    """The metrics once an evaluation that began after `moment` (unix time) has finished."""
    return wait_for(lambda: (m := metrics(url)).get("monitoring_last_evaluation_timestamp_seconds", 0) > moment and m,
                    30, "an evaluation after the traffic")


def labeled_count(settings, version: str) -> int:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from labeled_predictions where model_name = %s and model_version = %s",
                    (settings.model_name, version))
        return cur.fetchone()[0]


def book(settings, stats: pd.DataFrame, drifted: bool, requests: int, seed: int) -> dict:
    config = TrafficConfig(requests=requests, rate=20, label_delay=0.5, seed=seed)
    summary = asyncio.run(run_traffic(config, outcome_features(stats, drifted), settings.serving_url))
    assert summary["responses"]["2xx"] == requests and summary["feedback_sent"] > 0, summary
    return summary


@pytest.fixture(scope="module")
def undrifted(second_service, champion, drivers, settings) -> dict:
    before = labeled_count(settings, champion["version"])
    summary = book(settings, drivers, drifted=False, requests=60, seed=1)
    wait_for(lambda: labeled_count(settings, champion["version"]) >= before + summary["feedback_sent"], 60,
             "every outcome stored by the prediction logger")
    return evaluated_after(second_service["url"], time.time())


def test_undrifted_traffic_gives_a_low_drift_share_and_the_hand_computed_live_rmse(undrifted, champion, settings):
    version = champion["version"]
    assert undrifted["monitoring_window_has_data"] == 1.0
    assert undrifted[f'monitoring_drift_share{{model_version="{version}"}}'] < settings.drift_share_threshold
    for feature in ("conv_rate", "acc_rate", "avg_daily_trips", "score"):
        assert f'monitoring_feature_drift_score{{feature="{feature}",model_version="{version}"}}' in undrifted
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select score, trip_completed from labeled_predictions where model_name = %s and "
                    "model_version = %s", (settings.model_name, version))
        rows = cur.fetchall()
    rmse = math.sqrt(sum((score - label) ** 2 for score, label in rows) / len(rows))
    mae = sum(abs(score - label) for score, label in rows) / len(rows)
    assert undrifted[f'monitoring_live_rmse{{model_version="{version}"}}'] == pytest.approx(rmse, abs=1e-6)
    assert undrifted[f'monitoring_live_mae{{model_version="{version}"}}'] == pytest.approx(mae, abs=1e-6)
    assert undrifted["monitoring_retraining_triggered_total{reason=\"drift\"}"] == 0.0


def test_the_window_report_is_served(undrifted, second_service):
    with urllib.request.urlopen(f"{second_service['url']}/reports/", timeout=10) as response:
        index = response.read().decode()
    name = index.split('<a href="', 1)[1].split('"', 1)[0]
    with urllib.request.urlopen(f"{second_service['url']}/reports/{name}", timeout=30) as response:
        page = response.read()
    assert page.lstrip().lower().startswith(b"<!doctype html>") and b"root_metric_" in page, page[:200]


@pytest.fixture(scope="module")
def drifted(undrifted, second_service, drivers, settings) -> dict:
    started = time.time()
    shifted = drifted_stats(drivers["driver_id"].tolist(), np.random.default_rng(12))
    write_driver_stats(settings, shifted, datetime.now(UTC), SOURCE)
    book(settings, shifted, drifted=True, requests=120, seed=2)
    return {"started": started, "metrics": evaluated_after(second_service["url"], time.time())}


def test_drifted_traffic_raises_the_drift_gauges(drifted, champion, settings):
    version = champion["version"]
    gauges = drifted["metrics"]
    assert gauges[f'monitoring_drift_share{{model_version="{version}"}}'] > settings.drift_share_threshold
    for feature in ("conv_rate", "acc_rate"):
        assert gauges[f'monitoring_feature_drifted{{feature="{feature}",model_version="{version}"}}'] == 1.0


def training_runs_since(client: AirflowClient, since: float) -> list[dict]:
    return [run for run in client.runs("training", limit=50)
            if run.get("run_after") and datetime.fromisoformat(run["run_after"]).timestamp() >= since]


def test_the_trigger_starts_exactly_one_training_run_per_cooldown_even_across_a_restart(
        drifted, second_service, champion, settings):
    client = AirflowClient.from_settings(settings)
    url = second_service["url"]
    wait_for(lambda: metrics(url).get('monitoring_retraining_triggered_total{reason="drift"}') == 1.0, 30,
             "one drift-triggered retraining")
    try:
        runs = training_runs_since(client, drifted["started"] - 5)
        assert len(runs) == 1, runs
        assert "monitoring_drift_share" in (runs[0].get("note") or ""), runs[0]
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute(f"select reason, metric, threshold, model_version, dag_run_id from {TRIGGERS_TABLE}")
            assert cur.fetchall() == [("drift", "monitoring_drift_share", settings.drift_share_threshold,
                                       champion["version"], runs[0]["dag_run_id"])]
        # Still breaching: more evaluations, then a restart, start nothing within the cool-down.
        process = second_service["processes"][-1]
        process.terminate()
        process.wait(timeout=30)
        second_service["start"]()
        evaluated_after(url, time.time() + 8)  # several evaluations with the breach held past the sustain time
        assert metrics(url).get('monitoring_retraining_triggered_total{reason="drift"}') == 0.0
        assert len(training_runs_since(client, drifted["started"] - 5)) == 1
    finally:
        for run in training_runs_since(client, drifted["started"] - 5):  # the run itself is not under test
            path = f"/api/v2/dags/training/dagRuns/{urllib.parse.quote(run['dag_run_id'])}"
            client.request("PATCH", path, {"state": "failed"})  # a running run cannot be deleted
            client.request("DELETE", path)
        client.pause("training")  # the trigger unpaused it; the scheduler would start weekly runs of its own


def test_prometheus_evaluates_the_drift_alert_true_for_the_drifted_version(drifted, champion, settings):
    """The platform's service (evaluating once a minute) is scraped; DataDriftDetected's `for: 15m`
    is too long to wait, so the alert must be pending (or firing) and its expression true."""
    version = champion["version"]
    expr = (f'monitoring_drift_share{{model_version="{version}"}} >= 0.5 '
            'and on(job, instance) monitoring_window_has_data == 1')

    def alert_pending() -> bool:
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{settings.prometheus_url}/api/v1/query?{query}", timeout=10) as response:
            if not json.loads(response.read())["data"]["result"]:
                return False
        with urllib.request.urlopen(f"{settings.prometheus_url}/api/v1/alerts", timeout=10) as response:
            alerts = json.loads(response.read())["data"]["alerts"]
        return any(a["labels"].get("alertname") == "DataDriftDetected" and a["labels"].get("model_version") == version
                   and a["state"] in ("pending", "firing") for a in alerts)

    wait_for(alert_pending, 150, "DataDriftDetected pending for the drifted version", poll=5)
