"""The steps of a training run. The DAG `training` runs each as a task; `python -m training_pipeline`
runs them in sequence (`run`). Same functions, same results.

    start -> prepare_training_set -> [cross_validate_fold x K, final_model.fit_final_model] -> aggregate
          -> promotion.register_and_promote

This module holds the steps up to the fold scores; the final fit (final_model.py) and the decision
(promotion.py) have modules of their own, and what they share is in run_context.py. Every step after
`start` records a failure on the parent MLflow run (tag `failed_step`, status FAILED).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops_platform import model_registry
from mlops_platform.feature_store import feature_store
from mlops_platform.settings import Settings, get_settings
from training_pipeline import dataset, final_model, model, plots, promotion, registry, tracking, training_set
from training_pipeline.config import build_config, check_features, seed_for
from training_pipeline.run_context import RunContext, fit_part_and_holdout, recorded, served_features

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# 1. start: configuration, checks, parent run
# ---------------------------------------------------------------------------------------------
def start(overrides: Mapping[str, Any], run_name: str, *, source: str = "cli", settings: Settings | None = None,
          now: datetime | None = None) -> dict[str, Any]:
    """Validate the configuration and the services it names, then open the parent MLflow run.

    Fails before any data is read: on a bad value, an unknown feature or an unreachable MLflow.
    """
    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    config = build_config(overrides, settings.mlflow_tracking_uri)
    model_registry.check_server(config.tracking_uri)
    features = check_features(config.features, served_features(feature_store(settings), config.feature_service),
                              config.feature_service)
    seed = seed_for(config.mode, now)
    label_start, label_end = config.window(now)

    mlflow_client = model_registry.client(config.tracking_uri)
    experiment = tracking.experiment_id(mlflow_client, config.experiment)
    commit = tracking.git_commit()
    run_id = tracking.open_run(mlflow_client, experiment, run_name, {
        "run_source": source, "mode": config.mode, "model_name": config.model_name, "git_commit": commit})
    context = RunContext(run_name, run_id, experiment, seed, features, label_start.isoformat(),
                         label_end.isoformat(), commit, config.to_dict())
    tracking.log_params(mlflow_client, run_id, config.logged_params(
        seed=seed, decision_metric=registry.DECISION_METRIC, label_start=context.label_start,
        label_end=context.label_end, features=features, git_commit=commit))
    log.info("training run started", extra={"run_name": run_name, "run_id": run_id, "seed": seed,
                                            "label_start": context.label_start, "label_end": context.label_end})
    return context.to_dict()


# ---------------------------------------------------------------------------------------------
# 2. training set
# ---------------------------------------------------------------------------------------------
def prepare_training_set(context: Mapping[str, Any], settings: Settings | None = None) -> list[dict[str, int]]:
    """Join, validate, fingerprint and save the training set; returns one spec per CV fold."""
    ctx, settings = RunContext.from_dict(context), settings or get_settings()
    config = ctx.training
    mlflow_client = model_registry.client(config.tracking_uri)
    with recorded(mlflow_client, ctx, "training_set"):
        labels = training_set.labels_sql(datetime.fromisoformat(ctx.label_start), datetime.fromisoformat(ctx.label_end))
        frame, retrieval = training_set.build(feature_store(settings), labels, config.feature_service, ctx.features,
                                              settings, config.retrieval, config.feast_check_rows, ctx.seed)
        clean, report = dataset.validate(frame, ctx.features, min_rows=config.min_rows,
                                         max_unmatched_share=config.max_unmatched_share,
                                         holdout_share=config.holdout_share, folds=config.folds)
        folder = ctx.folder(settings)
        dataset.save(clean, report, folder)
        tracking.log_params(mlflow_client, ctx.parent_run_id, {
            "training_set_sha256": report.sha256, "label_time_min": report.label_time_min,
            "label_time_max": report.label_time_max, "holdout_start": report.holdout_start})
        tracking.set_tags(mlflow_client, ctx.parent_run_id, {"training_set_sha256": report.sha256})
        tracking.log_metrics(mlflow_client, ctx.parent_run_id, {
            "training_set_rows": report.rows, "rows_unmatched_dropped": report.rows_unmatched_dropped,
            "rows_fit": report.rows_fit, "rows_holdout": report.rows_holdout,
            "positive_share": report.positive_share, "retrieval_seconds": retrieval["retrieval_seconds"],
            "feast_checked_rows": retrieval["feast_checked_rows"]})
        mlflow_client.log_artifact(ctx.parent_run_id, str(folder / "training_set.json"), "training_set")
    log.info("training set ready", extra={"run_name": ctx.run_name, **report.to_dict()})
    bounds = model.fold_bounds(report.rows_fit, config.folds)
    return [{"fold": n, "folds": config.folds, "test_start": a, "test_stop": b, "rows_fit": report.rows_fit}
            for n, (a, b) in enumerate(bounds)]


# ---------------------------------------------------------------------------------------------
# 3. cross-validation, one fold per call (mapped over the folds in the DAG)
# ---------------------------------------------------------------------------------------------
def cross_validate_fold(context: Mapping[str, Any], fold: Mapping[str, int],
                        settings: Settings | None = None) -> dict[str, Any]:
    """Fit on every block but one, score the held-out block, log both to a nested MLflow run."""
    ctx, settings = RunContext.from_dict(context), settings or get_settings()
    config = ctx.training
    mlflow_client = model_registry.client(config.tracking_uri)
    step = f"cross_validate_fold_{fold['fold']}"
    with recorded(mlflow_client, ctx, step):
        fit_part, _, _ = fit_part_and_holdout(ctx, settings)
        if len(fit_part) != fold["rows_fit"]:
            raise RuntimeError(f"fold {fold['fold']} was planned on {fold['rows_fit']} rows, the saved training "
                               f"set has {len(fit_part)}: rerun the whole training run")
        result = model.fit_fold(fit_part, ctx.features, fold["fold"], fold["folds"], config.alpha,
                                config.l1_ratio, ctx.seed)
        test = fit_part.iloc[result.test_index]
        run_id = tracking.open_run(mlflow_client, ctx.experiment_id, f"{ctx.run_name}-fold-{fold['fold']}",
                                   {"fold": str(fold["fold"])}, parent_run_id=ctx.parent_run_id)
        try:
            tracking.log_params(mlflow_client, run_id, {
                "fold": fold["fold"], "folds": fold["folds"], "alpha": config.alpha, "l1_ratio": config.l1_ratio,
                "seed": ctx.seed, "train_rows": len(result.train_index), "test_rows": len(result.test_index),
                "test_time_start": test[training_set.TIMESTAMP].min().isoformat(),
                "test_time_end": test[training_set.TIMESTAMP].max().isoformat()})
            tracking.log_metrics(mlflow_client, run_id, result.metrics)
        except Exception:
            mlflow_client.set_terminated(run_id, "FAILED")
            raise
        mlflow_client.set_terminated(run_id, "FINISHED")
    log.info("fold scored", extra={"run_name": ctx.run_name, "fold": fold["fold"], **result.metrics})
    return {"fold": fold["fold"], "run_id": run_id, "train_rows": len(result.train_index),
            "test_rows": len(result.test_index), "metrics": result.metrics}


# ---------------------------------------------------------------------------------------------
# 4. aggregate the folds (the final model fits in parallel with them: final_model.py)
# ---------------------------------------------------------------------------------------------
def aggregate(context: Mapping[str, Any], fold_results: Sequence[Mapping[str, Any]],
              settings: Settings | None = None) -> dict[str, float]:
    """Mean and std of each fold metric, logged to the parent run."""
    ctx = RunContext.from_dict(context)
    config = ctx.training
    mlflow_client = model_registry.client(config.tracking_uri)
    with recorded(mlflow_client, ctx, "aggregate"):
        results = sorted((dict(r) for r in fold_results), key=lambda r: r["fold"])
        found = [r["fold"] for r in results]
        if found != list(range(config.folds)):
            raise RuntimeError(f"expected one result for each of folds 0..{config.folds - 1}, got folds {found}")
        per_fold = [r["metrics"] for r in results]
        summary = model.summarize(per_fold)
        tracking.log_metrics(mlflow_client, ctx.parent_run_id, summary)
        _log_fold_plot(mlflow_client, ctx.parent_run_id, per_fold)
    log.info("cross-validation aggregated", extra={"run_name": ctx.run_name, **summary})
    return summary


def _log_fold_plot(mlflow_client, run_id: str, per_fold: list[dict[str, float]]) -> None:
    if not plots.available():
        log.warning("matplotlib is not installed: no plots logged")
        return
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = plots.fold_metrics(per_fold, model.METRICS, Path(folder) / "fold_metrics.png")
        except Exception:  # a diagnostic plot never fails a training run
            log.exception("could not draw fold_metrics.png")
            return
        mlflow_client.log_artifact(run_id, str(path), "plots")


# ---------------------------------------------------------------------------------------------
# every step, in this process
# ---------------------------------------------------------------------------------------------
def run(overrides: Mapping[str, Any], run_name: str, *, source: str = "cli",
        settings: Settings | None = None) -> dict[str, Any]:
    """Every step in order, in this process: what the CLI (and the tests) run."""
    context = start(overrides, run_name, source=source, settings=settings)
    folds = prepare_training_set(context, settings)
    results = [cross_validate_fold(context, fold, settings) for fold in folds]
    final = final_model.fit_final_model(context, settings)
    summary = aggregate(context, results, settings)
    decision = promotion.register_and_promote(context, summary, final, settings)
    return {"run_name": run_name, "parent_run_id": context["parent_run_id"], **summary, **decision}
