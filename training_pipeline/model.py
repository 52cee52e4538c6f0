"""The model and how it is scored: imputer, scaler and ElasticNet in one sklearn Pipeline, and its metrics.

trip_completed is 0/1 and the model is a regression: its score orders drivers by how likely they are
to complete a trip, which is what ranking needs. RMSE, MAE and R² say how close the score is to the
outcome; ROC AUC says how well it orders drivers, and is what promotion is decided on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from training_pipeline.training_set import LABEL

METRICS = ("rmse", "mae", "r2", "roc_auc")
# MLflow saves sklearn models with skops (no arbitrary code on load); the fitted imputer keeps a
# numpy dtype, which skops asks to be trusted explicitly.
SKOPS_TRUSTED_TYPES = ["numpy.dtype"]


def make_model(alpha: float, l1_ratio: float, seed: int) -> Pipeline:
    """Unfitted. The imputer matters at serving time, when a driver's online features are missing."""
    return Pipeline([
        ("impute", SimpleImputer(strategy="median")),
        ("scale", StandardScaler()),
        ("regress", ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=seed, selection="random",
                               max_iter=10_000)),
    ])


def requirements() -> list[str]:
    """What loading the model needs, pinned to this environment; not the whole platform's lock file."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "scikit-learn", "numpy", "scipy", "pandas",
                                                              "skops")]


def inputs(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The model's input: the features in the service's order, all float64 (the serving contract)."""
    return frame[features].astype(np.float64)


def target(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(np.float64)


def evaluate(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R² and ROC AUC (NaN when y_true holds one class only)."""
    y_true, score = np.asarray(y_true, np.float64), np.asarray(score, np.float64)
    both_classes = len(np.unique(y_true)) == 2
    return {
        "rmse": float(np.sqrt(mean_squared_error(y_true, score))),
        "mae": float(mean_absolute_error(y_true, score)),
        "r2": float(r2_score(y_true, score)),
        "roc_auc": float(roc_auc_score(y_true, score)) if both_classes else float("nan"),
    }


def fold_bounds(rows: int, folds: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) blocks of a time-sorted frame, sizes differing by at most one.

    Time-ordered blocks, not shuffled rows: labels of one driver close in time share nearly the same
    features, so shuffling puts near-duplicates on both sides of a split and flatters the score.
    Contiguous blocks keep neighbours together (they meet only at block edges), while each label is
    still tested exactly once and every fold trains on the same amount of data.
    """
    if folds < 2 or rows < folds:
        raise ValueError(f"need folds >= 2 and at least one row per fold, got {rows} rows for {folds} folds")
    sizes = np.full(folds, rows // folds)
    sizes[: rows % folds] += 1
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for size, stop in zip(sizes, stops, strict=True)]


@dataclass
class FoldResult:
    fold: int
    model: Pipeline
    train_index: np.ndarray
    test_index: np.ndarray
    metrics: dict[str, float]


def fit_fold(fit_part: pd.DataFrame, features: list[str], fold: int, folds: int, alpha: float,
             l1_ratio: float, seed: int) -> FoldResult:
    """Fit a fresh pipeline on every block but `fold`, score it on `fold`.

    The imputer and scaler are fitted inside the pipeline on the training rows only, so nothing
    about the test block (its means, its spread) reaches the model.
    """
    start, stop = fold_bounds(len(fit_part), folds)[fold]
    positions = np.arange(len(fit_part))
    test_index = positions[start:stop]
    train_index = np.concatenate([positions[:start], positions[stop:]])
    train, test = fit_part.iloc[train_index], fit_part.iloc[test_index]
    model = make_model(alpha, l1_ratio, seed).fit(inputs(train, features), target(train))
    metrics = evaluate(target(test), model.predict(inputs(test, features)))
    return FoldResult(fold, model, train_index, test_index, metrics)


def summarize(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """cv_<metric>_mean and cv_<metric>_std over the folds (population std; a fold's NaN AUC is skipped)."""
    summary = {}
    for metric in METRICS:
        values = np.array([m[metric] for m in fold_metrics], np.float64)
        finite = values[np.isfinite(values)]
        summary[f"cv_{metric}_mean"] = float(np.mean(finite)) if len(finite) else float("nan")
        summary[f"cv_{metric}_std"] = float(np.std(finite)) if len(finite) else float("nan")
    return summary
