"""A rollout: which model version answers which request while a challenger is tried on live traffic.

The state is one row per registered model in PostgreSQL (mlops_platform.rollout_store); the API
workers, the monitoring service, batch scoring and `run.sh rollout` all read it there. No row means
mode `champion`: the version under the champion alias answers everything, as before rollouts.

- `shadow`: the champion answers; the challenger scores the same rows off the response path.
- `canary`: a share of the requests (small, 10 % by default) is answered by the challenger.
- `ab`: a fixed split (half by default) until a number of labelled outcomes or a time is reached.

Assignment is sticky: a key (the request's customer_id, else its request id) is hashed with the
rollout's id into a point in [0, 1), and the challenger answers when the point is below the share. The
same key gets the same variant for the whole rollout, in every worker and after restarts; raising
the share keeps every key already on the challenger there. A new rollout draws anew.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

CHAMPION = "champion"  # the variant, and the mode without a rollout
CHALLENGER = "challenger"
VARIANTS = (CHAMPION, CHALLENGER)
SHADOW, CANARY, AB = "shadow", "canary", "ab"
ROLLOUT_MODES = (SHADOW, CANARY, AB)
MODES = (CHAMPION, *ROLLOUT_MODES)
DEFAULT_SHARES = {SHADOW: 0.0, CANARY: 0.1, AB: 0.5}
DEFAULT_AB_OUTCOMES = 1000  # labelled outcomes per variant an A/B test runs for when given no end

# Registry aliases a rollout reads and moves.
CHALLENGER_ALIAS = "challenger"
PREVIOUS_CHAMPION_ALIAS = "previous_champion"


class RolloutError(ValueError):
    """A rollout request that cannot be done as asked; the message says what was expected and what to do."""


def assignment_point(rollout_id: str, key: str) -> float:
    """Where `key` falls in [0, 1) for this rollout: a stable hash, the same in every process and run."""
    digest = hashlib.blake2b(f"{rollout_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Rollout:
    """A running rollout of `challenger_version` against `champion_version` of `model_name`."""

    model_name: str
    rollout_id: str
    mode: str  # one of ROLLOUT_MODES
    share: float  # the challenger's share of the answers (canary, ab); 0 in shadow mode
    champion_version: str
    challenger_version: str
    started_at: datetime
    updated_at: datetime
    ends_at: datetime | None = None  # ab: when the test ends at the latest
    max_outcomes: int | None = None  # ab: labelled outcomes per variant it runs for

    def answering_variant(self, key: str) -> str:
        """The variant whose scores are returned for a request keyed `key`."""
        if self.mode in (CANARY, AB) and assignment_point(self.rollout_id, key) < self.share:
            return CHALLENGER
        return CHAMPION

    @property
    def shadowing(self) -> bool:
        """Whether the challenger scores every request off the response path."""
        return self.mode == SHADOW

    def version_of(self, variant: str) -> str:
        return self.challenger_version if variant == CHALLENGER else self.champion_version

    def as_dict(self) -> dict[str, Any]:
        return {key: value.isoformat() if isinstance(value, datetime) else value
                for key, value in asdict(self).items()}


def check_request(mode: str, share: float | None, max_outcomes: int | None, hours: float | None) -> float:
    """The share a rollout of `mode` runs at; RolloutError naming the problem when the request cannot run."""
    if mode not in ROLLOUT_MODES:
        raise RolloutError(f"mode must be one of {', '.join(ROLLOUT_MODES)}, got {mode!r} "
                           f"(mode {CHAMPION!r} is what `rollback` or `promote` return to)")
    if mode == SHADOW:
        if share not in (None, 0, 0.0):
            raise RolloutError(f"shadow mode returns only the champion's answers; a share ({share}) applies to "
                               "canary and ab")
        return 0.0
    share = DEFAULT_SHARES[mode] if share is None else share
    if not 0.0 < share < 1.0:
        raise RolloutError(f"share must be above 0 and below 1 (the challenger's part of the traffic), got {share}")
    if mode == CANARY and (max_outcomes is not None or hours is not None):
        raise RolloutError("a canary ends on the monitoring service's decision; --outcomes and --hours apply to ab")
    if max_outcomes is not None and max_outcomes <= 0:
        raise RolloutError(f"outcomes must be a positive number of labelled outcomes, got {max_outcomes}")
    if hours is not None and hours <= 0:
        raise RolloutError(f"hours must be positive, got {hours}")
    return share
