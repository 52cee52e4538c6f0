"""The ground floor's message checks: the dead-letter record every topic shares, timestamps, and the checks
no single topic's contract test reaches (data_pipeline's and model_serving's contracts: their own tests)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from mlops_platform import messages

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_the_dead_letter_keeps_the_payload_the_reason_and_where_it_was_read():
    raw = b'{"driver_id": 1001, "conv'
    rejection = messages.checked(lambda: messages.json_object(raw, ()))
    record = json.loads(messages.dead_letter(raw, b"1001", rejection, "driver_stats", 2, 41, NOW))
    assert record == {
        "reason": rejection.reason, "reason_class": messages.UNPARSEABLE, "field": None, "topic": "driver_stats",
        "partition": 2, "offset": 41, "key": "1001", "rejected_at": "2025-05-01T12:00:00.000+00:00",
        "payload": raw.decode(),
    }


def test_the_dead_letter_keeps_binary_payloads_as_base64():
    raw = b"\xff\x00binary"
    rejection = messages.checked(lambda: messages.json_object(raw, ()))
    record = json.loads(messages.dead_letter(raw, None, rejection, "driver_stats", 0, 0, NOW))
    assert record["payload"] is None and base64.b64decode(record["payload_base64"]) == raw


def test_format_timestamp_refuses_naive_datetimes():
    with pytest.raises(ValueError, match="timezone-aware"):
        messages.format_timestamp(datetime(2025, 5, 1))


def test_checked_returns_the_parsed_value_or_the_first_rejection():
    assert messages.checked(lambda: messages.integer({"n": 3}, "n", 0, 9)) == 3
    rejection = messages.checked(lambda: messages.integer({"n": 10}, "n", 0, 9))
    assert rejection == messages.Rejection(messages.OUT_OF_RANGE, "n", "n: expected an integer in [0, 9], got 10")


def test_a_long_value_is_cut_in_the_reason():
    rejection = messages.checked(lambda: messages.text({"id": "x" * 300}, "id"))
    assert rejection.reason_class == messages.OUT_OF_RANGE
    assert rejection.reason.endswith("got 300: " + repr("x" * 300)[:77] + "...")
