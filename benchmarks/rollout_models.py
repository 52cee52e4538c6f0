"""Challengers that misbehave on purpose, for benchmarks.bench_rollout: the platform's pipeline with one more
step that sleeps, or that fails, on every scoring. They are sklearn pipelines saved like any version (skops,
with these classes trusted), so the API loads them as it loads any challenger."""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

TRUSTED_TYPES = ["benchmarks.rollout_models.SleepStep", "benchmarks.rollout_models.FailStep"]


class SleepStep(TransformerMixin, BaseEstimator):
    """Passes its input through after `seconds`: a slow challenger."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        time.sleep(self.seconds)
        return np.asarray(x, dtype=np.float64)


class FailStep(TransformerMixin, BaseEstimator):
    """Raises on every scoring: a challenger that fails each request it sees."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        raise RuntimeError("this challenger fails on purpose (benchmarks.rollout_models.FailStep)")
