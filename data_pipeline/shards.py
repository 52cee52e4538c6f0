"""Shards of the drivers for materialization: driver_id modulo the shard count, nothing else.

A shard is (index, count) and holds the drivers with driver_id mod count == index, so every driver is in
exactly one shard, a driver stays in the same shard from run to run, and no shard needs a look at the data
first (a shard with no drivers in the window is fine: it writes nothing). Within a shard, `parts()` splits
the work further by the same rule, so one task can read the next part while it writes the last one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"a shard needs count >= 1 and 0 <= index < count, got index={self.index} "
                             f"count={self.count}")

    def holds(self, driver_id: int) -> bool:
        return shard_of(driver_id, self.count) == self.index

    def sql_condition(self, column: str = "driver_id") -> str:
        """The WHERE condition for this shard's rows (PostgreSQL's mod keeps the sign: made non-negative)."""
        if self.count == 1:
            return "true"
        return f"mod(mod({column}, {self.count}) + {self.count}, {self.count}) = {self.index}"

    def parts(self, parts: int) -> list[Shard]:
        """This shard split in `parts` shards of count*parts: (d mod count*parts) mod count == d mod count."""
        if parts < 1:
            raise ValueError(f"parts must be >= 1, got {parts}")
        return [Shard(self.index + self.count * p, self.count * parts) for p in range(parts)]

    def to_dict(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}

    @classmethod
    def from_dict(cls, value: dict) -> Shard:
        return cls(int(value["index"]), int(value["count"]))


def shard_of(driver_id: int, count: int) -> int:
    """The shard index of a driver: Python's % is already non-negative for a positive count."""
    return int(driver_id) % count


def plan_shards(count: int) -> list[Shard]:
    """All `count` shards, in index order."""
    if count < 1:
        raise ValueError(f"MATERIALIZATION_SHARDS must be at least 1, got {count}")
    return [Shard(index, count) for index in range(count)]
