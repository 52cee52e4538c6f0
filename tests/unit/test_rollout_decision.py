"""The rollout comparison's statistics and the decision table, without services.

Bootstrap intervals are checked for coverage on simulated data whose truth is known (loosely: a coverage
test of 200 replications has its own noise), the comparison on hand-made prediction-log frames, and the
decision on comparisons built directly.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlops_platform.rollout import AB, CANARY, CHALLENGER, CHAMPION, SHADOW, Rollout
from monitoring_service.rollout_bootstrap import (
    Interval,
    auc,
    brier,
    percentile_interval,
    resample,
    resample_paired,
    resample_weights,
    value,
)
from monitoring_service.rollout_comparison import Comparison, VariantStats, compare
from monitoring_service.rollout_decision import CONTINUE, PROMOTE, ROLLBACK, Bounds, decide
from monitoring_service.rollout_rows import ROLLOUT_FRAME

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
BOUNDS = Bounds(min_outcomes=200, max_error_rate=0.02, max_p99_ms=100.0)


def rollout(mode: str = CANARY, share: float = 0.1, **extra) -> Rollout:
    return Rollout("driver-ranker", "r-1", mode, share, "1", "2", NOW - timedelta(hours=1), NOW - timedelta(hours=1),
                   **extra)


# ---- bootstrap --------------------------------------------------------------------------------------
def simulated(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """True completion probabilities in [0.2, 0.8] and outcomes drawn from them."""
    truth = rng.uniform(0.2, 0.8, n)
    return truth, (rng.random(n) < truth).astype(np.float64)


def worse(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """Scores off the truth by exactly 0.1 either way: their Brier score is the truth's plus 0.01."""
    return truth + rng.choice([-0.1, 0.1], truth.size)


TRUE_BRIER = 0.5 - (0.6 ** 2 / 12 + 0.25)  # E[p(1-p)] for p uniform on [0.2, 0.8]
REPLICATIONS, CONFIDENCE, SAMPLES = 200, 0.9, 300


