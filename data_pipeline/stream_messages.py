"""The message contract of the `driver_stats` topic, its validator and the dead-letter record.

One message is one driver's statistics at one instant, JSON encoded and keyed by the driver id, so
every message of a driver lands in the same partition and is consumed in the order it was produced:

    {"driver_id": 1001, "event_timestamp": "2025-05-01T12:00:00.123456+00:00",
     "created": "2025-05-01T12:00:00.123+00:00",            # optional, defaults to produced_at
     "conv_rate": 0.83, "acc_rate": 0.91, "avg_daily_trips": 17,
     "produced_at": "2025-05-01T12:00:00.125+00:00"}

Timestamps are ISO-8601 with an explicit UTC offset; a timestamp without one is rejected rather
than guessed. Unknown fields are ignored, so producers may add fields before consumers need them.
A message that breaks the contract is not dropped: the consumer sends it, with the reason found
here, to the dead-letter topic.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_FUTURE = timedelta(days=1)
MAX_DRIVER_ID = 2**63 - 1  # the offline table's bigint

REQUIRED_FIELDS = ("driver_id", "event_timestamp", "conv_rate", "acc_rate", "avg_daily_trips", "produced_at")

# Reason classes: a small, fixed set, used as a metric label and in the dead-letter record.
UNPARSEABLE = "unparseable_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
KEY_MISMATCH = "key_mismatch"
REASON_CLASSES = (UNPARSEABLE, NOT_AN_OBJECT, MISSING_FIELD, WRONG_TYPE, OUT_OF_RANGE, BAD_TIMESTAMP,
                  FUTURE_TIMESTAMP, KEY_MISMATCH)


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


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message broke the contract: a reason class, the field at fault and what was found."""

    reason_class: str
    field: str | None
    reason: str


class _Invalid(Exception):
    def __init__(self, reason_class: str, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(reason_class, field, reason)


def format_timestamp(value: datetime, timespec: str = "milliseconds") -> str:
    """ISO-8601 in UTC with an explicit offset, as the contract wants it."""
    if value.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC).isoformat(timespec=timespec)


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(payload: dict, name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(WRONG_TYPE, name, f"{name}: expected a number, got {type(value).__name__} {_short(value)}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise _Invalid(OUT_OF_RANGE, name, f"{name}: expected a number in [0, 1], got {_short(value)}")
    return float(value)


def _integer(payload: dict, name: str, minimum: int, maximum: int) -> int:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(WRONG_TYPE, name, f"{name}: expected an integer, got {type(value).__name__} {_short(value)}")
    if not minimum <= value <= maximum:
        raise _Invalid(OUT_OF_RANGE, name, f"{name}: expected an integer in [{minimum}, {maximum}], got {value}")
    return value


def _timestamp(payload: dict, name: str, now: datetime) -> datetime:
    value = payload[name]
    if not isinstance(value, str):
        raise _Invalid(WRONG_TYPE, name,
                       f"{name}: expected an ISO-8601 string, got {type(value).__name__} {_short(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(BAD_TIMESTAMP, name, f"{name}: expected an ISO-8601 timestamp, got {_short(value)}") from None
    if parsed.tzinfo is None:
        raise _Invalid(BAD_TIMESTAMP, name, f"{name}: expected a UTC offset (e.g. +00:00 or Z), got {_short(value)}")
    parsed = parsed.astimezone(UTC)
    if parsed > now + MAX_FUTURE:
        raise _Invalid(FUTURE_TIMESTAMP, name,
                       f"{name}: expected at most {MAX_FUTURE} after now ({format_timestamp(now)}), got {value}")
    return parsed


def _parse(value: bytes | None, key: bytes | None, now: datetime) -> DriverStats:
    if value is None:
        raise _Invalid(UNPARSEABLE, None, "expected a JSON object, got an empty message (null value)")
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Invalid(UNPARSEABLE, None, f"expected JSON, got unparseable bytes ({exc})") from None
    if not isinstance(payload, dict):
        raise _Invalid(NOT_AN_OBJECT, None, f"expected a JSON object, got {type(payload).__name__} {_short(payload)}")
    for name in REQUIRED_FIELDS:
        if payload.get(name) is None:
            raise _Invalid(MISSING_FIELD, name, f"{name}: required, but {'null' if name in payload else 'missing'}")

    driver_id = _integer(payload, "driver_id", 1, MAX_DRIVER_ID)
    if key is not None and key != message_key(driver_id):
        raise _Invalid(KEY_MISMATCH, "driver_id",
                       f"driver_id: expected the message key {_short(key)} to be the driver id, got {driver_id}")
    event_timestamp = _timestamp(payload, "event_timestamp", now)
    produced_at = _timestamp(payload, "produced_at", now)
    created = _timestamp(payload, "created", now) if payload.get("created") is not None else produced_at
    return DriverStats(
        driver_id=driver_id,
        event_timestamp=event_timestamp,
        created=created,
        conv_rate=_number(payload, "conv_rate"),
        acc_rate=_number(payload, "acc_rate"),
        avg_daily_trips=_integer(payload, "avg_daily_trips", 0, MAX_DRIVER_ID),
        produced_at=produced_at,
    )


def validate(value: bytes | None, key: bytes | None = None, now: datetime | None = None) -> DriverStats | Rejection:
    """A clean record, or the first contract violation found (fields are checked in a fixed order).

    `key`, when given, must be the driver id: a message under another key would land in another
    driver's partition and lose its ordering guarantee.
    """
    try:
        return _parse(value, key, now or datetime.now(UTC))
    except _Invalid as invalid:
        return invalid.rejection


def dead_letter(value: bytes | None, key: bytes | None, rejection: Rejection, topic: str, partition: int,
                offset: int, rejected_at: datetime | None = None) -> bytes:
    """The dead-letter record: the original payload untouched, why it was refused and where it was read."""
    record: dict[str, Any] = {
        "reason": rejection.reason,
        "reason_class": rejection.reason_class,
        "field": rejection.field,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode(errors="backslashreplace") if key is not None else None,
        "rejected_at": format_timestamp(rejected_at or datetime.now(UTC)),
    }
    try:
        record["payload"] = value.decode("utf-8") if value is not None else None
    except UnicodeDecodeError:
        record["payload"] = None
        record["payload_base64"] = base64.b64encode(value).decode()
    return json.dumps(record).encode()
