"""The message contract of the `driver_stats` topic and its validator.

One message is one driver's statistics at one instant, JSON encoded and keyed by the driver id, so
every message of a driver lands in the same partition and is consumed in the order it was produced:

    {"driver_id": 1001, "event_timestamp": "2025-05-01T12:00:00.123456+00:00",
     "created": "2025-05-01T12:00:00.123+00:00",            # optional, defaults to produced_at
     "conv_rate": 0.83, "acc_rate": 0.91, "avg_daily_trips": 17,
     "produced_at": "2025-05-01T12:00:00.125+00:00"}

Timestamps are ISO-8601 with an explicit UTC offset; a timestamp without one is rejected rather
than guessed. Unknown fields are ignored, so producers may add fields before consumers need them.
A message that breaks the contract is not dropped: the consumer sends it, with the reason found
here, to the dead-letter topic. The field checks, reason classes and dead-letter record are the
platform's (mlops_platform.messages), shared with every other topic's contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from feast_repo.features import FEATURE_NAMES, JOIN_KEY, TIMESTAMP_FIELD
from mlops_platform.messages import (
    KEY_MISMATCH,
    MAX_BIGINT,
    Invalid,
    Rejection,
    checked,
    format_timestamp,
    integer,
    json_object,
    rate,
    short,
    timestamp,
)

REQUIRED_FIELDS = (JOIN_KEY, TIMESTAMP_FIELD, *FEATURE_NAMES, "produced_at")


@dataclass(frozen=True, slots=True)
class DriverStats:
    """A message that passed validation; timestamps are timezone-aware UTC."""

    driver_id: int
    event_timestamp: datetime
    created: datetime
    conv_rate: float
    acc_rate: float
    avg_daily_trips: int
    produced_at: datetime


def message_key(driver_id: int) -> bytes:
    """The Kafka key of a driver's messages: its id, so the partition is fixed per driver."""
    return str(driver_id).encode()


def encode(stats: DriverStats) -> bytes:
    """The wire form of a valid message (event_timestamp keeps microseconds, produced_at milliseconds)."""
    return json.dumps({
        "driver_id": stats.driver_id,
        "event_timestamp": format_timestamp(stats.event_timestamp, "microseconds"),
        "created": format_timestamp(stats.created, "microseconds"),
        "conv_rate": stats.conv_rate,
        "acc_rate": stats.acc_rate,
        "avg_daily_trips": stats.avg_daily_trips,
        "produced_at": format_timestamp(stats.produced_at),
    }).encode()


def _parse(value: bytes | None, key: bytes | None, now: datetime) -> DriverStats:
    payload = json_object(value, REQUIRED_FIELDS)
    driver_id = integer(payload, "driver_id", 1, MAX_BIGINT)
    if key is not None and key != message_key(driver_id):
        raise Invalid(KEY_MISMATCH, "driver_id",
                      f"driver_id: expected the message key {short(key)} to be the driver id, got {driver_id}")
    event_timestamp = timestamp(payload, "event_timestamp", now)
    produced_at = timestamp(payload, "produced_at", now)
    created = timestamp(payload, "created", now) if payload.get("created") is not None else produced_at
    return DriverStats(
        driver_id=driver_id,
        event_timestamp=event_timestamp,
        created=created,
        conv_rate=rate(payload, "conv_rate"),
        acc_rate=rate(payload, "acc_rate"),
        avg_daily_trips=integer(payload, "avg_daily_trips", 0, MAX_BIGINT),
        produced_at=produced_at,
    )


def validate(value: bytes | None, key: bytes | None = None, now: datetime | None = None) -> DriverStats | Rejection:
    """A clean record, or the first contract violation found (fields are checked in a fixed order).

    `key`, when given, must be the driver id: a message under another key would land in another
    driver's partition and lose its ordering guarantee.
    """
    return checked(lambda: _parse(value, key, now or datetime.now(UTC)))
