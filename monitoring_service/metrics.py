"""The service's Prometheus metrics; names and labels are the ones the alert rules and dashboards read
(monitoring/prometheus/rules/model_monitoring.yml, monitoring/grafana/dashboards/).

A number that could not be computed for the last window is absent, never a stale or made-up value:
each publish replaces the labelled series, each clear removes them.
"""

from __future__ import annotations

import warnings

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from monitoring_service.drift import DriftResult
from monitoring_service.model_metrics import ModelMetrics
from monitoring_service.quality import LiveQuality
from monitoring_service.retrain_policy import REASONS
from monitoring_service.rollout_metrics import RolloutMetrics

PREFIX = "monitoring_"

# Feast, imported through MLflow's plugins, sets PROMETHEUS_MULTIPROC_DIR for its own use after our metrics
# exist; they stay in-process (the value class is chosen at import), so clearing works and the warning is noise.
warnings.filterwarnings("ignore", message="Clearing labels has not been implemented in multi-process mode")
READY = PREFIX + "ready"
# The steps of an evaluation that can fail on their own; each is exported at 0 from the start, so a
# dashboard shows "no errors" rather than "no data".
EVALUATION_STEPS = ("window", "champion", "drift", "report", "retrain", "retrain_record", "rollout", "models")


class MonitoringMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, text, list(labels), registry=registry)

        self.ready = gauge("ready", "1 once the last evaluation could read the prediction log.")
        self.window_has_data = gauge("window_has_data", "1 when the last window had enough predictions to "
                                     "evaluate (MONITOR_MIN_ROWS).")
        self.window_has_labels = gauge("window_has_labels", "1 when the last window had enough labelled "
                                       "predictions to compute live error.")
        self.window_rows = gauge("window_predictions", "Predictions of the champion in the last window.",
                                 ("model_version",))
        self.window_labeled = gauge("window_labeled_predictions", "Labelled predictions of the champion in the "
                                    "last window.", ("model_version",))
        self.drift_share = gauge("drift_share", "Share of the champion's features whose distribution drifted from "
                                 "the training reference.", ("model_version",))
        self.watched_feature = gauge("drift_watched_feature", "1 for each feature whose drift the last window "
                                     "watched: the champion's own features, those of its drift reference.",
                                     ("feature", "model_version"))
        self.feature_drift = gauge("feature_drift_score", "Drift score (normed Wasserstein distance) of one feature "
                                   "or of the score against the training reference.", ("feature", "model_version"))
        self.feature_drifted = gauge("feature_drifted", "1 when the feature's drift score reached the threshold.",
                                     ("feature", "model_version"))
        self.live_rmse = gauge("live_rmse", "RMSE of the scores against ground truth.", ("model_version",))
        self.live_mae = gauge("live_mae", "MAE of the scores against ground truth.", ("model_version",))
        self.live_roc_auc = gauge("live_roc_auc", "ROC AUC of the scores against ground truth (both outcomes "
                                  "present).", ("model_version",))
        self.failed_dag_runs = gauge("airflow_failed_dag_runs", "Failed runs in the last 24 hours, per DAG.",
                                     ("dag_id",))
        self.last_evaluation = gauge("last_evaluation_timestamp_seconds", "Unix time of the last finished "
                                     "evaluation.")
        self.retraining = Counter(PREFIX + "retraining_triggered", "Training runs started by the monitoring "
                                  "service, by reason.", ["reason"], registry=registry)
        self.evaluation_errors = Counter(PREFIX + "evaluation_errors", "Evaluation steps that failed, by step.",
                                         ["step"], registry=registry)
        self.rollout = RolloutMetrics(registry)  # the running rollout's comparison (rollout_metrics.py)
        self.models = ModelMetrics(registry)  # every project's champion, with a `model` label (model_metrics.py)
        for reason in REASONS:
            self.retraining.labels(reason)
        for step in EVALUATION_STEPS:
            self.evaluation_errors.labels(step)

    def publish_counts(self, version: str, predictions: int, labeled: int) -> None:
        self.clear_counts()
        self.window_rows.labels(version).set(predictions)
        self.window_labeled.labels(version).set(labeled)

    def clear_counts(self) -> None:
        self.window_rows.clear()
        self.window_labeled.clear()

    def publish_drift(self, version: str, result: DriftResult) -> None:
        self.clear_drift()
        self.drift_share.labels(version).set(result.share)
        for feature in result.features:
            self.watched_feature.labels(feature, version).set(1)
        for column, score in result.scores.items():  # the watched features and the score
            self.feature_drift.labels(column, version).set(score)
            self.feature_drifted.labels(column, version).set(float(result.drifted[column]))

    def clear_drift(self) -> None:
        for gauge in (self.drift_share, self.watched_feature, self.feature_drift, self.feature_drifted):
            gauge.clear()

    def publish_quality(self, version: str, quality: LiveQuality) -> None:
        self.clear_quality()
        self.live_rmse.labels(version).set(quality.rmse)
        self.live_mae.labels(version).set(quality.mae)
        if quality.roc_auc is not None:
            self.live_roc_auc.labels(version).set(quality.roc_auc)

    def clear_quality(self) -> None:
        for gauge in (self.live_rmse, self.live_mae, self.live_roc_auc):
            gauge.clear()

    def publish_failed_runs(self, counts: dict[str, int]) -> None:
        self.failed_dag_runs.clear()
        for dag_id, count in counts.items():
            self.failed_dag_runs.labels(dag_id).set(count)
