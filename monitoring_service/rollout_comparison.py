"""The live comparison of a rollout's two variants: each one's numbers with intervals, and their differences.

Per variant:
- requests, and the error rate: requests where the variant failed / requests it was asked to answer;
- latency p50 and p99 per request (a request's latency is that of its slowest driver row);
- labelled outcomes: its scored rows whose outcome arrived. In canary and ab only the rows it answered
  (served) count; in shadow the challenger's unserved rows count too, both variants scoring the same rows;
- completion rate of those outcomes, Brier score (mean squared error; RMSE is its root), AUC, precision and
  recall at SERVING_SCORE_THRESHOLD, each with its bootstrap interval.
Differences challenger - champion of Brier and AUC: resampled per variant (canary, ab) or paired on the
same (request, driver) (shadow). Resamples are seeded by the rollout id, so an evaluation is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlops_platform.rollout import CHALLENGER, CHAMPION, SHADOW, Rollout
from monitoring_service.rollout_bootstrap import (
    Interval,
    auc,
    brier,
    percentile_interval,
    precision_at,
    recall_at,
    resample,
    resample_paired,
    rollout_seed,
    value,
)

MIN_OUTCOMES_FOR_INTERVALS = 2  # a bootstrap of one row says nothing


@dataclass(frozen=True)
class VariantStats:
    variant: str
    model_version: str
    requests: int
    failed_requests: int
    error_rate: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    outcomes: int
    completion_rate: float | None
    brier: Interval | None
    rmse: Interval | None
    auc: Interval | None
    precision: Interval | None
    recall: Interval | None

    def as_dict(self) -> dict[str, Any]:
        return {key: value.as_dict() if isinstance(value, Interval) else value for key, value in self.__dict__.items()}


@dataclass(frozen=True)
class Comparison:
    rollout_id: str
    mode: str
    share: float
    paired: bool
    confidence: float
    bootstrap_samples: int
    threshold: float
    champion: VariantStats
    challenger: VariantStats
    paired_outcomes: int | None  # shadow: (request, driver) rows both variants scored and that have an outcome
    brier_difference: Interval | None  # challenger - champion: below 0 means the challenger is better
    auc_difference: Interval | None  # challenger - champion: above 0 means the challenger ranks better

    def variants(self) -> tuple[VariantStats, VariantStats]:
        return self.champion, self.challenger

    def as_dict(self) -> dict[str, Any]:
        return {"rollout_id": self.rollout_id, "mode": self.mode, "share": self.share, "paired": self.paired,
                "confidence": self.confidence, "bootstrap_samples": self.bootstrap_samples,
                "threshold": self.threshold, "paired_outcomes": self.paired_outcomes,
                "variants": {stats.variant: stats.as_dict() for stats in self.variants()},
                "brier_difference": _maybe(self.brier_difference), "auc_difference": _maybe(self.auc_difference)}


def _maybe(interval: Interval | None) -> dict[str, float] | None:
    return interval.as_dict() if interval else None


def labelled_rows(rows: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The rows that count as a variant's labelled outcomes in `mode`."""
    keep = ~rows["failed"] & rows["trip_completed"].notna()
    if mode != SHADOW:
        keep &= rows["served"]
    return rows[keep]


def _latency(rows: pd.DataFrame) -> tuple[float | None, float | None]:
    per_request = rows.groupby("request_id")["latency_ms"].max().dropna().to_numpy()
    if per_request.size == 0:
        return None, None
    p50, p99 = np.percentile(per_request, [50, 99])
    return float(p50), float(p99)


def _root(interval: Interval | None) -> Interval | None:
    return Interval(*(math.sqrt(max(x, 0.0)) for x in (interval.estimate, interval.low, interval.high))) \
        if interval else None


def compare(rollout: Rollout, rows: pd.DataFrame, confidence: float, samples: int, threshold: float) -> Comparison:
    """The comparison of the rollout's rows (monitoring_service.rollout_rows.ROLLOUT_FRAME)."""
    rng = np.random.default_rng(rollout_seed(rollout.rollout_id))
    metrics = {"brier": brier, "auc": auc, "precision": precision_at(threshold), "recall": recall_at(threshold)}
    stats: dict[str, VariantStats] = {}
    resampled: dict[str, dict[str, np.ndarray]] = {}
    labelled: dict[str, pd.DataFrame] = {}
    for variant in (CHAMPION, CHALLENGER):
        own = rows[rows["variant"] == variant]
        labelled[variant] = labelled_rows(own, rollout.mode)
        scores = labelled[variant]["score"].to_numpy(np.float64)
        labels = labelled[variant]["trip_completed"].to_numpy(np.float64)
        intervals: dict[str, Interval | None] = dict.fromkeys(metrics)
        if scores.size >= MIN_OUTCOMES_FOR_INTERVALS:
            resampled[variant] = resample(metrics, scores, labels, samples, rng)
            intervals = {name: percentile_interval(value(metric, scores, labels), resampled[variant][name],
                                                   confidence) for name, metric in metrics.items()}
        requests = int(own["request_id"].nunique())
        failed = int(own.loc[own["failed"], "request_id"].nunique())
        p50, p99 = _latency(own)
        stats[variant] = VariantStats(
            variant, rollout.version_of(variant), requests, failed, failed / requests if requests else None, p50, p99,
            int(scores.size), float(labels.mean()) if scores.size else None, intervals["brier"],
            _root(intervals["brier"]), intervals["auc"], intervals["precision"], intervals["recall"])

    differences, paired_outcomes = _differences(rollout, labelled, resampled, confidence, samples, rng)
    return Comparison(rollout.rollout_id, rollout.mode, rollout.share, rollout.mode == SHADOW, confidence, samples,
                      threshold, stats[CHAMPION], stats[CHALLENGER], paired_outcomes, differences.get("brier"),
                      differences.get("auc"))


def _differences(rollout: Rollout, labelled: dict[str, pd.DataFrame], resampled: dict[str, dict[str, np.ndarray]],
                 confidence: float, samples: int, rng: np.random.Generator
                 ) -> tuple[dict[str, Interval | None], int | None]:
    metrics = {"brier": brier, "auc": auc}
    if rollout.mode == SHADOW:
        pairs = labelled[CHALLENGER].merge(labelled[CHAMPION], on=["request_id", "driver_id"],
                                           suffixes=("_challenger", "_champion"))
        if len(pairs) < MIN_OUTCOMES_FOR_INTERVALS:
            return {}, len(pairs)
        challenger = pairs["score_challenger"].to_numpy(np.float64)
        champion = pairs["score_champion"].to_numpy(np.float64)
        labels = pairs["trip_completed_champion"].to_numpy(np.float64)
        differences = resample_paired(metrics, challenger, champion, labels, samples, rng)
        return {name: percentile_interval(value(metric, challenger, labels) - value(metric, champion, labels),
                                          differences[name], confidence)
                for name, metric in metrics.items()}, len(pairs)
    if CHAMPION not in resampled or CHALLENGER not in resampled:
        return {}, None

    def on_sample(variant: str, metric) -> float:
        frame = labelled[variant]
        return value(metric, frame["score"].to_numpy(np.float64), frame["trip_completed"].to_numpy(np.float64))

    return {name: percentile_interval(on_sample(CHALLENGER, metric) - on_sample(CHAMPION, metric),
                                      resampled[CHALLENGER][name] - resampled[CHAMPION][name], confidence)
            for name, metric in metrics.items()}, None
