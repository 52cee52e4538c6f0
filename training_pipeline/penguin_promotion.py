"""The last step of a penguin training run: register the final model, compare it with the champion on the
same holdout rows, then move the aliases (`@challenger` always, `@champion` when not worse)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from feast_repo import penguin_features as contract
from mlops_platform.projects import PENGUINS
from mlops_platform.settings import Settings, get_settings
from training_pipeline import classification_metrics, registry, tracking
from training_pipeline.config import ConfigError
from training_pipeline.penguin_flow import PenguinRun, fingerprint, load_training_set
from training_pipeline.run_context import quiet_model_io, recorded

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
class NewestAliases(registry.AliasWriter):
    """`challenger` names the newest trained version; `champion` moves to it too when it wins."""

    def publish_newest(self, version: str, promote: bool, compared_with: str | None) -> None:
        now = registry.aliases(self.client, self.name)
        if now.get(registry.CHAMPION) != compared_with:
            raise RuntimeError(
                f"the champion of {self.name!r} moved from version {compared_with or 'none'} to "
                f"{now.get(registry.CHAMPION) or 'none'} while this run compared against it; its decision is "
                "stale: rerun the training (only one training run should promote at a time)")
        self._set(registry.CHALLENGER, version, now.get(registry.CHALLENGER))
        if promote:
            self._set(registry.CHAMPION, version, compared_with)


def decide(challenger_f1: float, champion_f1: float | None) -> registry.Decision:
    """Promote when there is no champion, or the challenger's holdout macro F1 is not worse than its."""
    if champion_f1 is None:
        return registry.Decision(registry.PROMOTED, f"no champion yet; challenger holdout macro F1 {challenger_f1:.4f}")
    if challenger_f1 >= champion_f1:
        return registry.Decision(registry.PROMOTED, f"challenger holdout macro F1 {challenger_f1:.4f} is not worse "
                                                    f"than the champion's {champion_f1:.4f} on the same holdout")
    return registry.Decision(registry.KEPT_CHAMPION, f"challenger holdout macro F1 {challenger_f1:.4f} is below the "
                                                     f"champion's {champion_f1:.4f} on the same holdout; champion kept")


def model_features(model) -> list[str]:
    """A logged model's input columns: its column signature's names, or for a tensor signature (MLflow's Keras
    flavour) the `features` its metadata lists."""
    schema = model.metadata.get_input_schema()
    if schema is None:
        raise ValueError("the model was logged without a signature: its input columns are unknown")
    if schema.is_tensor_spec():
        named = (model.metadata.metadata or {}).get("features")
        if not named:
            raise ValueError("the model has a tensor signature and no metadata['features']: its columns are unknown")
        return list(named)
    return schema.input_names()


def champion_holdout_metrics(model_uri: str, holdout: pd.DataFrame) -> dict[str, float]:
    """The champion's metrics on this run's holdout, through pyfunc and its own input columns."""
    import mlflow.pyfunc

    from training_pipeline import penguin_model

    with quiet_model_io():
        champion = mlflow.pyfunc.load_model(model_uri)
    columns = model_features(champion)
    unknown = [c for c in columns if c not in holdout]
    if unknown:
        raise ConfigError(f"the champion {model_uri} needs columns {unknown} that the penguin training set does "
                          f"not have (it has {list(contract.FEATURE_NAMES)}): it cannot be compared")
    probabilities = np.asarray(champion.predict(holdout[columns].astype(np.float32)), np.float64)
    return classification_metrics.classification_metrics(penguin_model.targets(holdout),
                                                         probabilities.argmax(axis=1), contract.CLASSES)