def coverage(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


def test_resample_weights_are_multinomial_draws_of_n_rows_in_chunks() -> None:
    chunks = list(resample_weights(np.random.default_rng(0), 2_000_000 // 300 + 7, 5))
    assert sum(chunk.shape[0] for chunk in chunks) == 5
    for chunk in chunks:
        assert (chunk.sum(axis=1) == chunk.shape[1]).all() and (chunk >= 0).all()
    big = list(resample_weights(np.random.default_rng(0), 100_000, 50))
    assert len(big) > 1 and sum(chunk.shape[0] for chunk in big) == 50, "memory stays bounded"


def test_weighted_auc_is_the_auc_of_the_resampled_rows_ties_included() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(400), 1)  # many ties
    labels = (rng.random(400) < scores).astype(np.float64)
    assert value(auc, scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    weights = next(resample_weights(rng, 400, 3))
    for row in range(3):
        drawn = np.repeat(np.arange(400), weights[row].astype(int))
        assert auc(scores, labels, weights)[row] == pytest.approx(roc_auc_score(labels[drawn], scores[drawn]))
    assert np.isnan(value(auc, scores, np.ones(400))), "AUC does not exist with one outcome only"


def test_brier_intervals_cover_the_true_brier_score_about_as_often_as_their_confidence() -> None:
    rng = np.random.default_rng(2)
    hits = []
    for _ in range(REPLICATIONS):
        truth, labels = simulated(rng, 300)
        resampled = resample({"brier": brier}, truth, labels, SAMPLES, rng)["brier"]
        found = percentile_interval(value(brier, truth, labels), resampled, CONFIDENCE)
        hits.append(found.low <= TRUE_BRIER <= found.high)
    assert 0.78 <= coverage(hits) <= 0.97, coverage(hits)


def test_unpaired_difference_intervals_cover_the_true_difference() -> None:
    rng = np.random.default_rng(3)
    hits, excludes_zero = [], []
    for _ in range(REPLICATIONS):
        champion_truth, champion_labels = simulated(rng, 400)
        challenger_truth, challenger_labels = simulated(rng, 400)
        challenger_scores = worse(rng, challenger_truth)
        ours = resample({"brier": brier}, challenger_scores, challenger_labels, SAMPLES, rng)["brier"]
        theirs = resample({"brier": brier}, champion_truth, champion_labels, SAMPLES, rng)["brier"]
        estimate = value(brier, challenger_scores, challenger_labels) - value(brier, champion_truth, champion_labels)
        found = percentile_interval(estimate, ours - theirs, CONFIDENCE)
        hits.append(found.low <= 0.01 <= found.high)
        excludes_zero.append(found.low > 0)
    assert 0.78 <= coverage(hits) <= 0.97, coverage(hits)
    assert coverage(excludes_zero) < 0.5, "400 unpaired outcomes rarely tell a 0.01 difference"


def test_paired_difference_intervals_cover_the_truth_and_are_much_narrower() -> None:
    rng = np.random.default_rng(4)
    hits, paired_widths, unpaired_widths = [], [], []
    for _ in range(REPLICATIONS):
        truth, labels = simulated(rng, 400)
        challenger_scores = worse(rng, truth)
        differences = resample_paired({"brier": brier}, challenger_scores, truth, labels, SAMPLES, rng)["brier"]
        estimate = value(brier, challenger_scores, labels) - value(brier, truth, labels)
        found = percentile_interval(estimate, differences, CONFIDENCE)
        hits.append(found.low <= 0.01 <= found.high)
        paired_widths.append(found.high - found.low)
        ours = resample({"brier": brier}, challenger_scores, labels, SAMPLES, rng)["brier"]
        theirs = resample({"brier": brier}, truth, labels, SAMPLES, rng)["brier"]
        unpaired = percentile_interval(estimate, ours - theirs, CONFIDENCE)
        unpaired_widths.append(unpaired.high - unpaired.low)
    assert 0.78 <= coverage(hits) <= 0.97, coverage(hits)
    assert np.mean(paired_widths) < 0.7 * np.mean(unpaired_widths), "pairing cancels which requests came"


# ---- the comparison of logged rows ------------------------------------------------------------------
def rows_frame(records: list[dict]) -> pd.DataFrame:
    defaults = {"driver_id": 1, "served": True, "score": 0.5, "latency_ms": 5.0, "failed": False,
                "trip_completed": np.nan}
    frame = pd.DataFrame([{**defaults, **record} for record in records])
    frame["model_version"] = np.where(frame["variant"] == CHALLENGER, "2", "1")
    return frame[list(ROLLOUT_FRAME)]


def canary_rows(rng: np.random.Generator, n: int) -> list[dict]:
    records = []
    for i in range(n):
        truth = rng.uniform(0.2, 0.8)
        variant = CHALLENGER if i % 4 == 0 else CHAMPION
        records.append({"request_id": f"q{i}", "variant": variant, "score": truth,
                        "trip_completed": float(rng.random() < truth), "latency_ms": float(i % 10)})
    return records


def test_canary_counts_served_rows_and_requests_errors_and_latency_per_variant() -> None:
    records = canary_rows(np.random.default_rng(5), 400)
    # the challenger failed 4 requests (the champion answered them as fallback), one of two drivers each
    for i in range(4):
        records.append({"request_id": f"f{i}", "variant": CHALLENGER, "failed": True, "score": np.nan,
                        "served": False, "latency_ms": 250.0, "trip_completed": 1.0})
        records.append({"request_id": f"f{i}", "driver_id": 2, "variant": CHALLENGER, "served": False,
                        "latency_ms": 250.0, "trip_completed": 1.0})
        records.append({"request_id": f"f{i}", "variant": CHAMPION, "score": 0.6, "trip_completed": 1.0})
    comparison = compare(rollout(), rows_frame(records), 0.95, 200, 0.5)
    assert comparison.challenger.requests == 104 and comparison.challenger.failed_requests == 4
    assert comparison.challenger.error_rate == pytest.approx(4 / 104)
    assert comparison.challenger.outcomes == 100, "unserved rows are not the challenger's outcomes in a canary"
    assert comparison.champion.outcomes == 304 and comparison.champion.failed_requests == 0
    assert comparison.challenger.latency_p99_ms > 200 > comparison.champion.latency_p99_ms
    brier_ = comparison.challenger.brier
    assert brier_.low < brier_.estimate < brier_.high and comparison.challenger.rmse.estimate == pytest.approx(
        brier_.estimate ** 0.5)
    assert not comparison.paired and comparison.brier_difference is not None
    assert compare(rollout(), rows_frame(records), 0.95, 200, 0.5) == comparison, "seeded by the rollout"


def test_shadow_pairs_both_variants_on_the_same_rows() -> None:
    rng = np.random.default_rng(6)
    records = []
    for i in range(300):
        truth = rng.uniform(0.2, 0.8)
        outcome = float(rng.random() < truth)
        records.append({"request_id": f"q{i}", "variant": CHAMPION, "score": truth, "trip_completed": outcome})
        records.append({"request_id": f"q{i}", "variant": CHALLENGER, "served": False, "trip_completed": outcome,
                        "score": truth + rng.choice([-0.2, 0.2])})
    comparison = compare(rollout(SHADOW, 0.0), rows_frame(records), 0.95, 500, 0.5)
    assert comparison.paired and comparison.paired_outcomes == 300
    assert comparison.challenger.outcomes == comparison.champion.outcomes == 300
    frame = pd.DataFrame(records)
    squared = (frame["score"] - frame["trip_completed"]) ** 2
    expected = squared[frame["variant"] == CHALLENGER].mean() - squared[frame["variant"] == CHAMPION].mean()
    assert comparison.brier_difference.estimate == pytest.approx(expected)
    assert comparison.brier_difference.low > 0, comparison.brier_difference
    assert decide(comparison, rollout(SHADOW, 0.0), replace(BOUNDS, min_outcomes=300), NOW).action == ROLLBACK


def test_no_outcomes_yet_gives_counts_and_no_intervals() -> None:
    records = [{"request_id": f"q{i}", "variant": CHAMPION if i % 2 else CHALLENGER} for i in range(10)]
    comparison = compare(rollout(), rows_frame(records), 0.95, 100, 0.5)
    assert comparison.challenger.requests == 5 and comparison.challenger.outcomes == 0
    assert comparison.challenger.brier is None and comparison.brier_difference is None
    assert decide(comparison, rollout(), BOUNDS, NOW).action == CONTINUE
    assert comparison.as_dict()["variants"][CHALLENGER]["brier"] is None


# ---- the decision table -----------------------------------------------------------------------------
def stats(variant: str, outcomes: int = 500, requests: int = 500, failed: int = 0, p99: float = 20.0,
          brier_: float = 0.2) -> VariantStats:
    spread = Interval(brier_, brier_ - 0.01, brier_ + 0.01)
    return VariantStats(variant, "2" if variant == CHALLENGER else "1", requests, failed, failed / requests, 5.0, p99,
                        outcomes, 0.5, spread, spread, None, None, None)


def comparison(difference: tuple[float, float] | None, mode: str = CANARY, champion: dict | None = None,
               **challenger) -> Comparison:
    interval = None if difference is None else Interval(sum(difference) / 2, *difference)
    return Comparison("r-1", mode, 0.1, mode == SHADOW, 0.95, 1000, 0.5, stats(CHAMPION, **(champion or {})),
                      stats(CHALLENGER, **challenger), None, interval, None)


@pytest.mark.parametrize(("mode", "difference", "challenger", "expected"), [
    (CANARY, (-0.03, -0.01), {}, PROMOTE),
    (CANARY, (0.01, 0.03), {}, ROLLBACK),
    (CANARY, (-0.01, 0.01), {}, CONTINUE),
    (CANARY, (-0.03, -0.01), {"outcomes": 199}, CONTINUE),
    (CANARY, None, {}, CONTINUE),
    (SHADOW, (-0.03, -0.01), {}, PROMOTE),
    (SHADOW, (0.01, 0.03), {}, ROLLBACK),
    (SHADOW, (-0.03, -0.01), {"outcomes": 10}, CONTINUE),
    # the bounds end a rollout at once, whatever its outcomes say
    (CANARY, (-0.03, -0.01), {"requests": 100, "failed": 3, "outcomes": 5}, ROLLBACK),
    (CANARY, (-0.03, -0.01), {"requests": 100, "failed": 2}, PROMOTE),
    (CANARY, (-0.03, -0.01), {"p99": 150.0, "outcomes": 5}, ROLLBACK),
    (SHADOW, (-0.03, -0.01), {"p99": 150.0}, ROLLBACK),
    # ...but not on a handful of requests, where one slow or failed request would decide
    (CANARY, (-0.01, 0.01), {"requests": 99, "failed": 50, "p99": 900.0, "outcomes": 5}, CONTINUE),
    (AB, (-0.03, -0.01), {"requests": 100, "failed": 3}, ROLLBACK),
])
def test_decision_table(mode, difference, challenger, expected) -> None:
    running = rollout(mode, 0.0 if mode == SHADOW else 0.1)
    decision = decide(comparison(difference, mode, **challenger), running, BOUNDS, NOW)
    assert decision.action == expected, decision.reason


@pytest.mark.parametrize(("champion", "challenger", "expected"), [
    # a loaded machine slows both variants past the bound: no evidence against the challenger
    ({"p99": 120.8}, {"p99": 102.1}, PROMOTE),
    ({"p99": 120.0}, {"p99": 130.0}, PROMOTE),
    ({"p99": 120.0}, {"p99": 300.0}, ROLLBACK),  # more than twice as slow: its own slowness
    ({"requests": 500, "failed": 50}, {"requests": 500, "failed": 60}, PROMOTE),  # everything fails
    ({"requests": 500, "failed": 5}, {"requests": 500, "failed": 60}, ROLLBACK),
])
def test_a_bound_both_variants_breach_is_not_held_against_the_challenger(champion, challenger, expected) -> None:
    decision = decide(comparison((-0.03, -0.01), champion=champion, **challenger), rollout(), BOUNDS, NOW)
    assert decision.action == expected, decision.reason


def test_the_reason_carries_the_numbers() -> None:
    promoted = decide(comparison((-0.03, -0.01)), rollout(), BOUNDS, NOW)
    assert "[-0.0300, -0.0100]" in promoted.reason and "version 2" in promoted.reason and "95%" in promoted.reason
    failing = decide(comparison(None, requests=200, failed=10), rollout(), BOUNDS, NOW)
    assert "10 of 200 requests (5.0%)" in failing.reason and "ROLLOUT_MAX_ERROR_RATE 2.0%" in failing.reason


@pytest.mark.parametrize(("difference", "outcomes", "ends_in", "expected"), [
    ((-0.03, -0.01), 500, None, CONTINUE),  # better already, but an A/B test runs to its end
    ((0.01, 0.03), 500, None, CONTINUE),
    ((-0.03, -0.01), 1000, None, PROMOTE),  # reached max_outcomes per variant
    ((-0.01, 0.01), 1000, None, ROLLBACK),  # at the end, not better with confidence: the champion stays
    ((0.01, 0.03), 1000, None, ROLLBACK),
    ((-0.03, -0.01), 500, timedelta(minutes=-1), PROMOTE),  # reached its end time first
    ((-0.01, 0.01), 500, timedelta(minutes=-1), ROLLBACK),
    ((-0.03, -0.01), 500, timedelta(minutes=1), CONTINUE),
])
def test_ab_decides_only_at_its_end(difference, outcomes, ends_in, expected) -> None:
    running = rollout(AB, 0.5, max_outcomes=1000, ends_at=NOW + ends_in if ends_in is not None else None)
    measured = comparison(difference, AB, outcomes=outcomes)
    measured = replace(measured, champion=replace(measured.champion, outcomes=max(outcomes, 1000)))
    decision = decide(measured, running, BOUNDS, NOW)
    assert decision.action == expected, decision.reason
    if expected != CONTINUE:
        assert decision.reason.startswith("The A/B test reached"), decision.reason


def test_ab_without_a_brier_difference_at_its_end_keeps_the_champion() -> None:
    running = rollout(AB, 0.5, ends_at=NOW - timedelta(minutes=1))
    assert decide(comparison(None, AB, outcomes=3), running, BOUNDS, NOW).action == ROLLBACK
