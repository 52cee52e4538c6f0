"""The steps of a training run. The DAG `training` runs each as a task; `python -m training_pipeline`
runs them in sequence. Same functions, same results.

    start -> prepare_training_set -> [cross_validate_fold x K, fit_final_model] -> aggregate
          -> register_and_promote

Under Airflow every step is a separate process: steps exchange only small JSON-safe dicts (XCom)
and the run's folder, <PLATFORM_HOME>/training/<run name>/, which holds the training set. Every
step after `start` records a failure on the parent MLflow run (tag `failed_step`, status FAILED).
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mlops_platform.settings import Settings, get_settings
from training_pipeline import comparison, dataset, model, plots, registry, tracking, training_set
from training_pipeline.config import ConfigError, TrainingConfig, build_config, check_features, seed_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What every step needs to know about the run; created by `start`, passed along as a dict."""

    run_name: str
    parent_run_id: str
    experiment_id: str
    seed: int
    features: list[str]
    label_start: str
    label_end: str
    git_commit: str
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunContext:
        return cls(**dict(values))

    @property
    def training(self) -> TrainingConfig:
        return TrainingConfig.from_dict(self.config)

    def folder(self, settings: Settings) -> Path:
        return run_folder(settings, self.run_name)


def run_folder(settings: Settings, run_name: str) -> Path:
    """<PLATFORM_HOME>/training/<run name>, the name made safe for a path (Airflow ids hold ':' and '+')."""
    return settings.home / "training" / re.sub(r"[^A-Za-z0-9._-]+", "_", run_name)


