"""The evaluation loop: every MONITOR_INTERVAL_SECONDS, one window of the champion's traffic is judged.

`Monitor.evaluate(now)` does one evaluation and is what the loop calls; tests call it with their own
clock. Each step that cannot run (no champion, too few predictions, no reference, Airflow down) says
why in one log line and leaves its numbers absent, and the others still run. Besides the driver
champion of prediction_log, every project's champion of model_prediction_log is judged
(monitoring_service.model_monitor), its numbers labelled by model.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mlops_platform.logs import configure_logging, stop_on_signals
from mlops_platform.model_registry import Champion, find_champion
from mlops_platform.settings import Settings, get_settings
from monitoring_service import trigger_store
from monitoring_service.airflow_runs import failed_dag_runs
from monitoring_service.drift import compute_drift
from monitoring_service.metrics import MonitoringMetrics
from monitoring_service.model_monitor import ModelMonitor
from monitoring_service.quality import live_quality
from monitoring_service.reference import NoReference, ReferenceCache
from monitoring_service.reports import drift_caption, report_folder, write_report
from monitoring_service.retrain_policy import Breach, RetrainPolicy, breaches
from monitoring_service.rollout_monitor import RolloutMonitor
from monitoring_service.window import Window, read_labeled, read_predictions

SERVICE = "monitoring-service"
TRAINING_DAG = "training"
log = logging.getLogger(SERVICE)

# Starts the training DAG; returns the run id. The DAG refuses conf keys that are not its params,
# so the reason travels in the run's note.
Trigger = Callable[[str], str]


@dataclass
class Evaluation:
    """What one evaluation found; also its log line."""

    window_end: datetime
    model_version: str | None = None
    predictions: int = 0
    labeled: int = 0
    watched_features: list[str] | None = None  # the champion's features whose drift was computed
    drift_share: float | None = None
    live_rmse: float | None = None
    report: str | None = None
    triggered: dict | None = None
    rollout: dict | None = None  # the running rollout's decision, and what was done about it
    models: dict | None = None  # each project's window of model_prediction_log (model_monitor.py)
    skipped: list[str] = field(default_factory=list)

    def as_log(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if value not in (None, [])}


def trigger_note(breach: Breach, version: str | None) -> str:
    return (f"Started by the monitoring service: {breach.metric} = {breach.value:.4f} above {breach.threshold:g} "
            f"(reason {breach.reason}, model version {version or 'unknown'}).")


class Monitor:
    def __init__(self, settings: Settings, metrics: MonitoringMetrics, mlflow_client=None, airflow_client=None,
                 trigger: Trigger | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.mlflow = mlflow_client
        self.airflow = airflow_client
        self.trigger = trigger or self._trigger_training
        self.references = ReferenceCache(mlflow_client)
        self._watching: tuple[str, tuple[str, ...]] | None = None  # (version, features) last announced in the log
        self.models = ModelMonitor(settings, metrics.models, mlflow_client)
        self.rollouts = RolloutMonitor(settings, metrics.rollout, mlflow_client, report_folder(settings))
        self.policy = RetrainPolicy(timedelta(minutes=settings.retrain_sustain_minutes),
                                    timedelta(minutes=settings.retrain_cooldown_minutes))

    def start(self) -> None:
        """Tables exist (PostgreSQL answers: ready) and the cool-down resumes from the last recorded trigger."""
        from mlops_platform import rollout_store
        from model_serving.prediction_store import ensure_schema

        ensure_schema(self.settings)
        rollout_store.ensure_schema(self.settings)
        trigger_store.ensure_table(self.settings)
        self.policy.last_trigger = trigger_store.last_trigger_time(self.settings)
        self.metrics.ready.set(1)
        if self.policy.last_trigger is not None:
            log.info("cool-down resumes from the last recorded trigger",
                     extra={"last_trigger": self.policy.last_trigger.isoformat()})

    # ---- one evaluation -----------------------------------------------------------------
    def evaluate(self, now: datetime | None = None) -> Evaluation:
        now = now or datetime.now(UTC)
        result = Evaluation(now)
        self._rollout(now, result)  # first: a promotion changes the champion the window below judges
        champion = self._champion(result)
        drift_share = live_rmse = None
        if champion is not None:
            drift_share, live_rmse = self._window(champion, Window.ending(now, self.settings.monitor_window_minutes),
                                                  result)
        else:
            self._no_window()
        self._maybe_retrain(now, champion, drift_share, live_rmse, result)
        self._models(now, result)
        self._airflow_failures(now, result)
        self.metrics.last_evaluation.set(now.timestamp())
        log.info("window evaluated", extra=result.as_log())
        return result

    def _rollout(self, now: datetime, result: Evaluation) -> None:
        try:
            result.rollout = self.rollouts.evaluate(now)
        except Exception as exc:  # PostgreSQL or MLflow refusing: the rollout runs on, the next evaluation retries
            self.metrics.evaluation_errors.labels("rollout").inc()
            self.metrics.rollout.clear_numbers()
            result.skipped.append(f"rollout: {type(exc).__name__}: {exc}")

    def _models(self, now: datetime, result: Evaluation) -> None:
        try:
            result.models = self.models.evaluate(Window.ending(now, self.settings.monitor_window_minutes))
        except Exception as exc:  # PostgreSQL refusing: the driver numbers above still stand
            self.metrics.evaluation_errors.labels("models").inc()
            result.skipped.append(f"models: {type(exc).__name__}: {exc}")

    def _champion(self, result: Evaluation) -> Champion | None:
        name, alias = self.settings.model_name, self.settings.model_alias
        try:
            champion = find_champion(self.mlflow, name, alias)
        except Exception as exc:  # MLflow down or refusing: nothing to evaluate against
            self.metrics.evaluation_errors.labels("champion").inc()
            result.skipped.append(f"champion: MLflow did not answer: {type(exc).__name__}: {exc}")
            return None
        if champion is None:
            result.skipped.append(f"champion: no version of model {name!r} has alias {alias!r}")
        else:
            result.model_version = champion.version
        return champion

    def _no_window(self) -> None:
        self.metrics.window_has_data.set(0)
        self.metrics.window_has_labels.set(0)
        for clear in (self.metrics.clear_counts, self.metrics.clear_drift, self.metrics.clear_quality):
            clear()

    def _window(self, champion: Champion, window: Window, result: Evaluation) -> tuple[float | None, float | None]:
        from mlops_platform.postgres import connect

        try:
            with connect(self.settings) as conn, conn.cursor() as cur:
                current = read_predictions(cur, window, champion.name, champion.version)
                labeled = read_labeled(cur, window, champion.name, champion.version)
        except Exception:
            self.metrics.ready.set(0)
            self._no_window()
            raise
        self.metrics.ready.set(1)
        result.predictions, result.labeled = len(current), len(labeled)
        self.metrics.publish_counts(champion.version, len(current), len(labeled))
        minimum = self.settings.monitor_min_rows
        if len(current) < minimum:
            self._no_window()
            self.metrics.publish_counts(champion.version, len(current), len(labeled))
            result.skipped.append(f"window: {len(current)} predictions of version {champion.version}, "
                                  f"expected at least MONITOR_MIN_ROWS={minimum}: no numbers published")
            return None, None
        self.metrics.window_has_data.set(1)
        return self._drift(champion, current, window, result), self._quality(champion, labeled, result)

    def _drift(self, champion: Champion, current, window: Window, result: Evaluation) -> float | None:
        try:
            reference = self.references.get(champion.run_id)
            drift = compute_drift(reference, current)
        except NoReference as exc:
            self.metrics.clear_drift()
            result.skipped.append(f"drift: version {champion.version}: {exc}")
            return None
        except Exception as exc:  # MLflow down, a malformed reference: drift unknown, the rest still runs
            self.metrics.clear_drift()
            self.metrics.evaluation_errors.labels("drift").inc()
            result.skipped.append(f"drift: {type(exc).__name__}: {exc}")
            return None
        self.metrics.publish_drift(champion.version, drift)
        result.watched_features, result.drift_share = list(drift.features), drift.share
        self._announce(champion, drift.features, drift.not_watched)
        caption = drift_caption(champion.name, champion.version, drift.features, drift.not_watched)
        try:
            result.report = str(write_report(drift.snapshot, report_folder(self.settings), window.end,
                                             caption=caption))
        except OSError as exc:
            self.metrics.evaluation_errors.labels("report").inc()
            result.skipped.append(f"report: could not be written: {exc}")
        return drift.share

    def _announce(self, champion: Champion, features: tuple[str, ...], not_watched: tuple[str, ...]) -> None:
        """One log line whenever the watched features change (a new champion, or one on other features)."""
        if self._watching == (champion.version, features):
            return
        self._watching = (champion.version, features)
        log.info("drift watches the champion's features", extra={
            "model_version": champion.version, "watched_features": list(features),
            "not_watched": list(not_watched), "source": "the features of its drift reference"})

    def _quality(self, champion: Champion, labeled, result: Evaluation) -> float | None:
        minimum = self.settings.monitor_min_rows
        if len(labeled) < minimum:
            self.metrics.window_has_labels.set(0)
            self.metrics.clear_quality()
            result.skipped.append(f"live error: {len(labeled)} labelled predictions of version {champion.version}, "
                                  f"expected at least MONITOR_MIN_ROWS={minimum}: no numbers published")
            return None
        quality = live_quality(labeled["score"].to_numpy(), labeled["trip_completed"].to_numpy())
        self.metrics.window_has_labels.set(1)
        self.metrics.publish_quality(champion.version, quality)
        result.live_rmse = quality.rmse
        return quality.rmse

    # ---- retraining ---------------------------------------------------------------------
    def _maybe_retrain(self, now: datetime, champion: Champion | None, drift_share: float | None,
                       live_rmse: float | None, result: Evaluation) -> None:
        seen = breaches(drift_share, live_rmse, self.settings.drift_share_threshold, self.settings.live_rmse_threshold)
        breach = self.policy.decide(now, seen)
        if breach is None:
            return
        version = champion.version if champion else None
        try:
            run_id = self.trigger(trigger_note(breach, version))
        except Exception as exc:  # Airflow down: the breach still holds, so the next evaluation tries again
            self.metrics.evaluation_errors.labels("retrain").inc()
            log.error("retraining trigger failed; retrying at the next evaluation",
                      extra={"reason": breach.reason, "error": f"{type(exc).__name__}: {exc}"})
            return
        self.policy.triggered(now)
        record = trigger_store.TriggerRecord(now, breach.reason, breach.metric, breach.value, breach.threshold,
                                             version, run_id)
        try:
            trigger_store.record_trigger(self.settings, record)
        except Exception as exc:  # the run is started; only the record (and the cool-down after restart) is lost
            self.metrics.evaluation_errors.labels("retrain_record").inc()
            log.error("training run started but not recorded", extra={"dag_run_id": run_id, "error": str(exc)})
        self.metrics.retraining.labels(breach.reason).inc()
        result.triggered = {"reason": breach.reason, "metric": breach.metric, "value": breach.value,
                            "threshold": breach.threshold, "dag_run_id": run_id}
        log.warning("retraining triggered", extra={**result.triggered, "model_version": version,
                                                    "cooldown_minutes": self.settings.retrain_cooldown_minutes})

    def _trigger_training(self, note: str) -> str:
        return self.airflow.trigger(TRAINING_DAG, conf={}, note=note)

    def _airflow_failures(self, now: datetime, result: Evaluation) -> None:
        if self.airflow is None:
            return
        try:
            counts = failed_dag_runs(self.airflow, now)
        except Exception as exc:  # Airflow down: the count is unknown, not zero
            self.metrics.failed_dag_runs.clear()
            result.skipped.append(f"airflow: failed runs unknown: {type(exc).__name__}: {exc}")
            return
        self.metrics.publish_failed_runs(counts)


# ---- the process ----------------------------------------------------------------------------
def run_loop(monitor: Monitor, interval: float, stop: threading.Event) -> None:
    """Evaluate now and then every `interval` seconds until `stop`; a failed evaluation is logged and retried."""
    while not stop.is_set():
        began = time.monotonic()
        try:
            monitor.evaluate()
        except Exception as exc:
            monitor.metrics.evaluation_errors.labels("window").inc()
            log.error("evaluation failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        stop.wait(max(0.0, interval - (time.monotonic() - began)))


def main() -> int:
    from mlops_platform import model_registry
    from mlops_platform.airflow_client import AirflowClient
    from monitoring_service.http_server import serve

    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    stop = stop_on_signals(log)
    metrics = MonitoringMetrics()
    metrics.ready.set(0)
    folder = report_folder(settings)
    server = serve(settings.listen_address, settings.monitoring_service_port, folder)
    log.info("serving", extra={"metrics": f"{settings.monitoring_service_url}/metrics",
                               "reports": f"{settings.monitoring_service_url}/reports/",
                               "settings": json.dumps({"interval_s": settings.monitor_interval_seconds,
                                                       "window_min": settings.monitor_window_minutes,
                                                       "min_rows": settings.monitor_min_rows,
                                                       "sustain_min": settings.retrain_sustain_minutes,
                                                       "cooldown_min": settings.retrain_cooldown_minutes})})
    monitor = Monitor(settings, metrics, model_registry.polling_client(settings.mlflow_tracking_uri),  # loop retries
                      AirflowClient.from_settings(settings))
    try:
        while not stop.is_set():
            try:
                monitor.start()
                break
            except Exception as exc:  # PostgreSQL not up yet
                log.warning("not started yet", extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": 5})
                stop.wait(5)
        run_loop(monitor, settings.monitor_interval_seconds, stop)
    finally:
        server.shutdown()
    log.info("stopped cleanly", extra={"exit_code": 0})
    return 0
