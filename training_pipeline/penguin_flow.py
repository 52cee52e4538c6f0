"""The steps of a penguin training run. The DAG `penguin_training` (dag_factory.py) runs each as a task;
`python -m training_pipeline.penguins` runs them in sequence (`run`). Same functions, same results.

    start -> prepare_training_set -> [cross_validate_fold x K, fit_final_model] -> aggregate
          -> register_and_promote

Labels are the rows of `penguin_measurements` with a species; their features come from Feast's feature
service `penguin_species` through get_historical_features (point in time). A stratified holdout is kept
out of everything but the final evaluation and the comparison with the champion; the rest is split into K
stratified folds. Steps exchange small JSON dicts (XCom) and the run's folder
<PLATFORM_HOME>/training/penguins/<run name>/ (training_set.parquet, splits.json). Every step after
`start` records a failure on the parent MLflow run (tag `failed_step`, status FAILED).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mlops_platform.keras_backend  # noqa: F401  (before mlflow.keras imports keras: Keras on JAX, CPU only)
from feast_repo import penguin_features as contract
from mlops_platform import model_registry
from mlops_platform.projects import PENGUINS
from mlops_platform.settings import Settings, get_settings
from training_pipeline import classification_metrics, registry, tracking
from training_pipeline.config import ConfigError, seed_for
from training_pipeline.penguin_config import PenguinConfig, build_config
from training_pipeline.run_context import quiet_model_io, recorded, run_folder

log = logging.getLogger(__name__)

DECISION_METRIC = "macro_f1"
REFERENCE_ARTIFACT = "reference/reference.parquet"  # monitoring's drift reference, as for the driver model
TRAINING_SET = "training_set.parquet"
SPLITS = "splits.json"


@dataclass(frozen=True)
class PenguinRun:
    """What every step needs to know about the run; created by `start`, passed along as a dict."""

    run_name: str
    parent_run_id: str
    experiment_id: str
    seed: int
    git_commit: str
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PenguinRun:
        return cls(**dict(values))

    @property
    def training(self) -> PenguinConfig:
        return PenguinConfig.from_dict(self.config)

    def folder(self, settings: Settings) -> Path:
        driver_style = run_folder(settings, self.run_name)  # <home>/training/<safe run name>
        return driver_style.parent / PENGUINS.name / driver_style.name

    def client(self):
        return model_registry.client(self.training.tracking_uri)


# ---------------------------------------------------------------------------------------------
# 1. start: configuration, checks, parent run
# ---------------------------------------------------------------------------------------------
def start(overrides: Mapping[str, Any], run_name: str, *, source: str = "cli", settings: Settings | None = None,
          now: datetime | None = None) -> dict[str, Any]:
    """Validate the configuration and MLflow, then open the parent run; no data is read yet."""
    settings = settings or get_settings()
    config = build_config(overrides, settings.mlflow_tracking_uri)
    model_registry.check_server(config.tracking_uri)
    seed = seed_for(config.mode, now or datetime.now(UTC))
    mlflow_client = model_registry.client(config.tracking_uri)
    experiment = tracking.experiment_id(mlflow_client, config.experiment)
    commit = tracking.git_commit()
    run_id = tracking.open_run(mlflow_client, experiment, run_name, {
        "run_source": source, "mode": config.mode, "model_name": config.model_name, "project": PENGUINS.name,
        "git_commit": commit})
    tracking.log_params(mlflow_client, run_id, config.logged_params(
        seed=seed, decision_metric=DECISION_METRIC, features=list(contract.FEATURE_NAMES), git_commit=commit,
        optimizer="SGD", loss="sparse_categorical_crossentropy", layers="Normalization,Dense10relu,Dense8relu,"
                                                                        "Dense3softmax"))
    run = PenguinRun(run_name, run_id, experiment, seed, commit, config.to_dict())
    log.info("penguin training run started", extra={"run_name": run_name, "run_id": run_id, "seed": seed})
    return run.to_dict()


# ---------------------------------------------------------------------------------------------
# 2. training set: labels + point-in-time features from Feast, stratified holdout and folds
# ---------------------------------------------------------------------------------------------
def labels_sql(table: str = contract.OFFLINE_TABLE) -> str:
    """Every penguin with a known species, at the time it was measured: Feast's entity_df."""
    return (f"SELECT {contract.JOIN_KEY}, {contract.TIMESTAMP_FIELD}, {contract.LABEL} FROM {table} "
            f"WHERE {contract.LABEL} IS NOT NULL")


