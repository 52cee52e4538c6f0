"""How a classifier is scored: accuracy, per-class precision/recall/F1 and their macro averages, from a
confusion matrix.

Plain numpy, so the numbers mean the same thing in training (per fold, on the holdout) and in monitoring.
A class that is never predicted has no precision: it counts as 0 (as scikit-learn's zero_division=0 does),
so a model that ignores a class is not rewarded for it in the macro averages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """counts[i, j] = rows of true class i predicted as class j."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {len(y_true)} and {len(y_pred)}")
    outside = [v for v in np.unique(np.concatenate([y_true, y_pred])) if not 0 <= v < n_classes]
    if outside:
        raise ValueError(f"class indices must be in 0..{n_classes - 1}, got {outside}")
    counts = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def from_confusion(counts: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """accuracy, precision_<class>, recall_<class>, f1_<class>, macro_precision, macro_recall, macro_f1."""
    counts = np.asarray(counts, np.float64)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"a confusion matrix of {len(classes)} classes must be {len(classes)}x{len(classes)}, "
                         f"got {counts.shape}")
    total = counts.sum()
    if total == 0:
        raise ValueError("the confusion matrix is empty: there are no rows to score")
    hits = np.diag(counts)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    metrics = {"accuracy": float(hits.sum() / total)}
    for n, name in enumerate(classes):
        metrics |= {f"precision_{name}": float(precision[n]), f"recall_{name}": float(recall[n]),
                    f"f1_{name}": float(f1[n])}
    return metrics | {"macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
                      "macro_f1": float(f1.mean())}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict[str, float]:
    """The metrics of predicted class indices against true ones (indices into `classes`)."""
    return from_confusion(confusion_matrix(y_true, y_pred, len(classes)), classes)


def metric_names(classes: Sequence[str]) -> tuple[str, ...]:
    """Every name classification_metrics returns, in its order."""
    per_class = tuple(f"{kind}_{name}" for name in classes for kind in ("precision", "recall", "f1"))
    return ("accuracy", *per_class, "macro_precision", "macro_recall", "macro_f1")


def majority_baseline(y_train: Sequence[int], y_test: Sequence[int]) -> float:
    """Accuracy on y_test of always answering y_train's most frequent class: what a model must beat."""
    y_train, y_test = np.asarray(y_train, np.int64), np.asarray(y_test, np.int64)
    if not len(y_train) or not len(y_test):
        raise ValueError(f"the majority baseline needs rows on both sides, got {len(y_train)} and {len(y_test)}")
    majority = np.bincount(y_train).argmax()
    return float((y_test == majority).mean())


def summarize(per_fold: Sequence[dict[str, float]]) -> dict[str, float]:
    """cv_<metric>_mean and cv_<metric>_std (population std) of each metric across folds."""
    if not per_fold:
        raise ValueError("no fold results to summarize")
    summary = {}
    for name in per_fold[0]:
        values = np.array([fold[name] for fold in per_fold], np.float64)
        summary[f"cv_{name}_mean"] = float(values.mean())
        summary[f"cv_{name}_std"] = float(values.std())
    return summary
