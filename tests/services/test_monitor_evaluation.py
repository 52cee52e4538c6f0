"""One evaluation of the monitoring service's Monitor on real stores: no-data windows, live quality, the trigger.

Each test writes its window into the platform's prediction log (PostgreSQL) under a model name of its own,
so neither the platform's traffic nor another test's rows fall into it, and registers that model's champion,
with its drift reference, in a temporary MLflow (tests/conftest.py). A retraining trigger is recorded in the
real `retraining_triggers` table and read back by its run id. Rows are removed when the test ends.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from mlops_platform.postgres import connect
from model_serving.prediction_store import (
    FEATURES,
    GROUND_TRUTH_TABLE,
    PREDICTIONS_TABLE,
    ensure_schema,
    insert_ground_truth,
    insert_predictions,
)
from monitoring_service import trigger_store
from monitoring_service.metrics import MonitoringMetrics
from monitoring_service.reference import REFERENCE_ARTIFACT
from monitoring_service.reports import list_reports, report_name
from monitoring_service.retrain_policy import DRIFT
from monitoring_service.service import Monitor
from tests.conftest import register_version
from tests.unit.test_monitoring_service import COLUMNS, T0, as_logged, frame, one_feature

MIN_ROWS = 10
PREDICTED_AT = T0 - timedelta(minutes=1)  # inside every window ending at T0 or a few minutes later


def samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for m in registry.collect() for s in m.samples
            if s.name == name}


@pytest.fixture(scope="module")
def prediction_store(feast_up, settings):
    """The prediction log and the trigger table, as the platform's services create them."""
    ensure_schema(settings)
    trigger_store.ensure_table(settings)


