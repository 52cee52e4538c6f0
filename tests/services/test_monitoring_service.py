"""The monitoring service against the running platform: gauges from real traffic, the alerts, the trigger.

A champion of our own (tests/services/monitored_traffic.py) is trained on, and has as drift reference,
the stats of drivers that the fixtures write into the stores. Undrifted bookings through the API must
give a low drift share and a live RMSE equal to one computed by hand from `labeled_predictions`, and
fire no drift alert; drifted bookings (simulation.drift_scenario's shifted stats and outcomes) must
raise the drift share, fire DataDriftDetected, and start exactly one `training` run per cool-down,
also across a restart.

A champion trained on one feature only (`--features avg_daily_trips`) must have its drift computed
on that feature by the platform's service, and drifted trips must raise its drift share to 1.

The numbers and the trigger are checked on a second service process started here with a short
interval, sustain and cool-down, on a port of its own. Alerts are checked twice: the platform's
Prometheus (scraping the platform's service) must hold DataDriftDetected pending, its `for: 15m` being
too long to wait out; a second real Prometheus, loading the same rule files with every `for` cut to
2 s and scraping the second service every second, must fire it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_pipeline.offline_store import STATS_TABLE
from feast_repo.features import FEATURE_NAMES
from mlops_platform.airflow_client import AirflowClient
from mlops_platform.postgres import connect
from monitoring_service.trigger_store import TRIGGERS_TABLE
from simulation.drift_scenario import drifted_stats, write_driver_stats
from tests.conftest import REPO_ROOT, eventually, run_sh
from tests.monitoring_config import RULES_DIR
from tests.services.monitored_traffic import (
    FIRST_ID,
    SOURCE,
    book,
    book_and_wait_for_the_outcomes,
    metrics,
    post,
)

PORT_OFFSET = 50  # the second service and Prometheus listen on the platform's ports + this
ALERT_FOR = "2s"  # every rule's `for` in the second Prometheus


@pytest.fixture(scope="module")
def second_service(monitored_champion, settings):
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
        eventually(lambda: metrics(url).get("monitoring_ready") == 1.0, 90, what=f"the second service ready at {url}")
        return process

    start()
    yield {"url": url, "start": start, "processes": processes, "log": log_path}
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def evaluated_after(url: str, moment: float) -> dict[str, float]:
    """The metrics once an evaluation that began after `moment` (unix time) has finished."""
    return eventually(lambda: (m := metrics(url)).get("monitoring_last_evaluation_timestamp_seconds", 0) > moment and m,
                      30, what="an evaluation after the traffic")


@pytest.fixture(scope="module")
def alerting_prometheus(second_service, settings, tmp_path_factory) -> str:
    """A real Prometheus with our rule files, every `for` cut to ALERT_FOR, scraping the second service."""
    folder = tmp_path_factory.mktemp("alerting-prometheus")
    rules = folder / "rules"
    rules.mkdir()
    for path in RULES_DIR.glob("*.yml"):
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = ALERT_FOR
        (rules / path.name).write_text(yaml.safe_dump(document, sort_keys=False))
    target = second_service["url"].removeprefix("http://")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(rules / "*.yml")],
              "scrape_configs": [{"job_name": "monitoring", "static_configs": [{"targets": [target]}]}]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = settings.prometheus_port + PORT_OFFSET
    url = f"http://127.0.0.1:{port}"
    with open(folder / "prometheus.log", "w") as log:
        process = subprocess.Popen([shutil.which("prometheus") or "prometheus",
                                    f"--config.file={folder / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={folder / 'data'}",
                                    f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: prometheus_query(url, 'up{job="monitoring"} == 1'), 60,
                   what=f"the second Prometheus at {url} scraping {target} (log: {folder / 'prometheus.log'})")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def prometheus_query(url: str, expr: str) -> list[dict]:
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
        return json.loads(response.read())["data"]["result"]


def scrapes_since(url: str, since: float) -> int:
    seconds = int(time.time() - since) + 1
    result = prometheus_query(url, f"count_over_time(monitoring_window_has_data[{seconds}s])")
    return int(float(result[0]["value"][1])) if result else 0


def alerts(url: str, name: str, version: str) -> list[dict]:
    """The pending or firing alerts `name` for the model version."""
    with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=10) as response:
        found = json.loads(response.read())["data"]["alerts"]
    return [a for a in found if a["labels"].get("alertname") == name and a["labels"].get("model_version") == version]


@pytest.fixture(scope="module")
def undrifted(second_service, monitored_champion, monitored_drivers, settings) -> dict:
    book_and_wait_for_the_outcomes(settings, monitored_drivers, monitored_champion["version"], drifted=False,
                                   requests=60, seed=1)
    return evaluated_after(second_service["url"], time.time())


def test_undrifted_traffic_gives_a_low_drift_share_and_the_hand_computed_live_rmse(undrifted, monitored_champion,
                                                                                    settings):
    version = monitored_champion["version"]
    assert undrifted["monitoring_window_has_data"] == 1.0
    assert undrifted[f'monitoring_drift_share{{model_version="{version}"}}'] < settings.drift_share_threshold
    for feature in (*FEATURE_NAMES, "score"):
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


def newest_report(url: str) -> str:
    """The newest report a service lists on /reports/."""
    with urllib.request.urlopen(f"{url}/reports/", timeout=10) as response:
        index = response.read().decode()
    name = index.split('<a href="', 1)[1].split('"', 1)[0]
    with urllib.request.urlopen(f"{url}/reports/{name}", timeout=30) as response:
        return response.read().decode()


def test_the_window_report_is_served(undrifted, second_service, monitored_champion):
    page = newest_report(second_service["url"])
    assert page.lstrip().lower().startswith("<!doctype html>") and "root_metric_" in page, page[:200]
    assert f"version {monitored_champion['version']}: drift of its features conv_rate, acc_rate, avg_daily_trips" \
        in page, "the caption names the model and the features watched"


def test_undrifted_traffic_fires_no_drift_alert(undrifted, alerting_prometheus, monitored_champion):
    version = monitored_champion["version"]
    since = time.time()
    # Five scrapes of the undrifted window: more than the 2 s `for` needs to fire a true expression.
    eventually(lambda: scrapes_since(alerting_prometheus, since) >= 5
               and prometheus_query(alerting_prometheus, "monitoring_window_has_data == 1"), 60,
               what="five scrapes of an evaluated window")
    assert alerts(alerting_prometheus, "DataDriftDetected", version) == []


@pytest.fixture(scope="module")
def drifted(undrifted, second_service, monitored_drivers, settings) -> dict:
    started = time.time()
    shifted = drifted_stats(monitored_drivers["driver_id"].tolist(), np.random.default_rng(12))
    write_driver_stats(settings, shifted, datetime.now(UTC), SOURCE)
    book(settings, shifted, drifted=True, requests=120, seed=2)
    return {"started": started, "metrics": evaluated_after(second_service["url"], time.time())}


def test_drifted_traffic_raises_the_drift_gauges(drifted, monitored_champion, settings):
    version = monitored_champion["version"]
    gauges = drifted["metrics"]
    assert gauges[f'monitoring_drift_share{{model_version="{version}"}}'] > settings.drift_share_threshold
    for feature in ("conv_rate", "acc_rate"):
        assert gauges[f'monitoring_feature_drifted{{feature="{feature}",model_version="{version}"}}'] == 1.0


def training_runs_since(client: AirflowClient, since: float) -> list[dict]:
    return [run for run in client.runs("training", limit=50)
            if run.get("run_after") and datetime.fromisoformat(run["run_after"]).timestamp() >= since]


def test_the_trigger_starts_exactly_one_training_run_per_cooldown_even_across_a_restart(
        drifted, second_service, monitored_champion, settings):
    client = AirflowClient.from_settings(settings)
    url = second_service["url"]
    eventually(lambda: metrics(url).get('monitoring_retraining_triggered_total{reason="drift"}') == 1.0, 30,
               what="one drift-triggered retraining")
    try:
        runs = training_runs_since(client, drifted["started"] - 5)
        assert len(runs) == 1, runs
        assert "monitoring_drift_share" in (runs[0].get("note") or ""), runs[0]
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute(f"select reason, metric, threshold, model_version, dag_run_id from {TRIGGERS_TABLE}")
            assert cur.fetchall() == [("drift", "monitoring_drift_share", settings.drift_share_threshold,
                                       monitored_champion["version"], runs[0]["dag_run_id"])]
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


def test_drifted_traffic_fires_the_drift_alert(drifted, alerting_prometheus, monitored_champion):
    version = monitored_champion["version"]
    firing = eventually(lambda: [a for a in alerts(alerting_prometheus, "DataDriftDetected", version)
                                 if a["state"] == "firing"], 60,
                        what="DataDriftDetected firing for the drifted version")
    assert float(firing[0]["value"]) >= 0.5, firing


def test_the_platforms_prometheus_holds_the_drift_alert_pending(drifted, monitored_champion, settings):
    """The platform's own Prometheus, rules and monitoring service (evaluating every few seconds in the
    test platform): DataDriftDetected's `for: 15m` is too long to wait, so it must be pending (or firing)."""
    version = monitored_champion["version"]
    eventually(lambda: [a for a in alerts(settings.prometheus_url, "DataDriftDetected", version)
                        if a["state"] in ("pending", "firing")], 150,
               what="DataDriftDetected pending for the drifted version", interval=5)


