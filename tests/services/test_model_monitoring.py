"""Every project's champion judged by the monitoring service, from rows planted in model_prediction_log.

The penguin reference is the palmerpenguins rows in penguin_measurements (no champion here, so the offline
fallback of monitoring_service.model_reference). Normal answers (the same penguins, one in ten wrong) must
give no drift and the accuracy, macro F1 and per-class counts computed here with scikit-learn; answers with
body mass and flipper length shifted, half of them wrong, must be detected as a drift and fire
ModelFeatureDrift and ModelMacroF1Low in a real Prometheus scraping the service, with the model label. A
score model's answers (driver_trip_completion through /models/) get their live RMSE. Every query of the
Model monitoring dashboard then shows data.

One monitoring service process of its own (2 s interval) and one Prometheus (rules' `for` cut to 2 s), on free ports.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from feast_repo.features import FEATURE_NAMES as DRIVER_FEATURES
from feast_repo.penguin_features import CLASSES
from mlops_platform.postgres import connect
from mlops_platform.projects import DRIVERS, PENGUINS
from tests.conftest import REPO_ROOT, eventually, free_port
from tests.monitoring_config import dashboard_expressions, load_dashboards
from tests.services.monitored_traffic import metrics
from tests.services.penguin_project import land_penguins, penguin_frame
from tests.services.rule_prometheus import firing, query, rule_prometheus

REQUEST = "model-monitoring-test"
ROWS = 200


@pytest.fixture(scope="module")
def planted_tables(feast_up, mlflow_up, settings):
    from model_serving.prediction_store import ensure_schema

    ensure_schema(settings)
    land_penguins(settings)  # the reference: penguin_measurements, as ingestion fills it
    with connect(settings) as conn, conn.cursor() as cur:  # the window holds only what this module plants
        for table in ("model_prediction_log", "model_ground_truth"):
            cur.execute(f"delete from {table} where model_name = any(%s)",
                        ([PENGUINS.model_name, DRIVERS.model_name],))
    yield
    clear_planted(settings)


def clear_planted(settings, models: tuple[str, ...] = (PENGUINS.model_name, DRIVERS.model_name)) -> None:
    with connect(settings) as conn, conn.cursor() as cur:
        for table in ("model_prediction_log", "model_ground_truth"):
            cur.execute(f"delete from {table} where request_id like %s and model_name = any(%s)",
                        (f"{REQUEST}%", list(models)))


def plant(settings, model: str, version: str, features: list[dict], predictions: list[str], labels: list[str],
          batch: str) -> None:
    """Answers a minute old with their labels, as the prediction logger writes them."""
    at = datetime.now(UTC) - timedelta(minutes=1)
    with connect(settings) as conn, conn.cursor() as cur:
        for n, (row, prediction, label) in enumerate(zip(features, predictions, labels, strict=True)):
            request = f"{REQUEST}-{batch}-{n}"
            cur.execute("insert into model_prediction_log (model_name, request_id, entity_key, model_version, "
                        "features, prediction, predicted_at) values (%s, %s, %s, %s, %s::jsonb, %s, %s)",
                        (model, request, str(n), version, json.dumps(row), prediction, at))
            cur.execute("insert into model_ground_truth (model_name, request_id, entity_key, label, observed_at) "
                        "values (%s, %s, %s, %s, %s)", (model, request, str(n), label, at))


def penguin_answers(shift: bool, wrong_every: int) -> tuple[list[dict], list[str], list[str]]:
    frame = penguin_frame().sample(ROWS, random_state=7).reset_index(drop=True)
    if shift:
        frame["body_mass_g"] += 900
        frame["flipper_length_mm"] += 20
    labels = list(frame["species"])
    predictions = [CLASSES[(CLASSES.index(label) + 1) % 3] if n % wrong_every == 0 else label
                   for n, label in enumerate(labels)]
    features = frame[list(PENGUINS.features)].astype(float).to_dict("records")
    return features, predictions, labels


@pytest.fixture(scope="module")
def service(planted_tables, settings):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MONITORING_SERVICE_PORT": str(port),
           "MONITOR_INTERVAL_SECONDS": "2", "MONITOR_WINDOW_MINUTES": "30", "MONITOR_MIN_ROWS": "50"}
    url = f"http://127.0.0.1:{port}"
    with open(settings.home / "logs" / "monitoring-service-models-test.log", "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "monitoring_service"], env=env, cwd=REPO_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: metrics(url).get("monitoring_ready") == 1.0, 90, what=f"the service ready at {url}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus(service, settings, tmp_path_factory):
    with rule_prometheus(tmp_path_factory.mktemp("model-prometheus"), free_port(),
                         "monitoring", service.removeprefix("http://")) as url:
        yield url


def evaluated_after(url: str, moment: float) -> dict[str, float]:
    return eventually(lambda: (m := metrics(url)).get("monitoring_last_evaluation_timestamp_seconds", 0) > moment
                      and m, 60, what="an evaluation after the planted rows")


def penguin(name: str, **labels: str) -> str:
    """The sample's key on a /metrics page (labels in name order, as prometheus_client writes them)."""
    labels = {"model": PENGUINS.model_name, **labels}
    inner = ",".join(f'{key}="{labels[key]}"' for key in sorted(labels))
    return f"{name}{{{inner}}}"


