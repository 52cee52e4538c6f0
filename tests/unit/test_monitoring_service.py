"""The monitoring service's parts without the loop: drift, live quality, the retrain policy, reports.

A whole evaluation on real stores (no-data windows, live metrics, the trigger) is in
tests/services/test_monitor_evaluation.py.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from feast_repo.features import FEATURE_NAMES
from monitoring_service.airflow_runs import count_failed
from monitoring_service.drift import compute_drift, value_drift_scores, watched_features
from monitoring_service.metrics import MonitoringMetrics
from monitoring_service.quality import live_quality
from monitoring_service.reports import add_caption, list_reports, write_report
from monitoring_service.retrain_policy import DRIFT, LIVE_RMSE, Breach, RetrainPolicy, breaches
from monitoring_service.service import trigger_note

T0 = datetime(2024, 9, 15, 12, 0, tzinfo=UTC)
COLUMNS = (*FEATURE_NAMES, "score")


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