def test_the_scenario_verb_books_drifted_trips_that_reach_the_prediction_log(drifted, monitored_champion, settings):
    from simulation.drift_scenario import SCENARIO_FIRST_ID
    from simulation.drift_scenario import SOURCE as SCENARIO_SOURCE

    drivers = 20
    try:
        result = run_sh("scenario", "--drifted", "--requests", "30", "--rate", "20", "--drivers", str(drivers))
        summary = json.loads(result.stdout.splitlines()[-1])
        assert (summary["scenario"], summary["online_rows_written"], summary["responses"]["2xx"]) == (
            "drifted", drivers, 30), summary
        assert summary["feedback_sent"] > 0, summary

        def logged() -> list[tuple]:
            with connect(settings) as conn, conn.cursor() as cur:
                cur.execute("select conv_rate, model_version from prediction_log where driver_id between %s and %s "
                            "and predicted_at > now() - interval '5 minutes'",
                            (SCENARIO_FIRST_ID, SCENARIO_FIRST_ID + drivers - 1))
                return cur.fetchall()

        rows = eventually(logged, 60, what="the scenario's predictions in the prediction log")
        assert all(conv >= 0.9 and version == monitored_champion["version"] for conv, version in rows), rows[:5]
    finally:
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute(f"delete from {STATS_TABLE} where source = %s", (SCENARIO_SOURCE,))


