"""The final model: fitted on everything but the comparison holdout, in parallel with the folds, and
logged to the parent run with its plots and monitoring's drift reference."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlops_platform import model_registry
from mlops_platform.settings import Settings, get_settings
from training_pipeline import model, plots, tracking
from training_pipeline.run_context import RunContext, fit_part_and_holdout, quiet_model_io, recorded

log = logging.getLogger(__name__)

# Monitoring's drift reference (monitoring_service/reference.py reads it from the champion's run).
REFERENCE_ARTIFACT = "reference/reference.parquet"
REFERENCE_ROWS = 5_000


def fit_final_model(context: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Fit the pipeline on everything but the comparison holdout and log it to the parent run."""
    import mlflow.sklearn  # binds `mlflow` too
    from mlflow.models import infer_signature

    ctx, settings = RunContext.from_dict(context), settings or get_settings()
    config = ctx.training
    mlflow_client = model_registry.client(config.tracking_uri)
    with recorded(mlflow_client, ctx, "fit_final_model"):
        fit_part, holdout, report = fit_part_and_holdout(ctx, settings)
        x = model.inputs(fit_part, ctx.features)
        pipeline = model.make_model(config.alpha, config.l1_ratio, ctx.seed).fit(x, model.target(fit_part))
        holdout_score = pipeline.predict(model.inputs(holdout, ctx.features))
        holdout_metrics = model.evaluate(model.target(holdout), holdout_score)
        # Resuming a run needs the process's active experiment to be the run's own (a caller may have set another).
        mlflow.set_experiment(experiment_id=mlflow_client.get_run(ctx.parent_run_id).info.experiment_id)
        with mlflow.start_run(run_id=ctx.parent_run_id), quiet_model_io():
            info = mlflow.sklearn.log_model(
                pipeline, name="model", signature=infer_signature(x, pipeline.predict(x)),
                input_example=x.head(5), pip_requirements=model.requirements(),
                skops_trusted_types=model.SKOPS_TRUSTED_TYPES,
                tags={"training_set_sha256": report.sha256, "git_commit": ctx.git_commit})
            _log_plots(model.target(holdout), holdout_score)
            _log_reference(fit_part, ctx.features, pipeline, ctx.seed)
        coefficients = dict(zip(ctx.features, pipeline.named_steps["regress"].coef_.tolist(), strict=True))
        tracking.log_metrics(mlflow_client, ctx.parent_run_id, {
            **{f"holdout_{k}": v for k, v in holdout_metrics.items()},
            **{f"coef_{k}": v for k, v in coefficients.items()}, "final_fit_rows": len(fit_part)})
        tracking.set_tags(mlflow_client, ctx.parent_run_id, {
            "features": ctx.features, "git_commit": ctx.git_commit, "model_uri": info.model_uri})
    log.info("final model logged", extra={"run_name": ctx.run_name, "model_uri": info.model_uri,
                                          **{f"holdout_{k}": v for k, v in holdout_metrics.items()}})
    return {"model_uri": info.model_uri, "model_id": info.model_id, "fit_rows": len(fit_part)}


def _log_reference(fit_part, features: list[str], pipeline, seed: int) -> None:
    """A sample of what the model learned from (features and scores): monitoring's drift reference."""
    import mlflow

    sample = fit_part.sample(min(len(fit_part), REFERENCE_ROWS), random_state=seed)
    reference = sample[features].astype("float64").assign(score=pipeline.predict(model.inputs(sample, features)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(REFERENCE_ARTIFACT).name
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(REFERENCE_ARTIFACT).parent))


def _log_plots(y_true, score) -> None:
    import mlflow

    if not plots.available():
        log.warning("matplotlib is not installed: no plots logged")
        return
    with tempfile.TemporaryDirectory() as folder:
        for name, draw in (("predicted_vs_actual.png", plots.predicted_vs_actual), ("residuals.png", plots.residuals)):
            try:
                path = draw(y_true, score, Path(folder) / name)
            except Exception:  # a diagnostic plot never fails a training run
                log.exception("could not draw %s", name)
                continue
            mlflow.log_artifact(str(path), "plots")
