"""The model registry's champion and challenger, and how serving finds and loads the champion.

Versions of the registered model `driver_trip_completion` are addressed by alias only: `challenger`
is the newest registered candidate that has not (yet) won, `champion` is the one serving uses.
Never `latest` (it moves with every registration, good or bad), never stages (deprecated).

Promotion is decided on ROC AUC over the comparison holdout: the model exists to rank drivers, and
AUC measures exactly the ranking (it ignores calibration, which RMSE mixes in). A challenger takes
`champion` when there is none, or when its AUC beats the champion's by at least the margin.

Serving calls:

    from training_pipeline.registry import load_champion
    champion = load_champion()             # ChampionModel: .model, .version, .features, .run_id
    champion.predict(frame)                # frame: one column per feature; extra columns are ignored
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_MODEL_NAME = "driver_trip_completion"
CHAMPION = "champion"
CHALLENGER = "challenger"
DECISION_METRIC = "roc_auc"


def model_uri(name: str, alias: str) -> str:
    return f"models:/{name}@{alias}"


def aliases(mlflow_client, name: str) -> dict[str, str]:
    """alias -> version of a registered model ({} when it does not exist yet).

    Read from the registered model itself: search_model_versions returns empty alias lists.
    """
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def register(mlflow_client, name: str, source_uri: str, run_id: str, model_id: str | None,
             tags: dict[str, str]) -> str:
    """A new version of `name` from a logged model; returns its version number."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(
            name, description="Ranks drivers by how likely they are to complete a trip (ElasticNet score).")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = mlflow_client.create_model_version(name, source_uri, run_id=run_id, tags=tags, model_id=model_id)
    return str(version.version)


def input_columns(model) -> list[str]:
    """The model's input columns in order, from its logged signature."""
    schema = model.metadata.get_input_schema()
    if schema is None:
        raise ValueError("the model was logged without a signature: its input columns are unknown")
    return schema.input_names()


def score(model, frame: pd.DataFrame) -> np.ndarray:
    """Predictions for the rows of `frame`, given the columns and dtypes the model's signature names."""
    columns = input_columns(model)
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"the model needs columns {columns}, the frame lacks {missing}")
    return np.asarray(model.predict(frame[columns].astype(np.float64)), np.float64).ravel()


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(challenger_auc: float, champion_auc: float | None, margin: float) -> Decision:
    """Promote when there is no champion, or the challenger ranks better by at least `margin` AUC."""
    if champion_auc is None:
        return Decision(True, f"no champion yet; challenger holdout ROC AUC {challenger_auc:.4f}")
    if not math.isfinite(challenger_auc):
        return Decision(False, "challenger holdout ROC AUC is undefined (one class only): champion kept")
    gain = challenger_auc - champion_auc
    if gain > 0 and gain >= margin:
        return Decision(True, f"challenger holdout ROC AUC {challenger_auc:.4f} beats champion's "
                              f"{champion_auc:.4f} by {gain:.4f} >= margin {margin}")
    return Decision(False, f"challenger holdout ROC AUC {challenger_auc:.4f} vs champion's {champion_auc:.4f}: "
                           f"gain {gain:+.4f} is below the margin {margin}; champion kept")


@dataclass(frozen=True)
class ChampionModel:
    """The current champion, loaded: what serving needs to predict and to report what it serves."""

    name: str
    version: str
    run_id: str
    features: list[str]
    model: object  # mlflow.pyfunc.PyFuncModel

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Scores for the rows of `frame`; missing feature values may be NaN (they are imputed)."""
        return score(self.model, frame)


def champion_version(name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None):
    """The ModelVersion holding alias `champion`, or None when no model has been promoted yet."""
    from training_pipeline.tracking import client

    mlflow_client = client(tracking_uri or _default_uri())
    version = aliases(mlflow_client, name).get(CHAMPION)
    return mlflow_client.get_model_version(name, version) if version else None


def load_champion(name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None) -> ChampionModel:
    """Load `models:/<name>@champion`; raises LookupError when there is no champion yet."""
    import mlflow.pyfunc

    version = champion_version(name, tracking_uri)
    if version is None:
        raise LookupError(f"registered model {name!r} has no '{CHAMPION}' alias yet: run the training DAG "
                          "(`airflow dags trigger training`) or `python -m training_pipeline` first")
    # By version, not alias: the alias may move between the lookup and the load.
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    return ChampionModel(name, str(version.version), version.run_id, input_columns(model), model)


def _default_uri() -> str:
    from mlops_platform.settings import get_settings

    return get_settings().mlflow_tracking_uri
