"""Who answers during a rollout: the sticky assignment and the checks of a rollout request."""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from mlops_platform.rollout import (
    AB,
    CANARY,
    CHALLENGER,
    CHAMPION,
    SHADOW,
    Rollout,
    RolloutError,
    assignment_point,
    check_request,
)

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
POINT_OF_CUSTOMER_7 = 0.2697744148558498  # blake2b of "r-1\x00customer-7"


def rollout(mode: str = CANARY, share: float = 0.1, rollout_id: str = "r-1") -> Rollout:
    return Rollout("m", rollout_id, mode, share, "1", "2", T0, T0)


def challenger_share(plan: Rollout, keys: list[str]) -> float:
    return sum(plan.answering_variant(key) == CHALLENGER for key in keys) / len(keys)


def test_the_same_key_gets_the_same_variant_every_time_and_in_an_equal_rollout_object():
    plan = rollout(share=0.5)
    keys = [f"customer-{i}" for i in range(500)]
    first = [plan.answering_variant(key) for key in keys]
    again = [replace(plan).answering_variant(key) for key in reversed(keys)][::-1]
    assert first == again
    assert set(first) == {CHAMPION, CHALLENGER}


@pytest.mark.parametrize("share", [0.05, 0.1, 0.5, 0.9])
def test_the_challenger_share_is_within_binomial_tolerance_of_the_configured_share(share):
    keys = [uuid.UUID(int=i).hex for i in range(20_000)]  # fixed keys: the same figure on every machine
    measured = challenger_share(rollout(share=share), keys)
    sigma = math.sqrt(share * (1 - share) / len(keys))
    assert abs(measured - share) < 4 * sigma, (measured, share, sigma)


def test_raising_the_share_keeps_every_key_already_on_the_challenger():
    keys = [f"k{i}" for i in range(5000)]
    small, large = rollout(share=0.1), rollout(share=0.3)
    on_small = {k for k in keys if small.answering_variant(k) == CHALLENGER}
    on_large = {k for k in keys if large.answering_variant(k) == CHALLENGER}
    assert on_small and on_small < on_large


def test_a_new_rollout_draws_anew():
    keys = [f"k{i}" for i in range(2000)]
    one = {k for k in keys if rollout(share=0.5, rollout_id="a").answering_variant(k) == CHALLENGER}
    two = {k for k in keys if rollout(share=0.5, rollout_id="b").answering_variant(k) == CHALLENGER}
    overlap = len(one & two) / len(one)
    assert 0.4 < overlap < 0.6  # independent halves overlap in about half


def test_assignment_points_are_uniform_and_stable_across_processes():
    # A literal: the point must not depend on PYTHONHASHSEED or the machine, or workers would disagree.
    assert assignment_point("r-1", "customer-7") == pytest.approx(POINT_OF_CUSTOMER_7, abs=1e-12)
    points = [assignment_point("r", str(i)) for i in range(10_000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert abs(sum(points) / len(points) - 0.5) < 0.02


def test_shadow_and_champion_modes_always_answer_with_the_champion():
    for plan in (rollout(SHADOW, 0.0), rollout(CHAMPION, 0.9)):
        assert {plan.answering_variant(f"k{i}") for i in range(200)} == {CHAMPION}
    assert rollout(SHADOW, 0.0).shadowing and not rollout(CANARY).shadowing


@pytest.mark.parametrize(("mode", "share", "outcomes", "hours", "expected"), [
    (CANARY, None, None, None, 0.1), (AB, None, None, None, 0.5), (SHADOW, None, None, None, 0.0),
    (CANARY, 0.25, None, None, 0.25), (AB, 0.3, 500, 2.0, 0.3)])
def test_a_valid_request_gets_its_share(mode, share, outcomes, hours, expected):
    assert check_request(mode, share, outcomes, hours) == expected


@pytest.mark.parametrize(("mode", "share", "outcomes", "hours", "says"), [
    ("blue-green", None, None, None, "mode must be one of shadow, canary, ab"),
    (CHAMPION, None, None, None, "mode must be one of"),
    (CANARY, 0.0, None, None, "share must be above 0 and below 1"),
    (AB, 1.0, None, None, "share must be above 0 and below 1"),
    (SHADOW, 0.2, None, None, "applies to canary and ab"),
    (CANARY, 0.1, 100, None, "apply to ab"),
    (AB, 0.5, 0, None, "outcomes must be a positive number"),
    (AB, 0.5, None, -1.0, "hours must be positive")])
def test_an_invalid_request_is_refused_with_what_was_wrong(mode, share, outcomes, hours, says):
    with pytest.raises(RolloutError, match=says):
        check_request(mode, share, outcomes, hours)
