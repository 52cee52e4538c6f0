"""The monitoring service decides running rollouts on real stores: PostgreSQL (rollout state, prediction log,
ground truth) and a temporary MLflow registry whose aliases the decisions move.

Each test plants a rollout of a model of its own: a champion and a challenger version, a rollout started
through mlops_platform.rollout_store, and prediction-log rows of both variants with outcomes drawn from a
known completion probability. The better variant's scores are that probability, the worse one's are noise,
so the right decision is known. Rows, rollout and events are removed when the test ends.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mlops_platform import rollout_store
from mlops_platform.model_registry import find_champion
from mlops_platform.postgres import connect
from mlops_platform.rollout import CHALLENGER, CHALLENGER_ALIAS, CHAMPION, PREVIOUS_CHAMPION_ALIAS, Rollout
from model_serving.prediction_store import (
    FEATURES,
    GROUND_TRUTH_TABLE,
    PREDICTIONS_TABLE,
    ensure_schema,
    insert_ground_truth,
    insert_predictions,
)
from monitoring_service.metrics import MonitoringMetrics
from monitoring_service.rollout_report import rollout_report_name
from monitoring_service.service import Monitor
from tests.conftest import register_version
from tests.monitoring_config import dashboard_expressions, metric_names_in_promql, rule_expressions

MIN_OUTCOMES = 150
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def stores(feast_up, settings):
    ensure_schema(settings)
    rollout_store.ensure_schema(settings)


class PlantedRollout:
    """A model of the test's own with a champion, a challenger and a running rollout between them."""

    def __init__(self, settings, mlflow_client, tmp_path) -> None:
        self.client, self.tmp_path = mlflow_client, tmp_path
        self.model_name = f"rollout-test-{uuid.uuid4().hex[:12]}"
        self.settings = replace(settings, home=tmp_path, model_name=self.model_name, monitor_min_rows=10,
                                rollout_min_outcomes=MIN_OUTCOMES, rollout_bootstrap_samples=400,
                                rollout_confidence=0.95, rollout_max_error_rate=0.02, rollout_max_p99_ms=100.0)
        self.champion = register_version(mlflow_client, self.model_name, alias=settings.model_alias)
        self.challenger = register_version(mlflow_client, self.model_name, alias=CHALLENGER_ALIAS)
        self.rng = np.random.default_rng(11)
        self.requests = 0

    def start(self, mode: str, share: float | None = None) -> Rollout:
        return rollout_store.start(self.settings, self.client, self.model_name, mode, share=share, actor="test",
                                   reason="planted by a test")

    def traffic(self, rollout: Rollout, requests: int, better: str, labelled: bool = True,
                challenger_errors: float = 0.0) -> None:
        """`requests` requests of one driver each, answered as the rollout assigns them (both variants score
        in shadow); the `better` variant scores the true completion probability, the other noise."""
        predictions, outcomes = [], []
        features = {"conv_rate": 0.5, "acc_rate": 0.9, "avg_daily_trips": 12.0}
        for _ in range(requests):
            self.requests += 1
            request_id, driver_id = f"{self.model_name}-{self.requests}", self.requests
            truth = self.rng.uniform(0.1, 0.9)
            answering = rollout.answering_variant(request_id)
            variants = (CHAMPION, CHALLENGER) if rollout.shadowing else (answering,)
            failed = self.rng.random() < challenger_errors
            for variant in variants:
                score = truth if variant == better else self.rng.uniform(0.0, 1.0)
                error = "TimeoutError: no answer in 50 ms" if variant == CHALLENGER and failed else None
                served = variant == answering and error is None
                predictions.append((request_id, driver_id, json.dumps(features), *(features[f] for f in FEATURES),
                                    None if error else score, self.model_name, rollout.version_of(variant), NOW,
                                    variant, served, rollout.rollout_id, float(self.rng.uniform(2, 20)), error))
                if error and not rollout.shadowing:  # the champion answers in its place
                    predictions.append((request_id, driver_id, json.dumps(features),
                                        *(features[f] for f in FEATURES), truth, self.model_name,
                                        rollout.champion_version, NOW, CHAMPION, True, rollout.rollout_id, 5.0, None))
            if labelled:
                outcomes.append((request_id, driver_id, int(self.rng.random() < truth), NOW))
        with connect(self.settings) as conn, conn.cursor() as cur:
            insert_predictions(cur, predictions)
            insert_ground_truth(cur, outcomes)

    def monitor(self) -> tuple[Monitor, CollectorRegistry]:
        """A monitoring service of its own registry, on the real stores: what a (re)started service builds."""
        registry = CollectorRegistry()
        monitor = Monitor(self.settings, MonitoringMetrics(registry), mlflow_client=self.client,
                          trigger=lambda note: "no-run")
        monitor.start()
        return monitor, registry

    def alias(self, alias: str) -> str | None:
        found = find_champion(self.client, self.model_name, alias)
        return found.version if found else None

    def remove(self) -> None:
        with connect(self.settings) as conn, conn.cursor() as cur:
            cur.execute(f"delete from {GROUND_TRUTH_TABLE} where request_id like %s", (f"{self.model_name}-%",))
            cur.execute(f"delete from {PREDICTIONS_TABLE} where model_name = %s", (self.model_name,))
            cur.execute(f"delete from {rollout_store.ROLLOUTS_TABLE} where model_name = %s", (self.model_name,))
            cur.execute(f"delete from {rollout_store.EVENTS_TABLE} where model_name = %s", (self.model_name,))