def register(mlflow_client, run: PenguinRun, name: str, frame: pd.DataFrame, summary: Mapping[str, float],
             final: Mapping[str, Any]) -> str:
    """A new version of `name` from the final model, tagged with its scores; returns its number.

    Versions an earlier, killed attempt of this run registered without deciding are tagged failed first.
    """
    from mlflow.exceptions import MlflowException

    for stale in registry.undecided_versions(mlflow_client, name, run.parent_run_id):
        registry.mark_failed(mlflow_client, name, stale, "register_and_promote", RuntimeError(
            "the attempt that registered this version stopped before deciding; a later attempt registered "
            "another version"))
    try:
        mlflow_client.create_registered_model(name, tags={"project": PENGUINS.name}, description=PENGUINS.description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    metrics = final["holdout_metrics"]
    return str(mlflow_client.create_model_version(name, final["model_uri"], run_id=run.parent_run_id, tags={
        "project": PENGUINS.name, "holdout_accuracy": f"{metrics['accuracy']:.6f}",
        "holdout_macro_f1": f"{metrics['macro_f1']:.6f}", "majority_baseline": f"{final['majority_baseline']:.6f}",
        **{k: f"{v:.6f}" for k, v in summary.items()}, "training_set_sha256": fingerprint(frame),
        "features": ",".join(contract.FEATURE_NAMES), "git_commit": run.git_commit, "run_name": run.run_name},
        model_id=final.get("model_id")).version)


def register_and_promote(context: Mapping[str, Any], summary: Mapping[str, float], final: Mapping[str, Any],
                         settings: Settings | None = None) -> dict[str, Any]:
    """Register the final model, set @challenger to it, and @champion when it is not worse on the holdout.

    Aliases move last; a failure after registration undoes this run's alias changes, tags the version
    `promotion_decision=failed` and marks the run FAILED.
    """
    run, settings = PenguinRun.from_dict(context), settings or get_settings()
    config, mlflow_client = run.training, run.client()
    name = config.model_name
    with recorded(mlflow_client, run, "register_and_promote"):
        frame, splits = load_training_set(run, settings)
        holdout = frame.iloc[splits.holdout]
        version = register(mlflow_client, run, name, frame, summary, final)
        metrics = final["holdout_metrics"]
        aliases = NewestAliases(mlflow_client, name)
        try:
            tracking.set_tags(mlflow_client, run.parent_run_id, {"model_version": version})
            champion_version = registry.aliases(mlflow_client, name).get(registry.CHAMPION)
            champion = (champion_holdout_metrics(f"models:/{name}/{champion_version}", holdout)
                        if champion_version else None)
            decision = decide(metrics["macro_f1"], champion["macro_f1"] if champion else None)
            tags = {"promotion_decision": decision.outcome, "promotion_reason": decision.reason,
                    "compared_with_version": champion_version or "none", "holdout_rows": str(len(holdout))}
            if champion:
                tags["champion_holdout_macro_f1"] = f"{champion['macro_f1']:.6f}"
                tracking.log_metrics(mlflow_client, run.parent_run_id,
                                     {f"champion_holdout_{k}": v for k, v in champion.items()})
            for key, value in tags.items():
                mlflow_client.set_model_version_tag(name, version, key, value)
            tracking.set_tags(mlflow_client, run.parent_run_id, tags)
            aliases.publish_newest(version, decision.promote, champion_version)
            mlflow_client.set_terminated(run.parent_run_id, "FINISHED")
        except BaseException as error:
            undone = aliases.undo()
            registry.mark_failed(mlflow_client, name, version, "register_and_promote", error)
            log.error("penguin run failed after registering its version", extra={
                "run_name": run.run_name, "model_version": version, "aliases_undone": undone,
                "error": f"{type(error).__name__}: {error}"})
            raise
    log.info("penguin promotion decided", extra={"run_name": run.run_name, "model_version": version,
                                                 "decision": decision.outcome, "reason": decision.reason})
    return {"decision": decision.outcome, "reason": decision.reason, "version": version,
            "champion_version": version if decision.promote else champion_version,
            "holdout_accuracy": metrics["accuracy"], "holdout_macro_f1": metrics["macro_f1"],
            "majority_baseline": final["majority_baseline"]}
