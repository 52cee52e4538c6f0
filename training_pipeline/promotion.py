"""The last step of a training run: register the model when it is good enough, compare it with the
champion on the same holdout, then move the aliases."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from mlops_platform import model_registry
from mlops_platform.settings import Settings, get_settings
from training_pipeline import comparison, dataset, registry, tracking, training_set
from training_pipeline.run_context import RunContext, fit_part_and_holdout, quiet_model_io, recorded, served_features

log = logging.getLogger(__name__)


def register_and_promote(context: Mapping[str, Any], summary: Mapping[str, float], final: Mapping[str, Any],
                         settings: Settings | None = None) -> dict[str, Any]:
    """Register when CV RMSE is under the threshold, compare with the champion, then move the aliases.

    Aliases move last, after every tag and metric is written: whatever fails once the version exists
    (loading a model, the comparison, MLflow going away, an interruption) undoes the alias changes this
    run made, tags the version `promotion_decision=failed` with the reason, and marks the run FAILED.
    """
    ctx, settings = RunContext.from_dict(context), settings or get_settings()
    config = ctx.training
    mlflow_client = model_registry.client(config.tracking_uri)
    name = config.model_name
    with recorded(mlflow_client, ctx, "register_and_promote"):
        cv_rmse = summary["cv_rmse_mean"]
        if not cv_rmse < config.rmse_threshold:
            return _not_registered(mlflow_client, ctx, cv_rmse)
        _, holdout, report = fit_part_and_holdout(ctx, settings)
        _close_interrupted_attempts(mlflow_client, ctx)
        version = registry.register(mlflow_client, name, final["model_uri"], ctx.parent_run_id, final.get("model_id"), {
            **{k: f"{v:.6f}" for k, v in summary.items()}, "training_set_sha256": report.sha256,
            "holdout_start": report.holdout_start, "features": ",".join(ctx.features), "git_commit": ctx.git_commit,
            "run_name": ctx.run_name})
        aliases = registry.AliasWriter(mlflow_client, name)
        try:
            tracking.set_tags(mlflow_client, ctx.parent_run_id, {"model_version": version})
            outcome = _compare_and_publish(ctx, settings, mlflow_client, version, holdout, report, aliases)
        except BaseException as error:
            _withdraw(mlflow_client, ctx, version, aliases, error)
            raise
    log.info("promotion decided", extra={"run_name": ctx.run_name, "model_name": name, "model_version": version,
                                         "decision": outcome["decision"], "reason": outcome["reason"]})
    return outcome


def _not_registered(mlflow_client, ctx: RunContext, cv_rmse: float) -> dict[str, Any]:
    """A model not good enough to register: say why on the run and finish it."""
    reason = (f"mean CV RMSE {cv_rmse:.4f} is not below the registration threshold "
              f"{ctx.training.rmse_threshold}: not registered")
    tracking.set_tags(mlflow_client, ctx.parent_run_id,
                      {"promotion_decision": "not_registered", "promotion_reason": reason})
    mlflow_client.set_terminated(ctx.parent_run_id, "FINISHED")
    log.info("model not registered", extra={"run_name": ctx.run_name, "reason": reason})
    return {"decision": "not_registered", "reason": reason, "version": None}


def _compare_and_publish(ctx: RunContext, settings: Settings, mlflow_client, version: str, holdout: pd.DataFrame,
                         report: dataset.DatasetReport, aliases: registry.AliasWriter) -> dict[str, Any]:
    """Score both models on the holdout, record the decision, then move the aliases and finish the run."""
    import mlflow.pyfunc

    config, name = ctx.training, ctx.training.model_name
    store = _LazyFeatureStore(settings)

    def load(uri: str):
        with quiet_model_io():
            return mlflow.pyfunc.load_model(uri)

    def fetch(features: list[str]) -> pd.DataFrame:
        """The features for the holdout's labels, through the same point-in-time join as the training set."""
        labels = training_set.labels_sql(pd.Timestamp(report.holdout_start).to_pydatetime(),
                                         datetime.fromisoformat(ctx.label_end))
        frame, _ = training_set.build(store.get(), labels, config.feature_service, features, settings,
                                      config.retrieval, config.feast_check_rows, ctx.seed)
        return frame

    champion_version = registry.aliases(mlflow_client, name).get(registry.CHAMPION)
    result = comparison.compare(mlflow_client, name, version, champion_version, holdout,
                                served=lambda: served_features(store.get(), config.feature_service),
                                fetch=fetch, load=load)
    decision = result.decide(config.promotion_margin, config.feature_service, config.replace_unservable_champion)
    tags = {"promotion_decision": decision.outcome, "promotion_reason": decision.reason, **result.tags(len(holdout))}
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    tracking.set_tags(mlflow_client, ctx.parent_run_id, tags)
    tracking.log_metrics(mlflow_client, ctx.parent_run_id, {
        **{f"challenger_holdout_{k}": v for k, v in result.challenger_metrics.items()},
        **{f"champion_holdout_{k}": v for k, v in (result.champion_metrics or {}).items()}})
    aliases.publish(version, decision, champion_version)  # last but one: nothing before it moves an alias
    mlflow_client.set_terminated(ctx.parent_run_id, "FINISHED")
    return {"decision": decision.outcome, "reason": decision.reason, "version": version,
            "champion_version": version if decision.promote else champion_version}


def _withdraw(mlflow_client, ctx: RunContext, version: str, aliases: registry.AliasWriter,
              error: BaseException) -> None:
    """After a failure: undo this run's alias changes and tag the version; each part tried on its own."""
    name = ctx.training.model_name
    undone: list[str] = []
    try:
        undone = aliases.undo()
    except Exception:
        log.exception("could not undo the alias changes of a failed run: check the aliases of %s by hand", name,
                      extra={"run_name": ctx.run_name, "model_version": version, "changes": aliases.changes})
    try:
        registry.mark_failed(mlflow_client, name, version, "register_and_promote", error)
        # The decision tags may already be on the run when a late step fails: the run says what happened.
        tracking.set_tags(mlflow_client, ctx.parent_run_id, {"promotion_decision": registry.FAILED})
    except Exception:
        log.exception("could not tag the version of a failed run", extra={"run_name": ctx.run_name,
                                                                           "model_version": version})
    log.error("training run failed after registering its version", extra={
        "run_name": ctx.run_name, "model_name": name, "model_version": version,
        "error": f"{type(error).__name__}: {error}", "aliases_undone": undone})


def _close_interrupted_attempts(mlflow_client, ctx: RunContext) -> None:
    """A retried task: tag the versions an earlier, killed attempt of this run registered but never decided on."""
    name = ctx.training.model_name
    for version in registry.undecided_versions(mlflow_client, name, ctx.parent_run_id):
        registry.mark_failed(mlflow_client, name, version, "register_and_promote", RuntimeError(
            "the attempt that registered this version stopped before deciding (killed or lost); "
            "a later attempt of the same run registered another version"))
        log.warning("version of an interrupted attempt marked failed", extra={
            "run_name": ctx.run_name, "model_name": name, "model_version": version})


class _LazyFeatureStore:
    """Feast's FeatureStore, opened only when the comparison needs it (a champion on other features)."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self._store = settings, None

    def get(self):
        from mlops_platform.feature_store import feature_store

        if self._store is None:
            self._store = feature_store(self.settings)
        return self._store
