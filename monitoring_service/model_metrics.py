"""The per-model gauges: drift and live quality of every project's champion, each with a `model` label.

Read by monitoring/prometheus/rules/model_monitoring.yml (group `projects`) and the Grafana dashboard
model-monitoring.json. The driver monitoring's gauges (monitoring_service.metrics) keep their names and
labels: they judge the driver `/predict` traffic of prediction_log, these judge model_prediction_log.
As there, a number that could not be computed for the last window is absent, never stale.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from monitoring_service.class_quality import ClassQuality
from monitoring_service.model_drift import ModelDrift
from monitoring_service.quality import LiveQuality

PREFIX = "monitoring_model_"


class ModelMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, text, ["model", *labels], registry=registry)

        self.predictions = gauge("window_predictions", "Answers of the model's champion in the last window.",
                                 ("model_version",))
        self.labeled = gauge("window_labeled_predictions", "Answers of the champion in the last window whose label "
                             "came back.", ("model_version",))
        self.feature_drift = gauge("feature_drift_score", "Drift score (normed Wasserstein distance) of one feature "
                                   "against the champion's training reference.", ("feature",))
        self.feature_drifted = gauge("feature_drifted", "1 when the feature's drift score reached the threshold.",
                                     ("feature",))
        self.drift_share = gauge("drift_share", "Share of the model's features that drifted.")
        self.drift_detected = gauge("drift_detected", "1 when the model's features drifted (enough of them: "
                                    "monitoring_service/model_drift.py), else 0.")
        self.accuracy = gauge("accuracy", "Share of the labelled answers that were right (classifiers).")
        self.macro_precision = gauge("macro_precision", "Mean of the per-class precisions (classifiers).")
        self.macro_recall = gauge("macro_recall", "Mean of the per-class recalls (classifiers).")
        self.macro_f1 = gauge("macro_f1", "Mean of the per-class F1 scores (classifiers).")
        self.class_precision = gauge("class_precision", "Precision of one class (classifiers).", ("class",))
        self.class_recall = gauge("class_recall", "Recall of one class (classifiers).", ("class",))
        self.class_f1 = gauge("class_f1", "F1 score of one class (classifiers).", ("class",))
        self.class_labeled = gauge("class_labeled_outcomes", "Labelled outcomes of one true class in the last "
                                   "window (classifiers).", ("class",))
        self.live_rmse = gauge("live_rmse", "RMSE of the scores against the 0/1 labels (score models).")
        self.live_mae = gauge("live_mae", "MAE of the scores against the 0/1 labels (score models).")

    def _drop(self, gauges: tuple[Gauge, ...], model: str) -> None:
        """Remove every series of `model` from the gauges (other models keep theirs)."""
        for gauge in gauges:
            for labels in list(gauge._metrics):  # noqa: SLF001 - prometheus_client has no public way to list them
                if labels[0] == model:
                    gauge.remove(*labels)

    def publish_counts(self, model: str, version: str, predictions: int, labeled: int) -> None:
        self._drop((self.predictions, self.labeled), model)
        self.predictions.labels(model, version).set(predictions)
        self.labeled.labels(model, version).set(labeled)

    def publish_drift(self, model: str, drift: ModelDrift) -> None:
        self.clear_drift(model)
        for feature, score in drift.scores.items():
            self.feature_drift.labels(model, feature).set(score)
            self.feature_drifted.labels(model, feature).set(float(drift.drifted[feature]))
        self.drift_share.labels(model).set(drift.share)
        self.drift_detected.labels(model).set(float(drift.detected))

    def clear_drift(self, model: str) -> None:
        self._drop((self.feature_drift, self.feature_drifted, self.drift_share, self.drift_detected), model)

    def publish_classes(self, model: str, quality: ClassQuality) -> None:
        self.clear_quality(model)
        self.accuracy.labels(model).set(quality.accuracy)
        self.macro_precision.labels(model).set(quality.macro_precision)
        self.macro_recall.labels(model).set(quality.macro_recall)
        self.macro_f1.labels(model).set(quality.macro_f1)
        for name in quality.precision:
            self.class_precision.labels(model, name).set(quality.precision[name])
            self.class_recall.labels(model, name).set(quality.recall[name])
            self.class_f1.labels(model, name).set(quality.f1[name])
            self.class_labeled.labels(model, name).set(quality.support[name])

    def publish_scores(self, model: str, quality: LiveQuality) -> None:
        self.clear_quality(model)
        self.live_rmse.labels(model).set(quality.rmse)
        self.live_mae.labels(model).set(quality.mae)

    def clear_quality(self, model: str) -> None:
        self._drop((self.accuracy, self.macro_precision, self.macro_recall, self.macro_f1, self.class_precision,
                    self.class_recall, self.class_f1, self.class_labeled, self.live_rmse, self.live_mae), model)

    def clear(self, model: str) -> None:
        self._drop((self.predictions, self.labeled), model)
        self.clear_drift(model)
        self.clear_quality(model)
