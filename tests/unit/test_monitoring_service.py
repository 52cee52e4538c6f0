"""The monitoring service's parts without the loop: drift, live quality, no-data windows, the retrain policy."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from mlops_platform.settings import load_settings
from monitoring_service.airflow_runs import count_failed
from monitoring_service.drift import compute_drift, value_drift_scores, watched_features
from monitoring_service.metrics import MonitoringMetrics
from monitoring_service.quality import live_quality
from monitoring_service.reference import Champion
from monitoring_service.reports import add_caption, list_reports, report_name, write_report
from monitoring_service.retrain_policy import DRIFT, LIVE_RMSE, Breach, RetrainPolicy, breaches
from monitoring_service.service import Monitor, trigger_note

T0 = datetime(2024, 9, 15, 12, 0, tzinfo=UTC)
COLUMNS = ("conv_rate", "acc_rate", "avg_daily_trips", "score")


def frame(rng: np.random.Generator, n: int, conv_shift: float = 0.0, acc_shift: float = 0.0) -> pd.DataFrame:
    conv = np.clip(rng.normal(0.4, 0.15, n) + conv_shift, 0, 1)
    acc = np.clip(rng.normal(0.7, 0.1, n) + acc_shift, 0, 1)
    trips = rng.poisson(12, n).astype(float)
    return pd.DataFrame({"conv_rate": conv, "acc_rate": acc, "avg_daily_trips": trips,
                         "score": 0.2 + 0.5 * conv + 0.2 * acc})


# ---- drift ------------------------------------------------------------------------------------
def test_a_sample_of_the_reference_distribution_has_not_drifted() -> None:
    rng = np.random.default_rng(0)
    result = compute_drift(frame(rng, 5000), frame(rng, 1000))
    assert result.share == 0.0, result.scores
    assert set(result.scores) == set(COLUMNS)
    assert all(score < 0.1 for score in result.scores.values()), result.scores


def test_shifted_rates_are_flagged_and_counted_in_the_share() -> None:
    rng = np.random.default_rng(1)
    result = compute_drift(frame(rng, 2000), frame(rng, 300, conv_shift=0.4, acc_shift=-0.3))
    assert result.drifted["conv_rate"] and result.drifted["acc_rate"] and result.drifted["score"]
    assert not result.drifted["avg_daily_trips"]
    assert result.share == pytest.approx(2 / 3)


def test_a_reference_without_the_expected_columns_is_refused_with_what_it_lacks() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match=r"lacks \['score'\]"):
        compute_drift(frame(rng, 100).drop(columns="score"), frame(rng, 100))
    with pytest.raises(ValueError, match=r"lacks \['acc_rate'\]"):
        compute_drift(frame(rng, 100), frame(rng, 100).drop(columns="acc_rate"))


# ---- a champion trained on a subset of the features -------------------------------------------
def one_feature(rng: np.random.Generator, n: int, trips_mean: float = 12.0) -> pd.DataFrame:
    """What training logs as the reference of a champion on avg_daily_trips only: that feature and the score."""
    trips = rng.poisson(trips_mean, n).astype(float)
    return pd.DataFrame({"avg_daily_trips": trips, "score": 0.3 + 0.02 * trips})


def as_logged(reference_like: pd.DataFrame) -> pd.DataFrame:
    """The same rows as the prediction log holds them: every logged feature, null where the model uses none."""
    return reference_like.reindex(columns=list(COLUMNS))


def test_drift_is_computed_on_the_features_of_a_one_feature_reference() -> None:
    rng = np.random.default_rng(20)
    reference = one_feature(rng, 3000)
    assert watched_features(reference) == ("avg_daily_trips",)

    steady = compute_drift(reference, as_logged(one_feature(rng, 300)))
    assert steady.features == ("avg_daily_trips",) and steady.not_watched == ("conv_rate", "acc_rate")
    assert set(steady.scores) == {"avg_daily_trips", "score"} and steady.share == 0.0, steady.scores

    shifted = compute_drift(reference, as_logged(one_feature(rng, 300, trips_mean=40.0)))
    assert shifted.drifted == {"avg_daily_trips": True, "score": True}
    assert shifted.share == 1.0, "the share counts the watched features only"


def test_a_reference_naming_a_feature_the_prediction_log_lacks_is_refused_saying_so() -> None:
    rng = np.random.default_rng(21)
    with pytest.raises(ValueError, match=r"the prediction log has no column for \['surge'\]"):
        watched_features(one_feature(rng, 10).assign(surge=1.0))
    with pytest.raises(ValueError, match=r"found none"):
        watched_features(one_feature(rng, 10)[["score"]])


def test_a_watched_feature_with_only_nulls_in_the_window_is_refused_saying_so() -> None:
    rng = np.random.default_rng(22)
    window = as_logged(one_feature(rng, 50)).assign(avg_daily_trips=np.nan)
    with pytest.raises(ValueError, match=r"expected values of \['avg_daily_trips'\] in the window, found only nulls"):
        compute_drift(one_feature(rng, 500), window)


def test_value_drift_scores_reads_only_value_drift_metrics() -> None:
    snapshot = {"metrics": [{"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"share": 1}},
                            {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "acc_rate"}, "value": 0.3}]}
    assert value_drift_scores(snapshot) == {"acc_rate": 0.3}


# ---- live quality -----------------------------------------------------------------------------
def test_live_metrics_match_a_hand_computation() -> None:
    scores, labels = np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1])
    quality = live_quality(scores, labels)
    assert quality.rmse == pytest.approx(math.sqrt((0.01 + 0.04 + 0.36 + 0.36) / 4))
    assert quality.mae == pytest.approx((0.1 + 0.2 + 0.6 + 0.6) / 4)
    # pairs (positive, negative): (0.9>0.2) (0.9>0.6) (0.4>0.2) (0.4<0.6) -> 3 of 4
    assert quality.roc_auc == pytest.approx(0.75)
    assert quality.rows == 4


def test_auc_is_absent_with_one_class_and_empty_input_is_refused() -> None:
    assert live_quality(np.array([0.3, 0.8]), np.array([1, 1])).roc_auc is None
    with pytest.raises(ValueError, match="expected labelled predictions"):
        live_quality(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="expected labels 0 or 1"):
        live_quality(np.array([0.3]), np.array([2]))


# ---- no-data windows publish nothing ----------------------------------------------------------
def samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for m in registry.collect() for s in m.samples
            if s.name == name}


class FakeCursor:
    def __init__(self, predictions: list[tuple], labeled: list[tuple]) -> None:
        self.rows = {"prediction_log": predictions, "labeled_predictions": labeled}
        self.result: list[tuple] = []

    def execute(self, sql: str, params=None) -> None:
        self.result = self.rows["labeled_predictions" if "labeled_predictions" in sql else "prediction_log"]

    def fetchall(self) -> list[tuple]:
        return self.result

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class FakeConnection(FakeCursor):
    def cursor(self) -> FakeCursor:
        return self._cursor


def make_monitor(monkeypatch, tmp_path, predictions: list[tuple], labeled: list[tuple], reference=None,
                 **overrides):
    from monitoring_service import service

    secrets = {key: "x" for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_ADMIN_PASSWORD",
                                    "AIRFLOW_FERNET_KEY", "AIRFLOW_SECRET_KEY")}
    environ = {**secrets, "PLATFORM_MODE": "local", "PLATFORM_HOME": str(tmp_path), "MONITOR_MIN_ROWS": "10"}
    settings = replace(load_settings(environ, tmp_path / "none.env"), **overrides)
    conn = FakeConnection([], [])
    conn._cursor = FakeCursor(predictions, labeled)
    monkeypatch.setattr("data_pipeline.offline_store.connect", lambda settings=None: conn)
    monkeypatch.setattr(service, "find_champion", lambda client, name, alias: Champion(name, "7", "run-7"))
    registry = CollectorRegistry()
    triggered: list[str] = []
    monitor = Monitor(settings, MonitoringMetrics(registry), trigger=lambda note: triggered.append(note) or "run-1")
    if reference is not None:
        monitor.references._frames = {"run-7": reference}
    return monitor, registry, triggered


def test_a_window_with_too_few_predictions_publishes_no_numbers(monkeypatch, tmp_path) -> None:
    rng = np.random.default_rng(3)
    few = [tuple(row) for row in frame(rng, 5).to_numpy()]
    monitor, registry, _ = make_monitor(monkeypatch, tmp_path, few, [(0.5, 1.0)] * 5, reference=frame(rng, 500))
    monitor.metrics.drift_share.labels("7").set(0.9)  # a number from an earlier window must not survive
    monitor.metrics.live_rmse.labels("7").set(0.9)
    result = monitor.evaluate(T0)
    assert samples(registry, "monitoring_window_has_data") == {(): 0.0}
    assert samples(registry, "monitoring_window_has_labels") == {(): 0.0}
    for name in ("monitoring_drift_share", "monitoring_feature_drift_score", "monitoring_live_rmse",
                 "monitoring_live_mae", "monitoring_live_roc_auc"):
        assert samples(registry, name) == {}, name
    assert any("expected at least MONITOR_MIN_ROWS=10" in reason for reason in result.skipped)
    assert not list_reports(tmp_path / "monitoring" / "reports")


def test_a_window_with_predictions_but_no_labels_publishes_drift_only(monkeypatch, tmp_path) -> None:
    rng = np.random.default_rng(4)
    rows = [tuple(row) for row in frame(rng, 50).to_numpy()]
    monitor, registry, _ = make_monitor(monkeypatch, tmp_path, rows, [], reference=frame(rng, 500))
    monitor.evaluate(T0)
    assert samples(registry, "monitoring_window_has_data") == {(): 1.0}
    assert samples(registry, "monitoring_window_has_labels") == {(): 0.0}
    assert set(samples(registry, "monitoring_drift_share")) == {(("model_version", "7"),)}
    assert len(samples(registry, "monitoring_feature_drift_score")) == len(COLUMNS)
    assert samples(registry, "monitoring_live_rmse") == {}
    assert [p.name for p in list_reports(tmp_path / "monitoring" / "reports")] == [report_name(T0)]


def test_labelled_window_publishes_live_metrics_by_model_version(monkeypatch, tmp_path) -> None:
    rng = np.random.default_rng(5)
    rows = [tuple(row) for row in frame(rng, 20).to_numpy()]
    labeled = [(0.8, 1.0), (0.3, 0.0)] * 6
    monitor, registry, _ = make_monitor(monkeypatch, tmp_path, rows, labeled, reference=frame(rng, 500))
    monitor.evaluate(T0)
    assert samples(registry, "monitoring_live_rmse") == {(("model_version", "7"),): pytest.approx(
        math.sqrt((0.04 + 0.09) / 2))}
    assert samples(registry, "monitoring_live_roc_auc") == {(("model_version", "7"),): 1.0}


def test_a_subset_champion_has_its_drift_computed_published_and_reported_on_its_own_features(
        monkeypatch, tmp_path, caplog) -> None:
    from monitoring_service import service

    rng = np.random.default_rng(23)
    rows = [tuple(row) for row in as_logged(one_feature(rng, 60, trips_mean=40.0)).to_numpy()]
    monitor, registry, triggered = make_monitor(monkeypatch, tmp_path, rows, [], reference=one_feature(rng, 2000),
                                                retrain_sustain_minutes=1.0, retrain_cooldown_minutes=60.0)
    monkeypatch.setattr(service.trigger_store, "record_trigger", lambda settings, record: None)
    with caplog.at_level("INFO", logger="monitoring-service"):
        results = [monitor.evaluate(T0 + timedelta(minutes=minute)) for minute in range(3)]

    assert registry.get_sample_value("monitoring_evaluation_errors_total", {"step": "drift"}) == 0.0
    assert results[0].watched_features == ["avg_daily_trips"] and results[0].drift_share == 1.0, results[0].skipped
    assert samples(registry, "monitoring_drift_watched_feature") == {
        (("feature", "avg_daily_trips"), ("model_version", "7")): 1.0}
    assert {dict(labels)["feature"] for labels in samples(registry, "monitoring_feature_drift_score")} == {
        "avg_daily_trips", "score"}
    assert len(triggered) == 1 and "monitoring_drift_share = 1.0000" in triggered[0], "the trigger can fire"
    announced = [r for r in caplog.records if r.getMessage() == "drift watches the champion's features"]
    assert [(r.model_version, r.watched_features, r.not_watched) for r in announced] == [
        ("7", ["avg_daily_trips"], ["conv_rate", "acc_rate"])], "said once, not at every evaluation"
    report = list_reports(tmp_path / "monitoring" / "reports")[0].read_text()
    assert ("version 7: drift of its features avg_daily_trips and of its score" in report
            and "Not watched: conv_rate, acc_rate" in report)


def test_a_caption_goes_at_the_top_of_the_body_escaped(tmp_path) -> None:
    page = tmp_path / "r.html"
    page.write_text("<!doctype html><html><body class='x'><div>report</div></body></html>")
    add_caption(page, "version 7 <watched>")
    assert page.read_text().startswith("<!doctype html><html><body class='x'><p id=\"report-caption\"")
    assert "version 7 &lt;watched&gt;</p><div>report</div>" in page.read_text()


# ---- retraining policy ------------------------------------------------------------------------
def drift(value: float = 0.9) -> Breach:
    return Breach(DRIFT, "monitoring_drift_share", value, 0.5)


def test_breaches_compare_each_number_with_its_threshold() -> None:
    assert breaches(None, None, 0.5, 0.5) == []
    assert [b.reason for b in breaches(0.67, 0.6, 0.5, 0.5)] == [DRIFT, LIVE_RMSE]
    assert breaches(0.5, 0.5, 0.5, 0.5) == [], "at the threshold is not above it"


def test_a_breach_must_hold_for_the_sustain_time_on_consecutive_evaluations() -> None:
    policy = RetrainPolicy(sustain=timedelta(minutes=10), cooldown=timedelta(hours=6))
    assert policy.decide(T0, [drift()]) is None
    assert policy.decide(T0 + timedelta(minutes=5), [drift()]) is None
    assert policy.decide(T0 + timedelta(minutes=6), []) is None, "an evaluation without the breach ends the streak"
    assert policy.decide(T0 + timedelta(minutes=7), [drift()]) is None
    assert policy.decide(T0 + timedelta(minutes=16), [drift()]) is None
    assert policy.decide(T0 + timedelta(minutes=17), [drift()]) == drift()


def test_exactly_one_trigger_per_cooldown_with_a_fake_clock() -> None:
    policy = RetrainPolicy(sustain=timedelta(minutes=2), cooldown=timedelta(minutes=30))
    triggers = []
    now = T0
    while now < T0 + timedelta(minutes=95):  # one evaluation a minute, always over the threshold
        if policy.decide(now, [drift()]) is not None:
            policy.triggered(now)
            triggers.append(now)
        now += timedelta(minutes=1)
    assert triggers == [T0 + timedelta(minutes=2), T0 + timedelta(minutes=32), T0 + timedelta(minutes=62),
                        T0 + timedelta(minutes=92)]


def test_the_cooldown_resumes_from_the_last_recorded_trigger() -> None:
    policy = RetrainPolicy(sustain=timedelta(0), cooldown=timedelta(minutes=30), last_trigger=T0)
    assert policy.decide(T0 + timedelta(minutes=29), [drift()]) is None
    assert policy.decide(T0 + timedelta(minutes=30), [drift()]) == drift()


def test_the_monitor_triggers_once_and_says_why(monkeypatch, tmp_path) -> None:
    from monitoring_service import service

    rng = np.random.default_rng(6)
    rows = [tuple(row) for row in frame(rng, 60, conv_shift=0.5, acc_shift=-0.4).to_numpy()]
    monitor, registry, triggered = make_monitor(monkeypatch, tmp_path, rows, [], reference=frame(rng, 500),
                                                retrain_sustain_minutes=1.0, retrain_cooldown_minutes=60.0)
    recorded = []
    monkeypatch.setattr(service.trigger_store, "record_trigger", lambda settings, record: recorded.append(record))
    for minute in range(5):
        monitor.evaluate(T0 + timedelta(minutes=minute))
    assert len(triggered) == 1 and "monitoring_drift_share" in triggered[0]
    assert [(r.reason, r.model_version, r.dag_run_id, r.triggered_at) for r in recorded] == [
        (DRIFT, "7", "run-1", T0 + timedelta(minutes=1))]
    assert samples(registry, "monitoring_retraining_triggered_total")[(("reason", DRIFT),)] == 1.0


def test_the_note_names_metric_value_and_threshold() -> None:
    note = trigger_note(drift(0.6667), "3")
    assert "monitoring_drift_share = 0.6667 above 0.5" in note and "model version 3" in note


def test_failed_runs_are_counted_per_dag_with_zero_for_dags_without_failures() -> None:
    runs = [{"dag_id": "training"}, {"dag_id": "training"}, {"dag_id": "gone"}]
    assert count_failed(["training", "batch_serving"], runs) == {"batch_serving": 0, "gone": 1, "training": 2}


def test_reports_are_named_by_window_end_and_pruned(tmp_path) -> None:
    class Snapshot:
        def save_html(self, path: str) -> None:
            open(path, "w").write("<html></html>")

    for minute in range(4):
        write_report(Snapshot(), tmp_path, T0 + timedelta(minutes=minute), keep=2)
    assert [p.name for p in list_reports(tmp_path)] == ["2024-09-15T12-03-00Z.html", "2024-09-15T12-02-00Z.html"]


def test_every_evaluation_step_that_can_fail_is_exported_at_zero_from_the_start() -> None:
    """A panel or alert on evaluation errors sees 0 per step, not "no data", and no step is missing."""
    import re
    from pathlib import Path

    import monitoring_service.service as service_module
    from monitoring_service.metrics import EVALUATION_STEPS

    counted = set(re.findall(r'evaluation_errors\.labels\("(\w+)"\)', Path(service_module.__file__).read_text()))
    assert counted and counted <= set(EVALUATION_STEPS), counted - set(EVALUATION_STEPS)
    registry = CollectorRegistry()
    MonitoringMetrics(registry)
    for step in EVALUATION_STEPS:
        assert registry.get_sample_value("monitoring_evaluation_errors_total", {"step": step}) == 0.0