class OwnModel:
    """A model of this test's own: its champion in the temporary MLflow, its rows in the prediction log."""

    def __init__(self, settings, mlflow_client, tmp_path) -> None:
        self.settings, self.client, self.tmp_path = settings, mlflow_client, tmp_path
        self.model_name = f"monitor-test-{uuid.uuid4().hex[:12]}"
        self.dag_run_id = f"{self.model_name}-run"

    def champion(self, reference: pd.DataFrame) -> str:
        """Register a version whose run holds `reference` as its drift reference, under the alias; its number."""
        path = self.tmp_path / REFERENCE_ARTIFACT.rsplit("/", 1)[1]
        reference.to_parquet(path)
        return register_version(self.client, self.model_name, {REFERENCE_ARTIFACT.rsplit("/", 1)[0]: path},
                                 alias=self.settings.model_alias)

    def write(self, version: str, rows: list[tuple], labels: Sequence[int] = (), first: int = 0,
              variant: str = "champion", served: bool = True, error: str | None = None) -> None:
        """Predictions (features..., score) of `version`, numbered from `first`; labels[i] is the outcome of the
        i-th; with `error`, rows of a variant that failed (no score)."""
        def value(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        predictions = []
        for i, row in enumerate(rows, start=first):
            features = {name: value(x) for name, x in zip(FEATURES, row[:-1], strict=True)}
            predictions.append((f"{self.model_name}-{i}", i, json.dumps(features), *features.values(),
                                None if error else float(row[-1]), self.model_name, version, PREDICTED_AT, variant,
                                served, None, 5.0, error))
        outcomes = [(f"{self.model_name}-{i}", i, label, T0) for i, label in enumerate(labels, start=first)]
        with connect(self.settings) as conn, conn.cursor() as cur:
            insert_predictions(cur, predictions)
            insert_ground_truth(cur, outcomes)

    def recorded_triggers(self) -> list[tuple]:
        with connect(self.settings) as conn, conn.cursor() as cur:
            cur.execute(f"select reason, model_version, dag_run_id, triggered_at from {trigger_store.TRIGGERS_TABLE} "
                        "where dag_run_id = %s order by id", (self.dag_run_id,))
            return cur.fetchall()

    def remove(self) -> None:
        with connect(self.settings) as conn, conn.cursor() as cur:
            cur.execute(f"delete from {GROUND_TRUTH_TABLE} where request_id like %s", (f"{self.model_name}-%",))
            cur.execute(f"delete from {PREDICTIONS_TABLE} where model_name = %s", (self.model_name,))
            cur.execute(f"delete from {trigger_store.TRIGGERS_TABLE} where dag_run_id = %s", (self.dag_run_id,))


@pytest.fixture
def window(prediction_store, settings, temporary_mlflow, tmp_path):
    own = OwnModel(settings, temporary_mlflow, tmp_path)
    yield own
    own.remove()


def make_monitor(window: OwnModel, **overrides):
    """A Monitor on the real stores, reporting into tmp_path, with its own registry; triggers are collected."""
    settings = replace(window.settings, home=window.tmp_path, monitor_min_rows=MIN_ROWS,
                       model_name=window.model_name, **overrides)
    registry = CollectorRegistry()
    triggered: list[str] = []
    monitor = Monitor(settings, MonitoringMetrics(registry), mlflow_client=window.client,
                      trigger=lambda note: triggered.append(note) or window.dag_run_id)
    return monitor, registry, triggered


def test_a_window_with_too_few_predictions_publishes_no_numbers(window) -> None:
    rng = np.random.default_rng(3)
    version = window.champion(frame(rng, 500))
    window.write(version, [tuple(row) for row in frame(rng, 5).to_numpy()], labels=[1] * 5)
    monitor, registry, _ = make_monitor(window)
    monitor.metrics.drift_share.labels(version).set(0.9)  # a number from an earlier window must not survive
    monitor.metrics.live_rmse.labels(version).set(0.9)
    result = monitor.evaluate(T0)
    assert result.model_version == version and result.predictions == 5, result.skipped
    assert samples(registry, "monitoring_window_has_data") == {(): 0.0}
    assert samples(registry, "monitoring_window_has_labels") == {(): 0.0}
    for name in ("monitoring_drift_share", "monitoring_feature_drift_score", "monitoring_live_rmse",
                 "monitoring_live_mae", "monitoring_live_roc_auc"):
        assert samples(registry, name) == {}, name
    assert any(f"expected at least MONITOR_MIN_ROWS={MIN_ROWS}" in reason for reason in result.skipped)
    assert not list_reports(window.tmp_path / "monitoring" / "reports")


def test_a_window_with_predictions_but_no_labels_publishes_drift_only(window) -> None:
    rng = np.random.default_rng(4)
    version = window.champion(frame(rng, 500))
    window.write(version, [tuple(row) for row in frame(rng, 50).to_numpy()])
    monitor, registry, _ = make_monitor(window)
    monitor.evaluate(T0)
    assert samples(registry, "monitoring_window_has_data") == {(): 1.0}
    assert samples(registry, "monitoring_window_has_labels") == {(): 0.0}
    assert set(samples(registry, "monitoring_drift_share")) == {(("model_version", version),)}
    assert len(samples(registry, "monitoring_feature_drift_score")) == len(COLUMNS)
    assert samples(registry, "monitoring_live_rmse") == {}
    assert [p.name for p in list_reports(window.tmp_path / "monitoring" / "reports")] == [report_name(T0)]


def test_labelled_window_publishes_live_metrics_by_model_version(window) -> None:
    rng = np.random.default_rng(5)
    version = window.champion(frame(rng, 500))
    rows = [tuple(row) for row in frame(rng, 20).to_numpy()]
    labeled = [(0.8, 1), (0.3, 0)] * 6  # (score, outcome) of the first 12 predictions
    rows[:len(labeled)] = [(*row[:-1], score) for row, (score, _) in zip(rows, labeled, strict=False)]
    window.write(version, rows, labels=[outcome for _, outcome in labeled])
    monitor, registry, _ = make_monitor(window)
    result = monitor.evaluate(T0)
    assert (result.predictions, result.labeled) == (20, 12)
    assert samples(registry, "monitoring_live_rmse") == {(("model_version", version),): pytest.approx(
        math.sqrt((0.04 + 0.09) / 2))}
    assert samples(registry, "monitoring_live_roc_auc") == {(("model_version", version),): 1.0}


def test_the_window_keeps_to_the_answers_the_champion_returned(window) -> None:
    """Failed rows (no score) and unserved shadow scores of the champion's version stay out of drift and error."""
    rng = np.random.default_rng(7)
    version = window.champion(frame(rng, 500))
    served = [(0.8, 1), (0.3, 0)] * 6  # (score, outcome)
    rows = [(*row[:-1], score) for row, (score, _) in zip(frame(rng, 12).to_numpy(), served, strict=True)]
    window.write(version, rows, labels=[outcome for _, outcome in served])
    others = [tuple(row) for row in frame(rng, 10).to_numpy()]
    window.write(version, others, labels=[0] * 10, first=100, error="TimeoutError: no answer in 50 ms")
    window.write(version, [(*row[:-1], 0.99) for row in others], labels=[0] * 10, first=200, variant="challenger",
                 served=False)
    monitor, registry, _ = make_monitor(window)
    result = monitor.evaluate(T0)
    assert (result.predictions, result.labeled) == (12, 12), result.skipped
    assert samples(registry, "monitoring_live_rmse") == {(("model_version", version),): pytest.approx(
        math.sqrt((0.04 + 0.09) / 2))}


def test_a_subset_champion_has_its_drift_computed_published_and_reported_on_its_own_features(
        window, caplog) -> None:
    rng = np.random.default_rng(23)
    version = window.champion(one_feature(rng, 2000))
    window.write(version, [tuple(row) for row in as_logged(one_feature(rng, 60, trips_mean=40.0)).to_numpy()])
    monitor, registry, triggered = make_monitor(window, retrain_sustain_minutes=1.0, retrain_cooldown_minutes=60.0)
    with caplog.at_level("INFO", logger="monitoring-service"):
        results = [monitor.evaluate(T0 + timedelta(minutes=minute)) for minute in range(3)]

    assert registry.get_sample_value("monitoring_evaluation_errors_total", {"step": "drift"}) == 0.0
    assert results[0].watched_features == ["avg_daily_trips"] and results[0].drift_share == 1.0, results[0].skipped
    assert samples(registry, "monitoring_drift_watched_feature") == {
        (("feature", "avg_daily_trips"), ("model_version", version)): 1.0}
    assert {dict(labels)["feature"] for labels in samples(registry, "monitoring_feature_drift_score")} == {
        "avg_daily_trips", "score"}
    assert len(triggered) == 1 and "monitoring_drift_share = 1.0000" in triggered[0], "the trigger can fire"
    announced = [r for r in caplog.records if r.getMessage() == "drift watches the champion's features"]
    assert [(r.model_version, r.watched_features, r.not_watched) for r in announced] == [
        (version, ["avg_daily_trips"], ["conv_rate", "acc_rate"])], "said once, not at every evaluation"
    report = list_reports(window.tmp_path / "monitoring" / "reports")[0].read_text()
    assert (f"version {version}: drift of its features avg_daily_trips and of its score" in report
            and "Not watched: conv_rate, acc_rate" in report)


def test_the_monitor_triggers_once_and_says_why(window) -> None:
    rng = np.random.default_rng(6)
    version = window.champion(frame(rng, 500))
    window.write(version, [tuple(row) for row in frame(rng, 60, conv_shift=0.5, acc_shift=-0.4).to_numpy()])
    monitor, registry, triggered = make_monitor(window, retrain_sustain_minutes=1.0, retrain_cooldown_minutes=60.0)
    for minute in range(5):
        monitor.evaluate(T0 + timedelta(minutes=minute))
    assert len(triggered) == 1 and "monitoring_drift_share" in triggered[0]
    assert window.recorded_triggers() == [(DRIFT, version, window.dag_run_id, T0 + timedelta(minutes=1))]
    assert samples(registry, "monitoring_retraining_triggered_total")[(("reason", DRIFT),)] == 1.0
