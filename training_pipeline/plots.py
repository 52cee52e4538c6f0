"""Diagnostic plots logged with a run: predicted vs actual and residuals on the holdout, metrics per fold.

matplotlib is optional: without it, `available()` is False and the steps log no plots (and say so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def predicted_vs_actual(y_true: np.ndarray, score: np.ndarray, path: Path) -> Path:
    """Score distribution per outcome, and observed completion rate per score decile (calibration)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(float(np.min(score)), float(np.max(score)) + 1e-9, 30)
    for label, name in ((0, "not completed"), (1, "completed")):
        left.hist(score[y_true == label], bins=bins, alpha=0.6, label=name)
    left.set(xlabel="predicted score", ylabel="labels", title="Score by actual outcome")
    left.legend()
    edges = np.unique(np.quantile(score, np.linspace(0, 1, 11)))  # one edge when the score is constant
    which = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, max(len(edges) - 2, 0))
    mean_score = [float(score[which == b].mean()) for b in np.unique(which)]
    mean_true = [float(y_true[which == b].mean()) for b in np.unique(which)]
    right.plot(mean_score, mean_true, "o-", label="per decile")
    low, high = min(mean_score + mean_true), max(mean_score + mean_true)
    right.plot([low, high], [low, high], "--", color="grey", label="perfect")
    right.set(xlabel="mean predicted score", ylabel="observed completion rate", title="Predicted vs actual")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def residuals(y_true: np.ndarray, score: np.ndarray, path: Path) -> Path:
    plt = _pyplot()
    residual = y_true - score
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.scatter(score, residual, s=3, alpha=0.3)
    left.axhline(0, color="grey", linestyle="--")
    left.set(xlabel="predicted score", ylabel="actual - predicted", title="Residuals vs prediction")
    right.hist(residual, bins=40)
    right.set(xlabel="actual - predicted", ylabel="labels", title="Residual distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def fold_metrics(per_fold: list[dict[str, float]], metrics: tuple[str, ...], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3.2))
    folds = np.arange(len(per_fold))
    for axis, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        values = [m[metric] for m in per_fold]
        axis.bar(folds, values)
        axis.set_xticks(folds)
        axis.axhline(float(np.nanmean(values)), color="grey", linestyle="--")
        axis.set(title=metric, xlabel="fold")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
