"""The rollout step of an evaluation: compare the running rollout's variants, decide, act, and say so.

Everything it needs is in PostgreSQL (the rollout's row and its logged predictions and outcomes) and in
the registry, so a restarted monitoring service picks a running rollout up where it was. The decision
acts through mlops_platform.rollout_store, which moves the aliases and logs the event with the evidence
in one transaction; a rollout someone ended meanwhile is left as they left it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops_platform import rollout_store
from mlops_platform.postgres import connect
from mlops_platform.rollout import Rollout, RolloutError
from mlops_platform.settings import Settings
from monitoring_service.rollout_comparison import Comparison, compare
from monitoring_service.rollout_decision import CONTINUE, PROMOTE, Bounds, Decision, decide
from monitoring_service.rollout_metrics import RolloutMetrics
from monitoring_service.rollout_report import write_rollout_report
from monitoring_service.rollout_rows import read_rollout_rows

ACTOR = "monitoring-service"
log = logging.getLogger(ACTOR)


class RolloutMonitor:
    def __init__(self, settings: Settings, metrics: RolloutMetrics, mlflow_client, reports: Path) -> None:
        self.settings = settings
        self.metrics = metrics
        self.mlflow = mlflow_client
        self.reports = reports
        self.bounds = Bounds.from_settings(settings)
        metrics.publish_bounds(self.bounds)

    def evaluate(self, now: datetime) -> dict[str, Any] | None:
        """One look at the running rollout of the model; None when none runs. Returns what was found and done."""
        rollout = rollout_store.current(self.settings, self.settings.model_name)
        if rollout is None:
            self.metrics.clear()
            return None
        with connect(self.settings) as conn, conn.cursor() as cur:
            rows = read_rollout_rows(cur, rollout)
        comparison = compare(rollout, rows, self.settings.rollout_confidence, self.settings.rollout_bootstrap_samples,
                             self.settings.serving_score_threshold)
        decision = decide(comparison, rollout, self.bounds, now)
        evidence = {**comparison.as_dict(), "decision": decision.as_dict(), "evaluated_at": now.isoformat()}
        rollout_store.record_evaluation(self.settings, rollout, evidence)
        self.metrics.publish(comparison)
        outcome = None
        try:
            if decision.action != CONTINUE:
                outcome = self._act(rollout, decision, evidence)
        except Exception as exc:  # registry or database refusing: the rollout runs on, the next evaluation retries
            outcome = f"not applied yet: {type(exc).__name__}: {exc}"
            raise
        finally:
            report = self._report(rollout, comparison, decision, now, outcome)
        summary = {"rollout_id": rollout.rollout_id, "mode": rollout.mode, "decision": decision.action,
                   "reason": decision.reason, "champion_outcomes": comparison.champion.outcomes,
                   "challenger_outcomes": comparison.challenger.outcomes, "report": report}
        if outcome is not None:
            summary["outcome"] = outcome
        return summary

    def _act(self, rollout: Rollout, decision: Decision, evidence: dict[str, Any]) -> str:
        act = rollout_store.promote if decision.action == PROMOTE else rollout_store.rollback
        try:
            act(self.settings, self.mlflow, rollout.model_name, actor=ACTOR, reason=decision.reason,
                evidence=evidence, rollout_id=rollout.rollout_id)
        except RolloutError as exc:  # ended by someone else since it was read: their decision stands
            log.warning("rollout already ended", extra={"rollout_id": rollout.rollout_id, "error": str(exc)})
            return f"not applied: {exc}"
        self.metrics.decisions.labels(decision.action).inc()
        self.metrics.clear()
        done = "promoted" if decision.action == PROMOTE else "rolled back"
        log.warning("rollout " + done, extra={"model_name": rollout.model_name, "rollout_id": rollout.rollout_id,
                                              "mode": rollout.mode, "challenger_version": rollout.challenger_version,
                                              "champion_version": rollout.champion_version,
                                              "reason": decision.reason})
        return f"{done} by the monitoring service"

    def _report(self, rollout: Rollout, comparison: Comparison, decision: Decision, now: datetime,
                outcome: str | None) -> str | None:
        try:
            return str(write_rollout_report(self.reports, rollout, comparison, decision, now, outcome))
        except OSError as exc:
            log.error("rollout report could not be written", extra={"rollout_id": rollout.rollout_id,
                                                                    "error": str(exc)})
            return None