@pytest.fixture(scope="module")
def normal(service, prometheus, settings) -> dict:
    features, predictions, labels = penguin_answers(shift=False, wrong_every=10)
    plant(settings, PENGUINS.model_name, "1", features, predictions, labels, "normal")
    rng = np.random.default_rng(5)
    scores = rng.uniform(0, 1, 80).round(4)
    outcomes = (rng.uniform(0, 1, 80) < scores).astype(int)
    rows = [dict(zip(DRIVER_FEATURES, rng.uniform(0, 10, len(DRIVER_FEATURES)), strict=True)) for _ in range(80)]
    plant(settings, DRIVERS.model_name, "4", rows, [str(s) for s in scores], [str(o) for o in outcomes], "driver")
    found = evaluated_after(service, time.time())
    return {"metrics": found, "predictions": predictions, "labels": labels,
            "rmse": math.sqrt(float(np.mean((scores - outcomes) ** 2)))}


def test_normal_answers_give_no_drift_and_the_hand_computed_quality(normal) -> None:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    found, predictions, labels = normal["metrics"], normal["predictions"], normal["labels"]
    assert found[penguin("monitoring_model_window_predictions", model_version="1")] == ROWS
    assert found[penguin("monitoring_model_window_labeled_predictions", model_version="1")] == ROWS
    assert found[penguin("monitoring_model_drift_detected")] == 0.0
    assert found[penguin("monitoring_model_feature_drift_score", feature="body_mass_g")] < 0.3
    assert found[penguin("monitoring_model_accuracy")] == pytest.approx(accuracy_score(labels, predictions))
    assert found[penguin("monitoring_model_macro_f1")] == pytest.approx(
        f1_score(labels, predictions, average="macro", labels=list(CLASSES)))
    recalls = recall_score(labels, predictions, average=None, labels=list(CLASSES))
    for name, recall in zip(CLASSES, recalls, strict=True):
        assert found[penguin("monitoring_model_class_recall", **{"class": name})] == pytest.approx(recall)
        assert found[penguin("monitoring_model_class_labeled_outcomes", **{"class": name})] == labels.count(name)
    driver_rmse = found[f'monitoring_model_live_rmse{{model="{DRIVERS.model_name}"}}']
    assert driver_rmse == pytest.approx(normal["rmse"], abs=1e-6)


def test_prometheus_scrapes_the_numbers_with_the_model_label(normal, prometheus) -> None:
    series = eventually(lambda: query(prometheus, "monitoring_model_accuracy"), 30, what="accuracy in Prometheus")
    assert {s["metric"]["model"] for s in series} == {PENGUINS.model_name}
    assert all(s["metric"]["job"] == "monitoring" for s in series)


@pytest.fixture(scope="module")
def drifted(normal, service, settings) -> dict:
    clear_planted(settings, (PENGUINS.model_name,))
    features, predictions, labels = penguin_answers(shift=True, wrong_every=2)
    plant(settings, PENGUINS.model_name, "1", features, predictions, labels, "drifted")
    return eventually(lambda: (m := metrics(service)).get(penguin("monitoring_model_drift_detected")) == 1.0 and m,
                      60, what="the drift of the shifted penguins")


def test_shifted_answers_are_a_drift_of_the_shifted_features(drifted) -> None:
    shifted = {"body_mass_g", "flipper_length_mm"}
    for feature in PENGUINS.features:
        value = drifted[penguin("monitoring_model_feature_drifted", feature=feature)]
        assert value == (1.0 if feature in shifted else 0.0), feature
    assert drifted[penguin("monitoring_model_macro_f1")] < 0.8


def test_the_model_alerts_fire_for_the_model(drifted, prometheus) -> None:
    for alert in ("ModelFeatureDrift", "ModelMacroF1Low"):
        eventually(lambda alert=alert: firing(prometheus, alert, model=PENGUINS.model_name), 60,
                   what=f"{alert} firing for {PENGUINS.model_name}")


def test_every_model_dashboard_query_shows_data(drifted, prometheus) -> None:
    wanted = [(source, expr) for source, expr in dashboard_expressions() if "model-monitoring.json" in source]
    assert wanted
    empty = lambda: [f"{source}: {expr}" for source, expr in wanted if not query(prometheus, expr)]  # noqa: E731
    try:
        eventually(lambda: not empty(), 30, interval=1, what="every model dashboard query to show data")
    except AssertionError:
        pytest.fail("queries without data:\n" + "\n".join(empty()))
    dashboard = next(d for p, d in load_dashboards().items() if p.name == "model-monitoring.json")
    variable = dashboard["templating"]["list"][0]
    assert variable["name"] == "model"
    match = urllib.parse.urlencode({"match[]": "monitoring_model_window_predictions"})
    with urllib.request.urlopen(f"{prometheus}/api/v1/label/model/values?{match}", timeout=10) as answer:
        values = json.loads(answer.read())["data"]
    assert PENGUINS.model_name in values and DRIVERS.model_name in values
