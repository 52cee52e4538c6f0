"""The model registry's champion and challenger, and how serving finds and loads the champion.

Versions of the registered model `driver_trip_completion` are addressed by alias only: `challenger`
is the newest registered candidate that has not (yet) won, `champion` is the one serving uses.
Never `latest` (it moves with every registration, good or bad), never stages (deprecated).

Promotion is decided on ROC AUC over the comparison holdout: the model exists to rank drivers, and
AUC measures exactly the ranking (it ignores calibration, which RMSE mixes in). A challenger takes
`champion` when there is none, or when its AUC beats the champion's by at least the margin.

A run moves aliases last, once everything else it records has been written, through an AliasWriter
that remembers each change; a run that fails undoes them, so a failed run never leaves an alias on
its version (which is tagged `promotion_decision=failed` and `failure_reason` instead).

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


def score(model, frame: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
    """Predictions for the rows of `frame`, given the columns (default: those its signature names) as float64."""
    columns = columns or input_columns(model)
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"the model needs columns {columns}, the frame lacks {missing}")
    return np.asarray(model.predict(frame[columns].astype(np.float64)), np.float64).ravel()


PROMOTED = "promoted"
KEPT_CHAMPION = "kept_champion"
COMPARISON_SKIPPED = "comparison_skipped"
FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    outcome: str  # PROMOTED, KEPT_CHAMPION or COMPARISON_SKIPPED
    reason: str

    @property
    def promote(self) -> bool:
        return self.outcome == PROMOTED


def decide(challenger_auc: float, champion_auc: float | None, margin: float) -> Decision:
    """Promote when there is no champion, or the challenger ranks better by at least `margin` AUC."""
    if champion_auc is None:
        return Decision(PROMOTED, f"no champion yet; challenger holdout ROC AUC {challenger_auc:.4f}")
    if not math.isfinite(challenger_auc):
        return Decision(KEPT_CHAMPION, "challenger holdout ROC AUC is undefined (one class only): champion kept")
    gain = challenger_auc - champion_auc
    if gain > 0 and gain >= margin:
        return Decision(PROMOTED, f"challenger holdout ROC AUC {challenger_auc:.4f} beats champion's "
                                  f"{champion_auc:.4f} by {gain:.4f} >= margin {margin}")
    return Decision(KEPT_CHAMPION, f"challenger holdout ROC AUC {challenger_auc:.4f} vs champion's "
                                   f"{champion_auc:.4f}: gain {gain:+.4f} is below the margin {margin}; champion kept")


def decide_unservable(champion_version: str, unserved: list[str], service: str, replace: bool) -> Decision:
    """The champion needs features the service no longer serves: it cannot be scored, so no AUC decides.

    Serving cannot load such a champion either, yet a challenger is never promoted without a comparison
    unless the run asks for it (replace_unservable_champion): removing a feature is a deliberate change,
    and so is replacing the model that needed it.
    """
    cause = (f"champion version {champion_version} needs feature(s) {unserved} that feature service {service!r} "
             "no longer serves, so it cannot be scored on the holdout (nor served)")
    if replace:
        return Decision(PROMOTED, f"{cause}; replaced without a comparison, as replace_unservable_champion asks")
    return Decision(COMPARISON_SKIPPED, f"{cause}: comparison skipped, champion kept. To promote this challenger, "
                                        "rerun with replace_unservable_champion=true; or serve the feature again")


class AliasWriter:
    """Moves a version's aliases and remembers each change, so that a failed run can undo them.

    A change is remembered before it is sent: a call that times out may still have been applied.
    """

    def __init__(self, mlflow_client, name: str) -> None:
        self.client, self.name = mlflow_client, name
        self.changes: list[tuple[str, str | None, str | None]] = []  # (alias, before, written; None = deleted)

    def publish(self, version: str, decision: Decision, compared_with: str | None) -> None:
        """`champion` (promoted) or `challenger` (not) to `version`; refuses when the champion moved meanwhile."""
        now = aliases(self.client, self.name)
        if now.get(CHAMPION) != compared_with:
            raise RuntimeError(
                f"the champion of {self.name!r} moved from version {compared_with or 'none'} to "
                f"{now.get(CHAMPION) or 'none'} while this run compared against it; its decision is stale: "
                "rerun the training (only one training run should promote at a time)")
        if decision.promote:
            self._set(CHAMPION, version, now.get(CHAMPION))
            if CHALLENGER in now:  # the last candidate that lost to the old champion is no candidate any more
                self._delete(CHALLENGER, now[CHALLENGER])
        else:
            self._set(CHALLENGER, version, now.get(CHALLENGER))

    def _set(self, alias: str, version: str, before: str | None) -> None:
        self.changes.append((alias, before, version))
        self.client.set_registered_model_alias(self.name, alias, version)

    def _delete(self, alias: str, before: str) -> None:
        self.changes.append((alias, before, None))
        self.client.delete_registered_model_alias(self.name, alias)

    def undo(self) -> list[str]:
        """Put back what this writer changed, newest first, where no one changed it since; what was done."""
        done = []
        for alias, before, written in reversed(self.changes):
            now = aliases(self.client, self.name).get(alias)
            if now != written:
                done.append(f"{alias}: left at {now or 'none'} (changed by someone else)")
                continue
            if before is None:
                self.client.delete_registered_model_alias(self.name, alias)
            else:
                self.client.set_registered_model_alias(self.name, alias, before)
            done.append(f"{alias}: {written or 'none'} -> {before or 'none'}")
        self.changes.clear()
        return done


def undecided_versions(mlflow_client, name: str, run_id: str) -> list[str]:
    """Versions registered by `run_id` without a recorded decision: an earlier attempt of the run was killed.

    Decision tags are written before any alias moves, so such a version holds no alias of that attempt.
    """
    versions = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return [str(v.version) for v in versions if "promotion_decision" not in (v.tags or {})]


def mark_failed(mlflow_client, name: str, version: str, step: str, error: BaseException) -> None:
    """Tag a version whose run failed after registering it: what failed, and that it was never published."""
    for key, value in {"promotion_decision": FAILED, "failed_step": step,
                       "failure_reason": f"{type(error).__name__}: {error}"[:5000]}.items():
        mlflow_client.set_model_version_tag(name, version, key, value)


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


def load_champion(name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None) -> ChampionModel:
    """Load the version alias `champion` names on `name`; NoChampion (a LookupError) when there is none yet."""
    import mlflow.pyfunc

    from mlops_platform import model_registry

    champion = model_registry.champion(model_registry.client(tracking_uri or _default_uri()), name, CHAMPION)
    # By version, not alias: the alias may move between the lookup and the load.
    model = mlflow.pyfunc.load_model(f"models:/{name}/{champion.version}")
    return ChampionModel(name, champion.version, champion.run_id, input_columns(model), model)


def _default_uri() -> str:
    from mlops_platform.settings import get_settings

    return get_settings().mlflow_tracking_uri