def fetch_training_set(store, service_name: str) -> pd.DataFrame:
    """The labels joined by Feast to their features (get_historical_features over the feature service),
    in a fixed order: by penguin_id, then time."""
    service = store.get_feature_service(service_name)
    frame = store.get_historical_features(entity_df=labels_sql(), features=service).to_df()
    missing = [c for c in contract.FEATURE_NAMES if c not in frame]
    if missing:
        raise ConfigError(f"feature service {service_name!r} does not serve {missing}; it must serve "
                          f"{list(contract.FEATURE_NAMES)} (feast_repo/penguin_features.py): apply feast_repo")
    columns = [contract.JOIN_KEY, contract.TIMESTAMP_FIELD, contract.LABEL, *contract.FEATURE_NAMES]
    frame = frame[columns].copy()
    frame[contract.TIMESTAMP_FIELD] = pd.to_datetime(frame[contract.TIMESTAMP_FIELD], utc=True)
    frame[list(contract.FEATURE_NAMES)] = frame[list(contract.FEATURE_NAMES)].astype(np.float32)
    return frame.sort_values([contract.JOIN_KEY, contract.TIMESTAMP_FIELD], kind="stable").reset_index(drop=True)


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the training set's content (column names and values, in order)."""
    digest = hashlib.sha256(json.dumps(list(frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def prepare_training_set(context: Mapping[str, Any], settings: Settings | None = None,
                         store=None) -> list[dict[str, int]]:
    """Fetch, check, split and save the training set; returns one spec per CV fold."""
    from mlops_platform.feature_store import feature_store
    from training_pipeline import penguin_model

    run, settings = PenguinRun.from_dict(context), settings or get_settings()
    config, mlflow_client = run.training, run.client()
    with recorded(mlflow_client, run, "training_set"):
        frame = fetch_training_set(store or feature_store(settings), config.feature_service)
        incomplete = frame[list(contract.FEATURE_NAMES)].isna().any(axis=1)
        if incomplete.any():  # validated rows always have every feature: Feast found no row for these
            raise ValueError(f"{int(incomplete.sum())} labelled penguins have no features in the feature view, "
                             f"e.g. ids {frame.loc[incomplete, contract.JOIN_KEY].head(5).tolist()}: "
                             "materialization is not the problem (this is the offline store); re-run ingestion")
        if len(frame) < config.min_rows:
            raise ValueError(f"expected at least min_rows={config.min_rows} labelled penguins in "
                             f"{contract.OFFLINE_TABLE}, found {len(frame)}: land and ingest the penguins dataset "
                             "(`python -m data_pipeline.ingest --dataset penguins`) or lower min_rows")
        y = penguin_model.targets(frame)
        splits = penguin_model.split(y, config.holdout_share, config.folds, run.seed)
        folder = run.folder(settings)
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(folder / TRAINING_SET, index=False)
        (folder / SPLITS).write_text(json.dumps(splits.to_dict()))
        sha = fingerprint(frame)
        counts = pd.Series(frame[contract.LABEL]).value_counts()
        tracking.log_params(mlflow_client, run.parent_run_id, {"training_set_sha256": sha})
        tracking.set_tags(mlflow_client, run.parent_run_id, {"training_set_sha256": sha})
        tracking.log_metrics(mlflow_client, run.parent_run_id, {
            "training_set_rows": len(frame), "rows_fit": len(splits.fit), "rows_holdout": len(splits.holdout),
            **{f"rows_{name}": int(counts.get(name, 0)) for name in contract.CLASSES}})
    log.info("penguin training set ready", extra={"run_name": run.run_name, "rows": len(frame),
                                                  "rows_holdout": len(splits.holdout), "sha256": sha})
    return [{"fold": n, "folds": config.folds, "rows": len(frame)} for n in range(config.folds)]


def load_training_set(run: PenguinRun, settings: Settings):
    """The saved training set and its splits (what prepare_training_set wrote)."""
    from training_pipeline import penguin_model

    folder = run.folder(settings)
    frame = pd.read_parquet(folder / TRAINING_SET)
    return frame, penguin_model.Splits.from_dict(json.loads((folder / SPLITS).read_text()))


# ---------------------------------------------------------------------------------------------
# 3. one fold (mapped over the folds in the DAG)
# ---------------------------------------------------------------------------------------------
def cross_validate_fold(context: Mapping[str, Any], fold: Mapping[str, int],
                        settings: Settings | None = None) -> dict[str, Any]:
    """Fit on the fold's training rows (scaling included), score its test rows, log to a nested run."""
    from training_pipeline import penguin_model

    run, settings = PenguinRun.from_dict(context), settings or get_settings()
    config, mlflow_client = run.training, run.client()
    n = fold["fold"]
    with recorded(mlflow_client, run, f"cross_validate_fold_{n}"):
        frame, splits = load_training_set(run, settings)
        if len(frame) != fold["rows"]:
            raise RuntimeError(f"fold {n} was planned on {fold['rows']} rows, the saved training set has "
                               f"{len(frame)}: rerun the whole training run")
        train, test = splits.fold(n)
        x, y = penguin_model.inputs(frame), penguin_model.targets(frame)
        network = penguin_model.fit(x[train], y[train], epochs=config.epochs, batch_size=config.batch_size,
                                    learning_rate=config.learning_rate, seed=run.seed)
        metrics = penguin_model.evaluate(network, x[test], y[test])
        metrics["majority_baseline"] = classification_metrics.majority_baseline(y[train], y[test])
        child = tracking.open_run(mlflow_client, run.experiment_id, f"{run.run_name}-fold-{n}", {"fold": str(n)},
                                  parent_run_id=run.parent_run_id)
        try:
            tracking.log_params(mlflow_client, child, {
                "fold": n, "folds": fold["folds"], "seed": run.seed, "train_rows": len(train),
                "test_rows": len(test), "epochs": config.epochs, "batch_size": config.batch_size,
                "learning_rate": config.learning_rate})
            tracking.log_metrics(mlflow_client, child, metrics)
        except Exception:
            mlflow_client.set_terminated(child, "FAILED")
            raise
        mlflow_client.set_terminated(child, "FINISHED")
    log.info("penguin fold scored", extra={"run_name": run.run_name, "fold": n, **metrics})
    return {"fold": n, "run_id": child, "train_rows": len(train), "test_rows": len(test), "metrics": metrics}


# ---------------------------------------------------------------------------------------------
# 4. the final model, in parallel with the folds: every non-holdout row, scored on the holdout
# ---------------------------------------------------------------------------------------------
def fit_final_model(context: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Fit on all non-holdout rows, evaluate on the holdout, log with MLflow's Keras flavour."""
    import mlflow
    from mlflow.models import infer_signature

    from training_pipeline import penguin_model
    from training_pipeline.keras_logging import log_keras_model

    run, settings = PenguinRun.from_dict(context), settings or get_settings()
    config, mlflow_client = run.training, run.client()
    with recorded(mlflow_client, run, "fit_final_model"):
        frame, splits = load_training_set(run, settings)
        x, y = penguin_model.inputs(frame), penguin_model.targets(frame)
        network = penguin_model.fit(x[splits.fit], y[splits.fit], epochs=config.epochs,
                                    batch_size=config.batch_size, learning_rate=config.learning_rate, seed=run.seed)
        holdout = penguin_model.evaluate(network, x[splits.holdout], y[splits.holdout])
        baseline = classification_metrics.majority_baseline(y[splits.fit], y[splits.holdout])
        # MLflow's Keras flavour takes a tensor signature only: one float32 tensor (-1, 9) whose columns are
        # FEATURE_NAMES in order, which the model's metadata names (serving checks both).
        example = x[splits.fit[:5]]
        signature = infer_signature(example, penguin_model.predict_proba(network, example).astype(np.float32))
        mlflow.set_experiment(experiment_id=run.experiment_id)
        with mlflow.start_run(run_id=run.parent_run_id), quiet_model_io():
            info = log_keras_model(network, name="model", signature=signature, input_example=example,
                                   pip_requirements=penguin_model.requirements(),
                                   metadata={"features": list(contract.FEATURE_NAMES),
                                             "classes": list(contract.CLASSES), "project": PENGUINS.name},
                                   tags={"project": PENGUINS.name, "git_commit": run.git_commit})
            _log_reference(frame.iloc[splits.fit], penguin_model.predict_proba(network, x[splits.fit]))
        tracking.log_metrics(mlflow_client, run.parent_run_id, {
            **{f"holdout_{k}": v for k, v in holdout.items()}, "majority_baseline": baseline,
            "final_fit_rows": len(splits.fit)})
        tracking.set_tags(mlflow_client, run.parent_run_id, {"model_uri": info.model_uri})
    log.info("penguin model logged", extra={"run_name": run.run_name, "model_uri": info.model_uri,
                                            "holdout_accuracy": holdout["accuracy"], "majority_baseline": baseline})
    return {"model_uri": info.model_uri, "model_id": info.model_id, "fit_rows": len(splits.fit),
            "holdout_metrics": holdout, "majority_baseline": baseline}


def _log_reference(fit_rows: pd.DataFrame, probabilities: np.ndarray) -> None:
    """What the model learned from, with its predicted species: monitoring's drift reference."""
    import mlflow

    reference = fit_rows[list(contract.FEATURE_NAMES)].astype(np.float64).reset_index(drop=True)
    reference[contract.LABEL] = fit_rows[contract.LABEL].to_numpy()
    reference["prediction"] = np.asarray(contract.CLASSES)[probabilities.argmax(axis=1)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(REFERENCE_ARTIFACT).name
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(REFERENCE_ARTIFACT).parent))


# ---------------------------------------------------------------------------------------------
# 5. aggregate the folds
# ---------------------------------------------------------------------------------------------
def aggregate(context: Mapping[str, Any], fold_results: Sequence[Mapping[str, Any]],
              settings: Settings | None = None) -> dict[str, float]:
    """Mean and std of each fold metric across the folds, logged to the parent run."""
    run = PenguinRun.from_dict(context)
    config, mlflow_client = run.training, run.client()
    with recorded(mlflow_client, run, "aggregate"):
        results = sorted((dict(r) for r in fold_results), key=lambda r: r["fold"])
        found = [r["fold"] for r in results]
        if found != list(range(config.folds)):
            raise RuntimeError(f"expected one result for each of folds 0..{config.folds - 1}, got folds {found}")
        summary = classification_metrics.summarize([r["metrics"] for r in results])
        tracking.log_metrics(mlflow_client, run.parent_run_id, summary)
    log.info("penguin folds aggregated", extra={"run_name": run.run_name, **summary})
    return summary


# ---------------------------------------------------------------------------------------------
# 6. register, compare with the champion on the same holdout, move the aliases
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


def register_and_promote(context: Mapping[str, Any], summary: Mapping[str, float], final: Mapping[str, Any],
                         settings: Settings | None = None) -> dict[str, Any]:
    """Register the final model, set @challenger to it, and @champion when it is not worse on the holdout.

    Aliases move last; a failure after registration undoes this run's alias changes, tags the version
    `promotion_decision=failed` and marks the run FAILED.
    """
    from mlflow.exceptions import MlflowException

    run, settings = PenguinRun.from_dict(context), settings or get_settings()
    config, mlflow_client = run.training, run.client()
    name = config.model_name
    with recorded(mlflow_client, run, "register_and_promote"):
        frame, splits = load_training_set(run, settings)
        holdout = frame.iloc[splits.holdout]
        for stale in registry.undecided_versions(mlflow_client, name, run.parent_run_id):
            registry.mark_failed(mlflow_client, name, stale, "register_and_promote", RuntimeError(
                "the attempt that registered this version stopped before deciding; a later attempt registered "
                "another version"))
        try:
            mlflow_client.create_registered_model(name, tags={"project": PENGUINS.name},
                                                  description=PENGUINS.description)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        metrics = final["holdout_metrics"]
        version = str(mlflow_client.create_model_version(name, final["model_uri"], run_id=run.parent_run_id, tags={
            "project": PENGUINS.name, "holdout_accuracy": f"{metrics['accuracy']:.6f}",
            "holdout_macro_f1": f"{metrics['macro_f1']:.6f}", "majority_baseline": f"{final['majority_baseline']:.6f}",
            **{k: f"{v:.6f}" for k, v in summary.items()}, "training_set_sha256": fingerprint(frame),
            "features": ",".join(contract.FEATURE_NAMES), "git_commit": run.git_commit, "run_name": run.run_name},
            model_id=final.get("model_id")).version)
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


# ---------------------------------------------------------------------------------------------
# every step, in this process
# ---------------------------------------------------------------------------------------------
def run(overrides: Mapping[str, Any], run_name: str, *, source: str = "cli",
        settings: Settings | None = None) -> dict[str, Any]:
    """Every step in order, in this process: what `python -m training_pipeline.penguins` runs."""
    context = start(overrides, run_name, source=source, settings=settings)
    folds = prepare_training_set(context, settings)
    results = [cross_validate_fold(context, fold, settings) for fold in folds]
    final = fit_final_model(context, settings)
    summary = aggregate(context, results, settings)
    decision = register_and_promote(context, summary, final, settings)
    return {"run_name": run_name, "parent_run_id": context["parent_run_id"], **summary, **decision}