@pytest.fixture
def planted(stores, settings, temporary_mlflow, tmp_path):
    own = PlantedRollout(settings, temporary_mlflow, tmp_path)
    yield own
    own.remove()


def last_event(planted: PlantedRollout) -> dict:
    return rollout_store.history(planted.settings, planted.model_name, limit=1)[0]


def test_a_better_challenger_in_a_canary_is_promoted_with_its_evidence(planted) -> None:
    rollout = planted.start("canary", share=0.3)
    planted.traffic(rollout, 1400, better=CHALLENGER)
    monitor, registry = planted.monitor()
    result = monitor.evaluate(NOW)

    assert result.rollout["decision"] == "promote", result.rollout
    assert (planted.alias(planted.settings.model_alias), planted.alias(PREVIOUS_CHAMPION_ALIAS),
            planted.alias(CHALLENGER_ALIAS)) == (planted.challenger, planted.champion, None)
    assert rollout_store.current(planted.settings, planted.model_name) is None
    event = last_event(planted)
    assert (event["action"], event["actor"], event["rollout_id"]) == ("promote", "monitoring-service",
                                                                      rollout.rollout_id)
    evidence = event["evidence"]
    assert evidence["brier_difference"]["high"] < 0 and not evidence["paired"]
    assert min(v["outcomes"] for v in evidence["variants"].values()) >= MIN_OUTCOMES
    assert "is better" in event["reason"] and f"{evidence['brier_difference']['high']:+.4f}" in event["reason"]
    assert registry.get_sample_value("monitoring_rollout_decisions_total", {"decision": "promote"}) == 1.0
    assert registry.get_sample_value("monitoring_rollout_active", {"mode": "champion"}) == 0.0
    report = (planted.tmp_path / "monitoring" / "reports" / rollout_report_name(rollout.rollout_id)).read_text()
    assert '<span id="decision">promote</span>' in report and "promoted by the monitoring service" in report

    # the next evaluation finds no rollout, and the window judges the new champion
    assert monitor.evaluate(NOW).rollout is None
    assert result.model_version == planted.challenger, "the promotion happened before this evaluation's window"


