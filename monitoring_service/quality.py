"""Live model quality: the champion's scores against the outcomes that came back.

The score is a completion probability and the label is 0 or 1, so RMSE and MAE are those of the
training pipeline's regression, and ROC AUC says how well the score ranks; AUC exists only when both
outcomes occur in the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LiveQuality:
    rows: int
    rmse: float
    mae: float
    roc_auc: float | None


def live_quality(scores: np.ndarray, labels: np.ndarray) -> LiveQuality:
    """RMSE = sqrt(mean((score - label)^2)), MAE = mean(|score - label|), ROC AUC when both classes occur."""
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"expected one label per score, got shapes {scores.shape} and {labels.shape}")
    if not scores.size:
        raise ValueError("expected labelled predictions, got none")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(f"expected labels 0 or 1, found {sorted(set(labels.tolist()) - {0.0, 1.0})[:5]}")
    error = scores - labels
    auc = float(roc_auc_score(labels, scores)) if np.unique(labels).size == 2 else None
    return LiveQuality(int(scores.size), math.sqrt(float(np.mean(error ** 2))), float(np.mean(np.abs(error))), auc)
