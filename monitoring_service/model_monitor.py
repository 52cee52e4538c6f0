"""Every project's champion judged on its window of model_prediction_log: feature drift and live quality.

Called by the evaluation loop (monitoring_service.service) each interval, for each project of
mlops_platform.projects.PROJECTS that answered in the window; a project with no answers has no
series. Each step that cannot run (too few rows, no reference, labels outside the classes) says why
in the project's entry of the evaluation's log line and leaves its numbers absent.
"""

from __future__ import annotations

import logging

from mlops_platform.model_registry import find_champion
from mlops_platform.projects import PROJECTS, Project
from mlops_platform.settings import Settings
from monitoring_service.class_quality import class_quality
from monitoring_service.model_drift import model_drift
from monitoring_service.model_metrics import ModelMetrics
from monitoring_service.model_reference import ModelReferences
from monitoring_service.model_window import main_version, read_model_labeled, read_model_predictions
from monitoring_service.quality import live_quality
from monitoring_service.window import Window

log = logging.getLogger("monitoring-service")


class ModelMonitor:
    def __init__(self, settings: Settings, metrics: ModelMetrics, mlflow_client=None,
                 projects: dict[str, Project] = PROJECTS) -> None:
        self.settings = settings
        self.metrics = metrics
        self.mlflow = mlflow_client
        self.projects = projects
        self.references = ModelReferences(settings, mlflow_client)

    def evaluate(self, window: Window) -> dict[str, dict]:
        """model name -> what its window showed (counts, drift, quality, skipped steps); only models with rows."""
        from mlops_platform.postgres import connect

        found = {}
        with connect(self.settings) as conn, conn.cursor() as cur:
            for project in self.projects.values():
                current = read_model_predictions(cur, window, project)
                labeled = read_model_labeled(cur, window, project) if len(current) else current.iloc[:0]
                found[project.model_name] = (project, current, labeled)
        results = {}
        for model, (project, current, labeled) in found.items():
            if not len(current):
                self.metrics.clear(model)
                continue
            results[model] = self._judge(project, current, labeled)
        return results

    def _judge(self, project: Project, current, labeled) -> dict:
        model, minimum = project.model_name, self.settings.monitor_min_rows
        version = main_version(current)
        result: dict = {"model_version": version, "predictions": len(current), "labeled": len(labeled), "skipped": []}
        self.metrics.publish_counts(model, version, len(current), len(labeled))
        if len(current) < minimum:
            self.metrics.clear_drift(model)
            self.metrics.clear_quality(model)
            result["skipped"].append(f"{len(current)} answers, expected at least MONITOR_MIN_ROWS={minimum}")
            return result
        self._drift(project, current, result)
        if len(labeled) < minimum:
            self.metrics.clear_quality(model)
            result["skipped"].append(f"quality: {len(labeled)} labelled answers, expected at least "
                                     f"MONITOR_MIN_ROWS={minimum}")
        else:
            self._quality(project, labeled, result)
        return result

    def _drift(self, project: Project, current, result: dict) -> None:
        try:
            reference = self.references.get(project, self._champion_run(project))
            drift = model_drift(reference.frame, current, project.features, self.settings.drift_share_threshold)
        except Exception as exc:  # no reference yet, PostgreSQL or MLflow refusing: drift unknown, quality still runs
            self.metrics.clear_drift(project.model_name)
            result["skipped"].append(f"drift: {type(exc).__name__}: {exc}")
            return
        self.metrics.publish_drift(project.model_name, drift)
        result.update(reference=reference.source, drift_share=round(drift.share, 4), drift_detected=drift.detected,
                      drifted_features=drift.drifted_features)

    def _champion_run(self, project: Project) -> str | None:
        """The run of the champion, whose reference artifact comes first; None when MLflow has none or is down."""
        try:
            champion = find_champion(self.mlflow, project.model_name, self.settings.model_alias)
        except Exception:  # MLflow down: the offline reference still serves
            return None
        return champion.run_id if champion else None

    def _quality(self, project: Project, labeled, result: dict) -> None:
        model = project.model_name
        try:
            if project.is_classifier:
                quality = class_quality(labeled["prediction"], labeled["label"], project.classes)
                self.metrics.publish_classes(model, quality)
                result.update(accuracy=round(quality.accuracy, 4), macro_f1=round(quality.macro_f1, 4))
            else:
                scores = labeled["prediction"].astype("float64").to_numpy()
                quality = live_quality(scores, labeled["label"].astype("float64").to_numpy())
                self.metrics.publish_scores(model, quality)
                result.update(live_rmse=round(quality.rmse, 4))
        except ValueError as exc:  # labels outside the classes, scores that are not numbers
            self.metrics.clear_quality(model)
            result["skipped"].append(f"quality: {exc}")
