"""What a project's champion served in the window, from model_prediction_log, and which of it has feedback.

The rows of /models/{name}/predict (and of any project logged the same way): those answered by the
champion variant without error. Their features are the logged jsonb object, one column per feature of
the project; the labelled rows are those whose (model_name, request_id, entity_key) has a row in
model_ground_truth.
"""

from __future__ import annotations

import pandas as pd

from mlops_platform.projects import Project
from model_serving.prediction_store import MODEL_GROUND_TRUTH_TABLE, MODEL_PREDICTIONS_TABLE
from monitoring_service.window import Window

CHAMPION_VARIANT = "champion"
SERVED_ROWS = ("p.model_name = %s and p.variant = %s and p.error is null "
               "and p.predicted_at > %s and p.predicted_at <= %s")


def served_rows_args(project: Project, window: Window) -> tuple:
    return project.model_name, CHAMPION_VARIANT, window.start, window.end


def read_model_predictions(cur, window: Window, project: Project) -> pd.DataFrame:
    """model_version, prediction and one float column per feature of each champion answer in the window."""
    cur.execute(f"select p.model_version, p.prediction, p.features from {MODEL_PREDICTIONS_TABLE} p "
                f"where {SERVED_ROWS}", served_rows_args(project, window))
    rows = cur.fetchall()
    features = pd.DataFrame([row[2] for row in rows], columns=list(project.features), dtype="float64")
    frame = pd.DataFrame({"model_version": [row[0] for row in rows], "prediction": [row[1] for row in rows]})
    return pd.concat([frame, features], axis=1)


def read_model_labeled(cur, window: Window, project: Project) -> pd.DataFrame:
    """model_version, prediction and label of each champion answer in the window whose label came back."""
    cur.execute(f"select p.model_version, p.prediction, g.label from {MODEL_PREDICTIONS_TABLE} p "
                f"join {MODEL_GROUND_TRUTH_TABLE} g using (model_name, request_id, entity_key) "
                f"where {SERVED_ROWS} and p.prediction is not null", served_rows_args(project, window))
    return pd.DataFrame(cur.fetchall(), columns=["model_version", "prediction", "label"])


def main_version(frame: pd.DataFrame) -> str:
    """The version that served most of the window (after a promotion, the window holds two)."""
    return str(frame["model_version"].value_counts().index[0]) if len(frame) else "none"
