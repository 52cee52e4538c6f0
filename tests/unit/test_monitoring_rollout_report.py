"""The rollout report and metrics, without services: the page, its place beside the drift reports, the
/reports/ index, and the per-variant series a comparison publishes and a finished rollout removes."""

from __future__ import annotations

import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
from prometheus_client import CollectorRegistry

from mlops_platform.rollout import CANARY, CHALLENGER, CHAMPION, Rollout
from monitoring_service.http_server import serve
from monitoring_service.reports import list_reports, write_report
from monitoring_service.rollout_comparison import compare
from monitoring_service.rollout_decision import Bounds, decide
from monitoring_service.rollout_metrics import RolloutMetrics
from monitoring_service.rollout_report import list_rollout_reports, rollout_report_name, write_rollout_report
from tests.unit.test_rollout_decision import rows_frame

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ROLLOUT = Rollout("driver-ranker", "5f0c<b>", CANARY, 0.25, "1", "2", NOW - timedelta(hours=1), NOW)


def measured():
    rng = np.random.default_rng(9)
    records = []
    for i in range(600):
        truth = rng.uniform(0.2, 0.8)
        variant = ROLLOUT.answering_variant(f"q{i}")
        score = truth if variant == CHALLENGER else rng.uniform(0, 1)
        records.append({"request_id": f"q{i}", "variant": variant, "score": score,
                        "trip_completed": float(rng.random() < truth), "latency_ms": float(rng.uniform(2, 30))})
    comparison = compare(ROLLOUT, rows_frame(records), 0.95, 300, 0.5)
    return comparison, decide(comparison, ROLLOUT, Bounds(100, 0.02, 100.0), NOW)


def test_the_report_shows_each_variant_with_intervals_and_the_decision(tmp_path) -> None:
    comparison, decision = measured()
    path = write_rollout_report(tmp_path, ROLLOUT, comparison, decision, NOW, outcome="promoted by the monitoring "
                                                                                    "service")
    assert path.name == rollout_report_name(ROLLOUT.rollout_id) == "rollout-5f0c<b>.html"
    page = path.read_text()
    assert f'<span id="decision">{decision.action}</span>' in page and decision.action == "promote"
    assert "5f0c&lt;b&gt;" in page and "<b>" not in page.split("<body>")[1].split("Mode")[0], "names are escaped"
    brier = comparison.challenger.brier
    assert f"{brier.estimate:.4f} [{brier.low:.4f}, {brier.high:.4f}]" in page
    for label in ("Labelled outcomes", "Latency p99 (ms)", "Error rate", "Precision", "Recall", "ROC AUC"):
        assert f"<th>{label}</th>" in page, label
    assert "promoted by the monitoring service" in page
    assert not list(tmp_path.glob(".*.part")), "written aside, then renamed"


def test_rollout_reports_are_never_pruned_with_the_drift_reports_and_are_listed_on_the_index(tmp_path) -> None:
    class Snapshot:
        def save_html(self, path: str) -> None:
            open(path, "w").write("<html></html>")

    comparison, decision = measured()
    rollout = replace(ROLLOUT, rollout_id="9a1b")  # ids are hex
    write_rollout_report(tmp_path, rollout, comparison, decision, NOW)
    for minute in range(4):
        write_report(Snapshot(), tmp_path, NOW + timedelta(minutes=minute), keep=2)
    assert [p.name for p in list_reports(tmp_path)] == ["2026-01-05T12-03-00Z.html", "2026-01-05T12-02-00Z.html"], (
        "a rollout report takes no drift report's place")
    assert [p.name for p in list_rollout_reports(tmp_path)] == ["rollout-9a1b.html"]

    server = serve("127.0.0.1", 0, tmp_path, CollectorRegistry())
    try:
        port = server.server_address[1]
        index = urllib.request.urlopen(f"http://127.0.0.1:{port}/reports/", timeout=5).read().decode()
        assert "Rollout reports" in index and 'href="rollout-9a1b.html"' in index and "2026-01-05T12-03-00Z" in index
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/reports/rollout-9a1b.html", timeout=5)
        assert b'id="decision"' in page.read()
    finally:
        server.shutdown()


def test_a_comparison_publishes_per_variant_series_and_no_rollout_removes_them() -> None:
    registry = CollectorRegistry()
    metrics = RolloutMetrics(registry)
    metrics.publish_bounds(Bounds(200, 0.02, 100.0))
    comparison, _ = measured()
    metrics.publish(comparison)
    for variant, version in ((CHAMPION, "1"), (CHALLENGER, "2")):
        labels = {"variant": variant, "model_version": version}
        stats = comparison.champion if variant == CHAMPION else comparison.challenger
        assert registry.get_sample_value("monitoring_rollout_labeled_outcomes", labels) == stats.outcomes
        assert registry.get_sample_value("monitoring_rollout_brier", labels) == stats.brier.estimate
        assert registry.get_sample_value("monitoring_rollout_latency_p99_ms", labels) == stats.latency_p99_ms
    versions = {"champion_version": "1", "challenger_version": "2"}
    assert registry.get_sample_value("monitoring_rollout_brier_difference_high", versions) == (
        comparison.brier_difference.high)
    assert registry.get_sample_value("monitoring_rollout_active", {"mode": CANARY}) == 1.0
    assert registry.get_sample_value("monitoring_rollout_share") == 0.25

    metrics.clear()
    assert registry.get_sample_value("monitoring_rollout_brier", {"variant": CHALLENGER, "model_version": "2"}) is None
    assert registry.get_sample_value("monitoring_rollout_brier_difference_high", versions) is None
    assert registry.get_sample_value("monitoring_rollout_active", {"mode": CANARY}) is None
    assert registry.get_sample_value("monitoring_rollout_active", {"mode": CHAMPION}) == 0.0
    assert registry.get_sample_value("monitoring_rollout_max_error_rate") == 0.02, "the bounds stay"
