"""When to retrain: a breach held for the sustain time, at most one trigger per cool-down.

Pure state, driven by the evaluation loop with its clock, so it can be tested with a fake one. A
breach must be seen on consecutive evaluations: one evaluation without it (or without data) starts
the sustain time over. The time of the last trigger is loaded from the trigger table at start, so a
restart does not reopen the cool-down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

DRIFT = "drift"
LIVE_RMSE = "live_rmse"
REASONS = (DRIFT, LIVE_RMSE)


@dataclass(frozen=True)
class Breach:
    reason: str  # one of REASONS
    metric: str  # the gauge it was read from
    value: float
    threshold: float


def breaches(drift_share: float | None, live_rmse: float | None, drift_threshold: float,
             rmse_threshold: float) -> list[Breach]:
    """The thresholds the window's numbers exceed (a missing number exceeds nothing)."""
    found = []
    if drift_share is not None and drift_share > drift_threshold:
        found.append(Breach(DRIFT, "monitoring_drift_share", drift_share, drift_threshold))
    if live_rmse is not None and live_rmse > rmse_threshold:
        found.append(Breach(LIVE_RMSE, "monitoring_live_rmse", live_rmse, rmse_threshold))
    return found


@dataclass
class RetrainPolicy:
    sustain: timedelta
    cooldown: timedelta
    last_trigger: datetime | None = None
    since: dict[str, datetime] = field(default_factory=dict)  # reason -> first evaluation of its streak

    def decide(self, now: datetime, seen: list[Breach]) -> Breach | None:
        """The breach to retrain for now, or None; call `triggered(now)` once the run was started."""
        current = {breach.reason: breach for breach in seen}
        self.since = {reason: self.since.get(reason, now) for reason in current}
        if self.cooling_down(now):
            return None
        for reason in REASONS:
            if reason in current and now - self.since[reason] >= self.sustain:
                return current[reason]
        return None

    def cooling_down(self, now: datetime) -> bool:
        return self.last_trigger is not None and now - self.last_trigger < self.cooldown

    def triggered(self, now: datetime) -> None:
        """A run was started: the cool-down begins and the streaks start over."""
        self.last_trigger = now
        self.since = {}