def test_a_worse_challenger_in_a_canary_is_rolled_back_and_the_champion_stays(planted) -> None:
    rollout = planted.start("canary", share=0.3)
    planted.traffic(rollout, 1400, better=CHAMPION)
    monitor, registry = planted.monitor()
    result = monitor.evaluate(NOW)

    assert result.rollout["decision"] == "rollback", result.rollout
    assert planted.alias(planted.settings.model_alias) == planted.champion
    assert planted.alias(PREVIOUS_CHAMPION_ALIAS) is None
    version = planted.client.get_model_version(planted.model_name, planted.challenger)
    assert version.tags[rollout_store.DECISION_TAG] == "rolled_back"
    event = last_event(planted)
    assert event["action"] == "rollback" and event["evidence"]["brier_difference"]["low"] > 0
    assert "is worse" in event["reason"]
    assert registry.get_sample_value("monitoring_rollout_decisions_total", {"decision": "rollback"}) == 1.0


def test_a_failing_challenger_is_rolled_back_at_once_without_waiting_for_outcomes(planted) -> None:
    rollout = planted.start("canary", share=0.5)
    planted.traffic(rollout, 400, better=CHALLENGER, labelled=False, challenger_errors=0.1)
    monitor, _ = planted.monitor()
    result = monitor.evaluate(NOW)

    assert result.rollout["decision"] == "rollback", result.rollout
    assert result.rollout["challenger_outcomes"] == 0
    assert planted.alias(planted.settings.model_alias) == planted.champion
    event = last_event(planted)
    assert "ROLLOUT_MAX_ERROR_RATE" in event["reason"], event["reason"]
    assert event["evidence"]["variants"]["challenger"]["error_rate"] > 0.02


def test_a_shadow_rollout_survives_a_restart_of_the_monitoring_service_and_is_decided_after(planted) -> None:
    rollout = planted.start("shadow")
    planted.traffic(rollout, 40, better=CHALLENGER)
    first, registry = planted.monitor()
    early = first.evaluate(NOW)
    assert early.rollout["decision"] == "continue" and "waiting for labelled outcomes" in early.rollout["reason"]
    evaluation, _ = rollout_store.last_evaluation(planted.settings, planted.model_name)
    assert evaluation["paired"] and evaluation["paired_outcomes"] == 40, "kept for `run.sh rollout status`"
    assert registry.get_sample_value("monitoring_rollout_active", {"mode": "shadow"}) == 1.0
    exported = {sample.name for metric in registry.collect() for sample in metric.samples}
    read = {name for _, expr in dashboard_expressions() + rule_expressions() for name in metric_names_in_promql(expr)
            if name.startswith("monitoring_rollout_")}
    assert read and read <= exported, f"dashboards and alerts read what a rollout does not export: {read - exported}"

    del first  # the service stops; outcomes keep arriving; a new one starts on the same state
    planted.traffic(rollout, 300, better=CHALLENGER)
    second, _ = planted.monitor()
    decided = second.evaluate(NOW)
    assert decided.rollout["rollout_id"] == rollout.rollout_id
    assert decided.rollout["decision"] == "promote", decided.rollout
    assert planted.alias(planted.settings.model_alias) == planted.challenger
    assert last_event(planted)["evidence"]["paired_outcomes"] == 340


def test_a_registry_that_refuses_the_promotion_leaves_the_rollout_running_and_says_so(planted) -> None:
    rollout = planted.start("canary", share=0.3)
    planted.traffic(rollout, 1400, better=CHALLENGER)
    planted.client.delete_registered_model(planted.model_name)  # the aliases cannot move any more
    monitor, registry = planted.monitor()
    result = monitor.evaluate(NOW)

    assert result.rollout is None and any(reason.startswith("rollout: ") for reason in result.skipped), result
    assert registry.get_sample_value("monitoring_evaluation_errors_total", {"step": "rollout"}) == 1.0
    assert registry.get_sample_value("monitoring_rollout_decisions_total", {"decision": "promote"}) == 0.0
    assert rollout_store.current(planted.settings, planted.model_name) == rollout, "still running, retried next time"
    report = (planted.tmp_path / "monitoring" / "reports" / rollout_report_name(rollout.rollout_id)).read_text()
    assert '<span id="decision">promote</span>' in report and "not applied yet" in report
