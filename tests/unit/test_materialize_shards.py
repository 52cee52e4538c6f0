"""The shard plan of materialization: every driver in exactly one shard, stable, empty shards allowed."""

from __future__ import annotations

import pytest

from data_pipeline.shards import Shard, plan_shards, shard_of

DRIVERS = [1, 2, 3, 1001, 1002, 1003, 1200, 50_000_000, 50_999_999, 2**40 + 3, 7_100_001]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_every_driver_is_in_exactly_one_shard(count):
    shards = plan_shards(count)
    assert [s.index for s in shards] == list(range(count)) and {s.count for s in shards} == {count}
    for driver in DRIVERS:
        assert [s.index for s in shards if s.holds(driver)] == [shard_of(driver, count)]


def test_a_driver_stays_in_its_shard_from_plan_to_plan():
    assert [shard_of(d, 4) for d in DRIVERS] == [shard_of(d, 4) for d in reversed(DRIVERS)][::-1]
    assert [shard_of(d, 4) for d in DRIVERS] == [d % 4 for d in DRIVERS]
    assert plan_shards(3) == plan_shards(3)


def test_more_shards_than_drivers_leaves_shards_empty_and_loses_no_one():
    drivers = [1001, 1002, 1003]
    held = {s.index: [d for d in drivers if s.holds(d)] for s in plan_shards(8)}
    assert sorted(d for ds in held.values() for d in ds) == drivers
    assert sum(1 for ds in held.values() if not ds) == 5


@pytest.mark.parametrize("count,parts", [(1, 4), (2, 4), (3, 2), (5, 3)])
def test_the_parts_of_a_shard_split_exactly_its_drivers(count, parts):
    drivers = range(1000, 1400)
    for shard in plan_shards(count):
        mine = [d for d in drivers if shard.holds(d)]
        by_part = [[d for d in drivers if p.holds(d)] for p in shard.parts(parts)]
        assert sorted(d for ds in by_part for d in ds) == mine


def test_the_sql_condition_selects_the_same_drivers_as_python():
    """PostgreSQL's mod keeps the dividend's sign; the condition makes it non-negative as Python's is."""

    def pg_mod(a: int, b: int) -> int:  # PostgreSQL's (and C's) remainder
        return abs(a) % b * (1 if a >= 0 else -1)

    shard = Shard(1, 4)
    condition = shard.sql_condition("d")
    assert "%" not in condition, "psycopg2 would read a % as a parameter"
    for d in (-7, -4, -1, 0, 1, 5, 1001):
        evaluated = eval(condition.replace("mod(", "pg_mod(").replace(" = ", " == "), {"pg_mod": pg_mod, "d": d})
        assert evaluated == shard.holds(d), d
    assert Shard(0, 1).sql_condition() == "true"


def test_a_shard_round_trips_through_xcom_and_refuses_nonsense():
    assert Shard.from_dict(Shard(2, 5).to_dict()) == Shard(2, 5)
    with pytest.raises(ValueError, match="0 <= index < count"):
        Shard(3, 3)
    with pytest.raises(ValueError, match="MATERIALIZATION_SHARDS must be at least 1, got 0"):
        plan_shards(0)
