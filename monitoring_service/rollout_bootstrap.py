"""Bootstrap confidence intervals of live model metrics, vectorised with numpy.

A resample is a row of counts: how often each labelled outcome was drawn (a multinomial draw of n out
of n). Every metric is then a weighted sum over the original rows, so one weight matrix of B resamples
serves the Brier score, AUC, precision and recall at once, and a paired comparison (shadow mode: both
variants scored the same (request, driver)) applies the same weights to both variants' scores.
Resamples are drawn in chunks so memory stays near CHUNK_CELLS numbers whatever the sample size.

Intervals are equal-tailed percentile intervals: at confidence c, the (1-c)/2 and (1+c)/2 quantiles of
the B resampled values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

CHUNK_CELLS = 2_000_000  # weights held at once: B_chunk * n


@dataclass(frozen=True)
class Interval:
    """A metric's value on the sample and its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def rollout_seed(rollout_id: str) -> int:
    """The same resamples for the same rollout and data, in every process: evaluations are reproducible."""
    return int.from_bytes(hashlib.blake2b(rollout_id.encode(), digest_size=8).digest(), "big")


def resample_weights(rng: np.random.Generator, n: int, samples: int) -> Iterator[np.ndarray]:
    """Chunks of a (samples, n) matrix of resample counts, each row summing to n."""
    chunk = max(1, CHUNK_CELLS // max(n, 1))
    for start in range(0, samples, chunk):
        rows = min(chunk, samples - start)
        drawn = rng.integers(0, n, size=(rows, n))
        flat = (np.arange(rows)[:, None] * n + drawn).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


# ---- metrics of weighted samples: weights (B, n) -> values (B,) -------------------------------------
def brier(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean squared error of the scores, the decision metric: lower is better."""
    return weights @ ((scores - labels) ** 2) / weights.sum(axis=1)


def auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC = P(score of a completed trip > score of one not completed), ties counting half; NaN
    for a resample without both outcomes."""
    order = np.argsort(scores, kind="stable")
    scores, labels, weights = scores[order], labels[order], weights[:, order]
    positive = labels == 1
    negative_weights = np.where(positive, 0.0, weights)
    cumulative = np.concatenate([np.zeros((weights.shape[0], 1)), np.cumsum(negative_weights, axis=1)], axis=1)
    # the first and one-past-last position of each score's tie group
    _, first, counts = np.unique(scores, return_index=True, return_counts=True)
    group = np.repeat(np.arange(first.size), counts)
    below = cumulative[:, first[group]]
    tied = cumulative[:, (first + counts)[group]] - below
    positive_weights = np.where(positive, weights, 0.0)
    wins = (positive_weights * (below + 0.5 * tied)).sum(axis=1)
    pairs = positive_weights.sum(axis=1) * negative_weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def precision_at(threshold: float) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    def precision(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        predicted = (scores >= threshold).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ (predicted * labels)) / (weights @ predicted)
    return precision


def recall_at(threshold: float) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    def recall(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        predicted = (scores >= threshold).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ (predicted * labels)) / (weights @ labels)
    return recall


Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def value(metric: Metric, scores: np.ndarray, labels: np.ndarray) -> float:
    """The metric on the sample itself (every row weighted once); NaN where it does not exist."""
    return float(metric(scores, labels, np.ones((1, scores.size)))[0])


def resample(metrics: dict[str, Metric], scores: np.ndarray, labels: np.ndarray, samples: int,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`samples` bootstrap values of each metric, every metric on the same resamples."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    for weights in resample_weights(rng, scores.size, samples):
        for name, metric in metrics.items():
            chunks[name].append(metric(scores, labels, weights))
    return {name: np.concatenate(values) for name, values in chunks.items()}


def resample_paired(metrics: dict[str, Metric], challenger_scores: np.ndarray, champion_scores: np.ndarray,
                    labels: np.ndarray, samples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`samples` bootstrap values of challenger - champion of each metric on the same outcomes (shadow: both
    variants scored every request), one resample applied to both: which requests came cancels out."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    for weights in resample_weights(rng, labels.size, samples):
        for name, metric in metrics.items():
            chunks[name].append(metric(challenger_scores, labels, weights) - metric(champion_scores, labels, weights))
    return {name: np.concatenate(values) for name, values in chunks.items()}


def percentile_interval(estimate: float, resampled: np.ndarray, confidence: float) -> Interval | None:
    """The equal-tailed interval of the resampled values around `estimate`; None when the metric does not
    exist on the sample (AUC with one outcome only, precision with no score above the threshold)."""
    resampled = resampled[~np.isnan(resampled)]
    if np.isnan(estimate) or resampled.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return Interval(estimate, float(low), float(high))