# ---------------------------------------------------------------------------------------------
# A champion trained on a subset of the features
# ---------------------------------------------------------------------------------------------
SUBSET = ["avg_daily_trips"]


@pytest.fixture
def subset_champion(monitored_champion, monitored_drivers, settings):
    """A pipeline on SUBSET only, its drift reference holding SUBSET and its score (as training logs it),
    served as the champion; the module's champion is served again afterwards."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mlops_platform import model_registry
    from simulation.generate import completion_logit
    from training_pipeline import tracking

    stats = monitored_drivers.astype({name: np.float64 for name in FEATURE_NAMES})
    y = 1 / (1 + np.exp(-completion_logit(stats["conv_rate"], stats["acc_rate"], stats["avg_daily_trips"])))
    x = stats[SUBSET]
    pipeline = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=0.1))]).fit(x, y)
    client = model_registry.client(settings.mlflow_tracking_uri)
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "monitoring-test")), \
            tempfile.TemporaryDirectory() as folder:
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=settings.model_name,
                                        signature=infer_signature(x, pipeline.predict(x)))
        path = Path(folder) / "reference.parquet"
        x.assign(score=pipeline.predict(x)).to_parquet(path, index=False)
        mlflow.log_artifact(str(path), "reference")
    version = str(info.registered_model_version)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    try:
        eventually(lambda: post(f"{settings.serving_url}/predict", {"request_id": f"subset-probe-{version}",
                                                                    "driver_ids": [FIRST_ID]})["model"]["version"]
                   == version, 60, what=f"the API serving version {version}")
        yield version
    finally:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, monitored_champion["version"])


def test_a_champion_on_a_subset_of_the_features_has_its_drift_watched_on_them(subset_champion, monitored_drivers,
                                                                              settings):
    """The platform's own service (it never retrains in tests): drift on avg_daily_trips and the score only,
    no drift error, and drifted trips give a share of 1 and a pending DataDriftDetected."""
    version, url = subset_champion, settings.monitoring_service_url
    errors = metrics(url)['monitoring_evaluation_errors_total{step="drift"}']
    shifted = drifted_stats(monitored_drivers["driver_id"].tolist(), np.random.default_rng(13))
    write_driver_stats(settings, shifted, datetime.now(UTC), SOURCE)
    book(settings, shifted, drifted=True, requests=60, seed=3)

    share = f'monitoring_drift_share{{model_version="{version}"}}'
    gauges = eventually(lambda: (m := metrics(url)).get(share) is not None and m, 90,
                        what=f"the platform's monitoring service publishing {share}")
    assert gauges[share] == 1.0, gauges[share]
    labelled = [name for name in gauges if f'model_version="{version}"' in name]
    watched = sorted(name for name in labelled if name.startswith("monitoring_drift_watched_feature{"))
    assert watched == [f'monitoring_drift_watched_feature{{feature="avg_daily_trips",model_version="{version}"}}']
    scored = sorted(name.split('feature="', 1)[1].split('"', 1)[0] for name in labelled
                    if name.startswith("monitoring_feature_drift_score{"))
    assert scored == ["avg_daily_trips", "score"]
    assert gauges['monitoring_evaluation_errors_total{step="drift"}'] == errors
    caption = f"version {version}: drift of its features avg_daily_trips and of its score"
    eventually(lambda: caption in newest_report(url) and "Not watched: conv_rate, acc_rate" in newest_report(url),
               30, interval=1, what=f"the newest report saying {caption!r}")
    eventually(lambda: [a for a in alerts(settings.prometheus_url, "DataDriftDetected", version)
                        if a["state"] in ("pending", "firing")], 150,
               what="DataDriftDetected pending for the subset champion", interval=5)
