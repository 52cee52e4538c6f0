"""What the steps of one training run share: the run's context, its folder, and how a failed step is recorded.

Under Airflow every step is a separate process: steps exchange only small JSON-safe dicts (XCom)
and the run's folder, <PLATFORM_HOME>/training/<run name>/, which holds the training set.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlops_platform.settings import Settings
from training_pipeline import dataset, tracking, training_set
from training_pipeline.config import ConfigError, TrainingConfig

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


def fit_part_and_holdout(ctx: RunContext, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                         dataset.DatasetReport]:
    """The saved training set, split into the rows the model is fitted on and the comparison holdout."""
    frame, report = dataset.load(ctx.folder(settings), ctx.features)
    fit_part, holdout = dataset.split_holdout(frame, pd.Timestamp(report.holdout_start))
    return fit_part, holdout, report


@contextmanager
def quiet_model_io() -> Iterator[None]:
    """Silence warnings while saving or loading a model.

    skops (MLflow's sklearn format) looks up each scipy ufunc in every loaded module once per process;
    in an Airflow worker that touches hundreds of deprecated Airflow attributes, and each would log a
    warning (a thousand lines and seconds per task) without changing the result.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def recorded(mlflow_client, context: RunContext, step: str) -> Iterator[None]:
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


def served_features(store, service: str) -> list[str]:
    """The features the Feast feature service serves, in its order; a ConfigError when it is not registered."""
    from feast.errors import FeatureServiceNotFoundException

    try:
        return training_set.service_features(store, service)
    except FeatureServiceNotFoundException:
        raise ConfigError(f"feature service {service!r} is not in the Feast registry: apply feast_repo "
                          "(`bash run.sh feast up` does) or fix feature_service") from None
