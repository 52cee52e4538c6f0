"""The field checks every topic's contract is built from, and the dead-letter record they all share.

A contract module (data_pipeline.stream_messages, model_serving.prediction_messages) parses a message
with `json_object`, checks each field with the functions below and wraps the whole in `checked`, so a
broken message comes back as a `Rejection`: a reason class from the small fixed set here, the field at
fault and what was found. Every dead-letter topic of the platform therefore reads the same way.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

MAX_FUTURE = timedelta(days=1)
MAX_BIGINT = 2**63 - 1  # PostgreSQL's bigint, the type of every stored id
MAX_TEXT = 200  # identifiers (request ids, model names and versions), not free text

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

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message broke the contract: a reason class, the field at fault and what was found."""

    reason_class: str
    field: str | None
    reason: str


class Invalid(Exception):
    """Raised by a field check; `checked` turns it into the message's Rejection."""

    def __init__(self, reason_class: str, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(reason_class, field, reason)


def checked(parse: Callable[[], T]) -> T | Rejection:
    """The parsed message, or the first contract violation `parse` found."""
    try:
        return parse()
    except Invalid as invalid:
        return invalid.rejection


def format_timestamp(value: datetime, timespec: str = "milliseconds") -> str:
    """ISO-8601 in UTC with an explicit offset, as the contracts want it."""
    if value.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC).isoformat(timespec=timespec)


def short(value: Any) -> str:
    """A value as quoted in a rejection: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_object(value: bytes | None, required: tuple[str, ...]) -> dict:
    """The message as a JSON object holding every `required` field (not null)."""
    if value is None:
        raise Invalid(UNPARSEABLE, None, "expected a JSON object, got an empty message (null value)")
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid(UNPARSEABLE, None, f"expected JSON, got unparseable bytes ({exc})") from None
    if not isinstance(payload, dict):
        raise Invalid(NOT_AN_OBJECT, None, f"expected a JSON object, got {type(payload).__name__} {short(payload)}")
    for name in required:
        if payload.get(name) is None:
            raise Invalid(MISSING_FIELD, name, f"{name}: required, but {'null' if name in payload else 'missing'}")
    return payload


def rate(payload: dict, name: str) -> float:
    """A number in [0, 1] (a rate or a probability)."""
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(WRONG_TYPE, name, f"{name}: expected a number, got {type(value).__name__} {short(value)}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise Invalid(OUT_OF_RANGE, name, f"{name}: expected a number in [0, 1], got {short(value)}")
    return float(value)


def finite(payload: dict, name: str, minimum: float = -math.inf) -> float:
    """Any finite number, at least `minimum`."""
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(WRONG_TYPE, name, f"{name}: expected a number, got {type(value).__name__} {short(value)}")
    if not math.isfinite(value) or value < minimum:
        bound = f" >= {minimum:g}" if math.isfinite(minimum) else ""
        raise Invalid(OUT_OF_RANGE, name, f"{name}: expected a finite number{bound}, got {short(value)}")
    return float(value)


def integer(payload: dict, name: str, minimum: int, maximum: int) -> int:
    """An integer (not a boolean) in [minimum, maximum]."""
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(WRONG_TYPE, name, f"{name}: expected an integer, got {type(value).__name__} {short(value)}")
    if not minimum <= value <= maximum:
        raise Invalid(OUT_OF_RANGE, name, f"{name}: expected an integer in [{minimum}, {maximum}], got {value}")
    return value


def text(payload: dict, name: str, allow_int: bool = False) -> str:
    """A short identifier: 1 to MAX_TEXT characters, not blank, no NUL; an integer too if `allow_int`."""
    value = payload[name]
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        expected = "a string or an integer" if allow_int else "a string"
        raise Invalid(WRONG_TYPE, name, f"{name}: expected {expected}, got {type(value).__name__} {short(value)}")
    if not value.strip() or len(value) > MAX_TEXT:
        raise Invalid(OUT_OF_RANGE, name, f"{name}: expected 1 to {MAX_TEXT} characters, not blank, "
                                          f"got {len(value)}: {short(value)}")
    if "\x00" in value:  # PostgreSQL's text cannot hold it: the insert would fail on every retry
        raise Invalid(OUT_OF_RANGE, name, f"{name}: expected no NUL character, got {short(value)}")
    return value


def timestamp(payload: dict, name: str, now: datetime) -> datetime:
    """An ISO-8601 string with a UTC offset, at most MAX_FUTURE after `now`; returned in UTC."""
    value = payload[name]
    if not isinstance(value, str):
        raise Invalid(WRONG_TYPE, name,
                      f"{name}: expected an ISO-8601 string, got {type(value).__name__} {short(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(BAD_TIMESTAMP, name, f"{name}: expected an ISO-8601 timestamp, got {short(value)}") from None
    if parsed.tzinfo is None:
        raise Invalid(BAD_TIMESTAMP, name, f"{name}: expected a UTC offset (e.g. +00:00 or Z), got {short(value)}")
    parsed = parsed.astimezone(UTC)
    if parsed > now + MAX_FUTURE:
        raise Invalid(FUTURE_TIMESTAMP, name,
                      f"{name}: expected at most {MAX_FUTURE} after now ({format_timestamp(now)}), got {value}")
    return parsed


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
