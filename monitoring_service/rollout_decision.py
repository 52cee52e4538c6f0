"""What to do with a running rollout, given its live comparison: promote, roll back or keep going.

A pure function of the comparison, the rollout and the time, so the whole table is unit tested:
1. Roll back at once when the challenger fails more requests than ROLLOUT_MAX_ERROR_RATE or its p99 latency
   exceeds ROLLOUT_MAX_P99_MS, once it was asked MIN_REQUESTS_FOR_BOUNDS requests (below that, one failed or
   slow request would decide; at 100 requests p99 is not the single slowest one). The breach must be the
   challenger's own: the champion, on the same traffic, keeps within the bound, or the challenger is more than
   OWN_BREACH_FACTOR times as bad. When both breach it, the platform is slow or failing (the serving alerts
   say so), and that is no evidence against the challenger.
2. canary and shadow: once both variants have ROLLOUT_MIN_OUTCOMES labelled outcomes, promote when the whole
   interval of the Brier difference (challenger - champion) at ROLLOUT_CONFIDENCE is below 0 (the challenger
   errs less), roll back when it is above 0; else keep going.
3. ab: a test of fixed size; it decides only at its end (max_outcomes labelled outcomes per variant, or
   ends_at), then promotes when the challenger is better with confidence and otherwise keeps the champion.
   The bounds of 1. still end it early.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mlops_platform.rollout import AB, Rollout
from monitoring_service.rollout_comparison import Comparison

PROMOTE, ROLLBACK, CONTINUE = "promote", "rollback", "continue"
DECISIONS = (PROMOTE, ROLLBACK, CONTINUE)
MIN_REQUESTS_FOR_BOUNDS = 100
OWN_BREACH_FACTOR = 2.0


@dataclass(frozen=True)
class Bounds:
    """The settings a decision reads (ROLLOUT_MIN_OUTCOMES, ROLLOUT_MAX_ERROR_RATE, ROLLOUT_MAX_P99_MS)."""

    min_outcomes: int
    max_error_rate: float
    max_p99_ms: float
    min_requests: int = MIN_REQUESTS_FOR_BOUNDS

    @classmethod
    def from_settings(cls, settings) -> Bounds:
        return cls(settings.rollout_min_outcomes, settings.rollout_max_error_rate, settings.rollout_max_p99_ms)


@dataclass(frozen=True)
class Decision:
    action: str  # one of DECISIONS
    reason: str  # one sentence with the numbers

    def as_dict(self) -> dict[str, str]:
        return {"action": self.action, "reason": self.reason}


def decide(comparison: Comparison, rollout: Rollout, bounds: Bounds, now: datetime) -> Decision:
    breach = _bound_breach(comparison, bounds)
    if breach is not None:
        return Decision(ROLLBACK, breach)
    if rollout.mode == AB:
        return _decide_ab(comparison, rollout, now)
    champion, challenger = comparison.champion, comparison.challenger
    fewest = min(champion.outcomes, challenger.outcomes)
    if fewest < bounds.min_outcomes:
        return Decision(CONTINUE, f"waiting for labelled outcomes: champion {champion.outcomes}, challenger "
                                  f"{challenger.outcomes}, each needs {bounds.min_outcomes} (ROLLOUT_MIN_OUTCOMES).")
    return _by_brier(comparison, undecided=CONTINUE)


def _own_breach(challenger: float | None, champion: float | None, bound: float) -> bool:
    """The challenger's number is over the bound, and not because everything is (see the module's 1.)."""
    if challenger is None or challenger <= bound:
        return False
    return champion is None or champion <= bound or challenger > OWN_BREACH_FACTOR * champion


def _bound_breach(comparison: Comparison, bounds: Bounds) -> str | None:
    champion, challenger = comparison.champion, comparison.challenger
    if challenger.requests < bounds.min_requests:
        return None
    if _own_breach(challenger.error_rate, champion.error_rate, bounds.max_error_rate):
        return (f"The challenger (version {challenger.model_version}) failed {challenger.failed_requests} of "
                f"{challenger.requests} requests ({challenger.error_rate:.1%}), above ROLLOUT_MAX_ERROR_RATE "
                f"{bounds.max_error_rate:.1%}; the champion failed {_share(champion.error_rate)}.")
    if _own_breach(challenger.latency_p99_ms, champion.latency_p99_ms, bounds.max_p99_ms):
        return (f"The challenger's (version {challenger.model_version}) p99 latency is "
                f"{challenger.latency_p99_ms:.1f} ms over {challenger.requests} requests, above ROLLOUT_MAX_P99_MS "
                f"{bounds.max_p99_ms:g} ms; the champion's is {_ms(champion.latency_p99_ms)}.")
    return None


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _decide_ab(comparison: Comparison, rollout: Rollout, now: datetime) -> Decision:
    fewest = min(comparison.champion.outcomes, comparison.challenger.outcomes)
    if rollout.max_outcomes is not None and fewest >= rollout.max_outcomes:
        ended = f"the A/B test reached {rollout.max_outcomes} labelled outcomes per variant"
    elif rollout.ends_at is not None and now >= rollout.ends_at:
        ended = f"the A/B test reached its end time {rollout.ends_at.isoformat()}"
    else:
        planned = [f"{rollout.max_outcomes} labelled outcomes per variant" if rollout.max_outcomes else "",
                   f"until {rollout.ends_at.isoformat()}" if rollout.ends_at else ""]
        return Decision(CONTINUE, f"A/B test running: champion {comparison.champion.outcomes} and challenger "
                                  f"{comparison.challenger.outcomes} labelled outcomes, planned "
                                  f"{' or '.join(p for p in planned if p)}.")
    decision = _by_brier(comparison, undecided=ROLLBACK)
    return Decision(decision.action, f"{ended[0].upper()}{ended[1:]}: {decision.reason}")


def _by_brier(comparison: Comparison, undecided: str) -> Decision:
    difference = comparison.brier_difference
    champion, challenger = comparison.champion, comparison.challenger
    if difference is None or champion.brier is None or challenger.brier is None:
        return Decision(undecided, "No Brier difference could be computed from the labelled outcomes "
                                   f"(champion {champion.outcomes}, challenger {challenger.outcomes}).")
    numbers = (f"Brier challenger {challenger.brier.estimate:.4f} vs champion {champion.brier.estimate:.4f}, "
               f"difference {difference.estimate:+.4f} with {comparison.confidence:.0%} interval "
               f"[{difference.low:+.4f}, {difference.high:+.4f}] over {challenger.outcomes} and {champion.outcomes} "
               "labelled outcomes")
    if difference.high < 0:
        return Decision(PROMOTE, f"The challenger (version {challenger.model_version}) is better: {numbers}.")
    if difference.low > 0:
        return Decision(ROLLBACK, f"The challenger (version {challenger.model_version}) is worse: {numbers}.")
    if undecided == ROLLBACK:
        return Decision(ROLLBACK, f"The challenger (version {challenger.model_version}) is not better with "
                                  f"confidence, the champion stays: {numbers}.")
    return Decision(CONTINUE, f"No difference with confidence yet: {numbers}.")
