"""The steps of a penguin training run. The DAG `penguin_training` (dag_factory.py) runs each as a task;
`python -m training_pipeline.penguins` runs them in sequence (`run`). Same functions, same results.

    start -> prepare_training_set -> [cross_validate_fold x K, fit_final_model] -> aggregate
          -> penguin_promotion.register_and_promote

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
from training_pipeline import classification_metrics, tracking
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
# every step, in this process
# ---------------------------------------------------------------------------------------------
def run(overrides: Mapping[str, Any], run_name: str, *, source: str = "cli",
        settings: Settings | None = None) -> dict[str, Any]:
    """Every step in order, in this process: what `python -m training_pipeline.penguins` runs."""
    from training_pipeline import penguin_promotion
    context = start(overrides, run_name, source=source, settings=settings)
    folds = prepare_training_set(context, settings)
    results = [cross_validate_fold(context, fold, settings) for fold in folds]
    final = fit_final_model(context, settings)
    summary = aggregate(context, results, settings)
    decision = penguin_promotion.register_and_promote(context, summary, final, settings)
    return {"run_name": run_name, "parent_run_id": context["parent_run_id"], **summary, **decision}