@contextmanager
def _quiet_model_io() -> Iterator[None]:
    """Silence warnings while saving or loading a model.

    skops (MLflow's sklearn format) looks up each scipy ufunc in every loaded module once per process;
    in an Airflow worker that touches hundreds of deprecated Airflow attributes, and each would log a
    warning (a thousand lines and seconds per task) without changing the result.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def _recorded(mlflow_client, context: RunContext, step: str) -> Iterator[None]:
    """Mark the parent run FAILED, naming the step and the error, when the step raises or is interrupted."""
    try:
        yield
    except BaseException as exc:
        try:
            tracking.set_tags(mlflow_client, context.parent_run_id,
                              {"failed_step": step, "error": f"{type(exc).__name__}: {exc}"})
            mlflow_client.set_terminated(context.parent_run_id, "FAILED")
        except Exception:  # the original error matters more than the bookkeeping
            log.exception("could not record the failure on the MLflow run")
        raise


def _served_features(store, service: str) -> list[str]:
    from feast.errors import FeatureServiceNotFoundException

    try:
        return training_set.service_features(store, service)
    except FeatureServiceNotFoundException:
        raise ConfigError(f"feature service {service!r} is not in the Feast registry: apply feast_repo "
                          "(`bash run.sh feast up` does) or fix feature_service") from None


# ---------------------------------------------------------------------------------------------
# 1. start: configuration, checks, parent run
# ---------------------------------------------------------------------------------------------
def start(overrides: Mapping[str, Any], run_name: str, *, source: str = "cli", settings: Settings | None = None,
          now: datetime | None = None) -> dict[str, Any]:
    """Validate the configuration and the services it names, then open the parent MLflow run.

    Fails before any data is read: on a bad value, an unknown feature or an unreachable MLflow.
    """
    from data_pipeline.materialize import feature_store

    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    config = build_config(overrides, settings.mlflow_tracking_uri)
    tracking.check_server(config.tracking_uri)
    features = check_features(config.features, _served_features(feature_store(settings), config.feature_service),
                              config.feature_service)
    seed = seed_for(config.mode, now)
    label_start, label_end = config.window(now)

    mlflow_client = tracking.client(config.tracking_uri)
    experiment = tracking.experiment_id(mlflow_client, config.experiment)
    commit = tracking.git_commit()
    run_id = tracking.open_run(mlflow_client, experiment, run_name, {
        "run_source": source, "mode": config.mode, "model_name": config.model_name, "git_commit": commit})
    context = RunContext(run_name, run_id, experiment, seed, features, label_start.isoformat(),
                         label_end.isoformat(), commit, config.to_dict())
    tracking.log_params(mlflow_client, run_id, {
        "alpha": config.alpha, "l1_ratio": config.l1_ratio, "folds": config.folds, "seed": seed, "mode": config.mode,
        "rmse_threshold": config.rmse_threshold, "promotion_margin": config.promotion_margin,
        "decision_metric": registry.DECISION_METRIC, "holdout_share": config.holdout_share,
        "label_start": context.label_start, "label_end": context.label_end, "min_rows": config.min_rows,
        "max_unmatched_share": config.max_unmatched_share, "feature_service": config.feature_service,
        "features": features, "retrieval": config.retrieval, "model_name": config.model_name, "git_commit": commit,
    })
    log.info("training run started", extra={"run_name": run_name, "run_id": run_id, "seed": seed,
                                            "label_start": context.label_start, "label_end": context.label_end})
    return context.to_dict()


# ---------------------------------------------------------------------------------------------
# 2. training set
# ---------------------------------------------------------------------------------------------
def prepare_training_set(context: Mapping[str, Any], settings: Settings | None = None) -> list[dict[str, int]]:
    """Join, validate, fingerprint and save the training set; returns one spec per CV fold."""
    from data_pipeline.materialize import feature_store

    ctx, settings = RunContext.from_dict(context), settings or get_settings()
    config = ctx.training
    mlflow_client = tracking.client(config.tracking_uri)
    with _recorded(mlflow_client, ctx, "training_set"):
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


def _fit_part_and_holdout(ctx: RunContext, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                          dataset.DatasetReport]:
    frame, report = dataset.load(ctx.folder(settings), ctx.features)
    fit_part, holdout = dataset.split_holdout(frame, pd.Timestamp(report.holdout_start))
    return fit_part, holdout, report


# ---------------------------------------------------------------------------------------------
# 3. cross-validation, one fold per call (mapped over the folds in the DAG)
# ---------------------------------------------------------------------------------------------
def cross_validate_fold(context: Mapping[str, Any], fold: Mapping[str, int],
                        settings: Settings | None = None) -> dict[str, Any]:
    """Fit on every block but one, score the held-out block, log both to a nested MLflow run."""
    ctx, settings = RunContext.from_dict(context), settings or get_settings()
    config = ctx.training
    mlflow_client = tracking.client(config.tracking_uri)
    step = f"cross_validate_fold_{fold['fold']}"
    with _recorded(mlflow_client, ctx, step):
        fit_part, _, _ = _fit_part_and_holdout(ctx, settings)
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
# 4. final model, in parallel with the folds
# ---------------------------------------------------------------------------------------------
def fit_final_model(context: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Fit the pipeline on everything but the comparison holdout and log it to the parent run."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    ctx, settings = RunContext.from_dict(context), settings or get_settings()
    config = ctx.training
    mlflow_client = tracking.client(config.tracking_uri)
    with _recorded(mlflow_client, ctx, "fit_final_model"):
        fit_part, holdout, report = _fit_part_and_holdout(ctx, settings)
        x = model.inputs(fit_part, ctx.features)
        pipeline = model.make_model(config.alpha, config.l1_ratio, ctx.seed).fit(x, model.target(fit_part))
        holdout_score = pipeline.predict(model.inputs(holdout, ctx.features))
        holdout_metrics = model.evaluate(model.target(holdout), holdout_score)
        # Resuming a run needs the process's active experiment to be the run's own (a caller may have set another).
        mlflow.set_experiment(experiment_id=mlflow_client.get_run(ctx.parent_run_id).info.experiment_id)
        with mlflow.start_run(run_id=ctx.parent_run_id), _quiet_model_io():
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


REFERENCE_ARTIFACT = "reference/reference.parquet"
REFERENCE_ROWS = 5_000


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


# ---------------------------------------------------------------------------------------------
# 5. aggregate the folds
# ---------------------------------------------------------------------------------------------
def aggregate(context: Mapping[str, Any], fold_results: Sequence[Mapping[str, Any]],
              settings: Settings | None = None) -> dict[str, float]:
    """Mean and std of each fold metric, logged to the parent run."""
    ctx = RunContext.from_dict(context)
    config = ctx.training
    mlflow_client = tracking.client(config.tracking_uri)
    with _recorded(mlflow_client, ctx, "aggregate"):
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
# 6. register, then champion/challenger
# ---------------------------------------------------------------------------------------------
def register_and_promote(context: Mapping[str, Any], summary: Mapping[str, float], final: Mapping[str, Any],
                         settings: Settings | None = None) -> dict[str, Any]:
    """Register when CV RMSE is under the threshold, compare with the champion, then move the aliases.

    Aliases move last, after every tag and metric is written: whatever fails once the version exists
    (loading a model, the comparison, MLflow going away, an interruption) undoes the alias changes this
    run made, tags the version `promotion_decision=failed` with the reason, and marks the run FAILED.
    """
    ctx, settings = RunContext.from_dict(context), settings or get_settings()
    config = ctx.training
    mlflow_client = tracking.client(config.tracking_uri)
    name = config.model_name
    with _recorded(mlflow_client, ctx, "register_and_promote"):
        cv_rmse = summary["cv_rmse_mean"]
        if not cv_rmse < config.rmse_threshold:
            reason = (f"mean CV RMSE {cv_rmse:.4f} is not below the registration threshold "
                      f"{config.rmse_threshold}: not registered")
            tracking.set_tags(mlflow_client, ctx.parent_run_id,
                              {"promotion_decision": "not_registered", "promotion_reason": reason})
            mlflow_client.set_terminated(ctx.parent_run_id, "FINISHED")
            log.info("model not registered", extra={"run_name": ctx.run_name, "reason": reason})
            return {"decision": "not_registered", "reason": reason, "version": None}

        _, holdout, report = _fit_part_and_holdout(ctx, settings)
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


def _compare_and_publish(ctx: RunContext, settings: Settings, mlflow_client, version: str, holdout: pd.DataFrame,
                         report: dataset.DatasetReport, aliases: registry.AliasWriter) -> dict[str, Any]:
    """Score both models on the holdout, record the decision, then move the aliases and finish the run."""
    import mlflow.pyfunc

    config, name = ctx.training, ctx.training.model_name
    store = _LazyFeatureStore(settings)

    def load(uri: str):
        with _quiet_model_io():
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
                                served=lambda: _served_features(store.get(), config.feature_service),
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
        from data_pipeline.materialize import feature_store

        if self._store is None:
            self._store = feature_store(self.settings)
        return self._store


def run(overrides: Mapping[str, Any], run_name: str, *, source: str = "cli",
        settings: Settings | None = None) -> dict[str, Any]:
    """Every step in order, in this process: what the CLI (and the tests) run."""
    context = start(overrides, run_name, source=source, settings=settings)
    folds = prepare_training_set(context, settings)
    results = [cross_validate_fold(context, fold, settings) for fold in folds]
    final = fit_final_model(context, settings)
    summary = aggregate(context, results, settings)
    decision = register_and_promote(context, summary, final, settings)
    return {"run_name": run_name, "parent_run_id": context["parent_run_id"], **summary, **decision}
