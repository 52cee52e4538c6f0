"""Feature drift of a project's served features against its champion's training reference.

The measure is the one the driver monitoring gets from Evidently for its references: the normed
Wasserstein distance, wasserstein(reference, window) / std(reference) (std floored at 0.001, as
Evidently does), computed here with scipy, without building a report per model and window. Project
windows are small (a few hundred answers), where an unchanged distribution scores 0.05-0.15 by chance,
so a measured feature drifted when its score reaches WASSERSTEIN_THRESHOLD = 0.3 (a shift of about a
third of its spread), not the driver's 0.1. A 0/1 indicator column (a one-hot island or sex) scores
the change of its share of ones instead, and drifted when that moved by SHARE_CHANGE_THRESHOLD (10
points) and by at least SHARE_CHANGE_ERRORS standard errors of a window of its size (300 rows of a 50/50
share wander about 3 points, 60 rows about 6.5): complementary columns (female/male) move together, so
a chance wobble of one would otherwise count twice.

A model drifted when at least MIN_DRIFTED_FEATURES of its features did (all of them for a model with
fewer features), or when the share of its features that drifted reaches the share threshold
(DRIFT_SHARE_THRESHOLD): shifting two of the penguin model's nine features (body mass and flipper
length, the scenario's --drifted) is a drift, one feature crossing alone is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_DRIFTED_FEATURES = 2
WASSERSTEIN_THRESHOLD = 0.3
SHARE_CHANGE_THRESHOLD = 0.1
SHARE_CHANGE_ERRORS = 3.0
STD_FLOOR = 0.001


@dataclass(frozen=True)
class ModelDrift:
    features: tuple[str, ...]
    scores: dict[str, float]  # feature -> normed Wasserstein distance
    drifted: dict[str, bool]
    share: float  # share of the features that drifted
    detected: bool  # the model's decision (module docstring)

    @property
    def drifted_features(self) -> list[str]:
        return [feature for feature in self.features if self.drifted[feature]]


def normed_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(reference, current) / max(float(np.std(reference)), STD_FLOOR))


def is_indicator(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def drift_score(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """(score, its threshold): the change of the share of ones for a 0/1 column of the reference, else the
    normed Wasserstein distance."""
    if is_indicator(reference):
        share = float(np.mean(reference))
        standard_error = math.sqrt(share * (1 - share) / current.size)
        threshold = max(SHARE_CHANGE_THRESHOLD, SHARE_CHANGE_ERRORS * standard_error)
        return abs(float(np.mean(current)) - share), threshold
    return normed_wasserstein(reference, current), WASSERSTEIN_THRESHOLD


def column(frame: pd.DataFrame, feature: str, what: str) -> np.ndarray:
    if feature not in frame.columns:
        raise ValueError(f"expected the {what} to have feature {feature!r}, found columns {list(frame.columns)}")
    values = pd.to_numeric(frame[feature], errors="coerce").dropna().to_numpy(dtype=np.float64)
    if not values.size:
        raise ValueError(f"expected values of {feature!r} in the {what}, found only nulls")
    return values


def drift_decision(drifted: int, features: int, share_threshold: float) -> bool:
    """At least MIN_DRIFTED_FEATURES (or all, for fewer features) drifted, or their share reached the threshold."""
    return drifted >= min(MIN_DRIFTED_FEATURES, features) or drifted / features >= share_threshold


def model_drift(reference: pd.DataFrame, current: pd.DataFrame, features: Sequence[str],
                share_threshold: float) -> ModelDrift:
    """Each feature's drift score, which drifted, their share and the model's decision."""
    features = tuple(features)
    if not features:
        raise ValueError("expected at least one feature to watch, got none")
    judged = {feature: drift_score(column(reference, feature, "reference"), column(current, feature, "window"))
              for feature in features}
    scores = {feature: score for feature, (score, _) in judged.items()}
    drifted = {feature: score >= threshold for feature, (score, threshold) in judged.items()}
    count = sum(drifted.values())
    return ModelDrift(features, scores, drifted, count / len(features),
                      drift_decision(count, len(features), share_threshold))
