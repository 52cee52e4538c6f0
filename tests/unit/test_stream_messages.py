"""The driver_stats message contract: what passes, what is refused and how the refusal is worded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from data_pipeline import stream_messages as sm
from data_pipeline.stream_writers import newest_per_driver
from mlops_platform import messages
from simulation.stream_producer import INVALID_KINDS, invalid_payload, synthetic_rows, valid_message

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)


def message(**changes) -> dict:
    base = {
        "driver_id": 1001,
        "event_timestamp": "2025-05-01T11:59:59.123456+00:00",
        "created": "2025-05-01T11:59:59.200Z",
        "conv_rate": 0.5,
        "acc_rate": 1,
        "avg_daily_trips": 0,
        "produced_at": "2025-05-01T11:59:59.250+00:00",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def check(payload, key: bytes | None = b"1001"):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return sm.validate(raw, key, NOW)


def test_a_valid_message_becomes_a_clean_record_in_utc():
    result = check(message(event_timestamp="2025-05-01T13:59:59.123456+02:00"))
    assert result == sm.DriverStats(
        driver_id=1001,
        event_timestamp=datetime(2025, 5, 1, 11, 59, 59, 123456, tzinfo=UTC),
        created=datetime(2025, 5, 1, 11, 59, 59, 200000, tzinfo=UTC),
        conv_rate=0.5, acc_rate=1.0, avg_daily_trips=0,
        produced_at=datetime(2025, 5, 1, 11, 59, 59, 250000, tzinfo=UTC),
    )
    assert isinstance(result.acc_rate, float)


def test_created_is_optional_and_defaults_to_produced_at():
    result = check(message(created=DROP))
    assert result.created == result.produced_at
    assert check(message(created=None)).created == result.produced_at


def test_unknown_fields_are_ignored_and_the_key_may_be_absent():
    assert isinstance(check(message(region="north"), key=None), sm.DriverStats)


def test_encode_round_trips_through_validate():
    record = check(message())
    assert sm.validate(sm.encode(record), sm.message_key(1001), NOW) == record


@pytest.mark.parametrize(("payload", "reason_class", "field", "words"), [
    (b'{"driver_id": 1001, "conv', messages.UNPARSEABLE, None, "expected JSON"),
    (b"\xff\xfe not utf-8", messages.UNPARSEABLE, None, "expected JSON"),
    (b"[1, 2]", messages.NOT_AN_OBJECT, None, "got list"),
    (message(conv_rate=DROP), messages.MISSING_FIELD, "conv_rate", "conv_rate: required, but missing"),
    (message(produced_at=None), messages.MISSING_FIELD, "produced_at", "produced_at: required, but null"),
    (message(driver_id="1001"), messages.WRONG_TYPE, "driver_id", "expected an integer, got str '1001'"),
    (message(driver_id=True), messages.WRONG_TYPE, "driver_id", "got bool"),
    (message(driver_id=0), messages.OUT_OF_RANGE, "driver_id", "got 0"),
    (message(conv_rate="0.5"), messages.WRONG_TYPE, "conv_rate", "expected a number, got str '0.5'"),
    (message(conv_rate=1.0001), messages.OUT_OF_RANGE, "conv_rate", "expected a number in [0, 1], got 1.0001"),
    (message(acc_rate=-0.1), messages.OUT_OF_RANGE, "acc_rate", "got -0.1"),
    (message(avg_daily_trips=3.5), messages.WRONG_TYPE, "avg_daily_trips", "expected an integer, got float 3.5"),
    (message(avg_daily_trips=-1), messages.OUT_OF_RANGE, "avg_daily_trips", "got -1"),
    (message(event_timestamp=1714564799), messages.WRONG_TYPE, "event_timestamp", "expected an ISO-8601 string"),
    (message(event_timestamp="yesterday"), messages.BAD_TIMESTAMP, "event_timestamp", "got 'yesterday'"),
    (message(event_timestamp="2025-05-01T11:59:59"), messages.BAD_TIMESTAMP, "event_timestamp",
     "expected a UTC offset"),
    (message(created="2025-13-01T00:00:00Z"), messages.BAD_TIMESTAMP, "created", "got '2025-13-01T00:00:00Z'"),
    (message(event_timestamp="2025-05-02T12:00:01+00:00"), messages.FUTURE_TIMESTAMP, "event_timestamp",
     "expected at most 1 day, 0:00:00 after now"),
    (message(produced_at="2025-05-03T00:00:00Z"), messages.FUTURE_TIMESTAMP, "produced_at", "got 2025-05-03T00:00:00Z"),
])
def test_a_broken_message_is_refused_with_the_field_and_the_value(payload, reason_class, field, words):
    result = check(payload)
    assert isinstance(result, messages.Rejection)
    assert (result.reason_class, result.field) == (reason_class, field)
    assert words in result.reason
    assert result.reason_class in messages.REASON_CLASSES


def test_not_a_number_is_out_of_range():
    result = check(b'{"driver_id": 1001, "event_timestamp": "2025-05-01T11:00:00Z", "conv_rate": NaN, '
                   b'"acc_rate": 0.5, "avg_daily_trips": 3, "produced_at": "2025-05-01T11:00:00Z"}')
    assert (result.reason_class, result.field) == (messages.OUT_OF_RANGE, "conv_rate")


def test_a_timestamp_just_under_a_day_ahead_is_accepted():
    ahead = (NOW + timedelta(days=1)).isoformat()
    assert isinstance(check(message(event_timestamp=ahead)), sm.DriverStats)


def test_a_message_under_another_drivers_key_is_refused():
    result = check(message(driver_id=1002), key=b"1001")
    assert (result.reason_class, result.field) == (messages.KEY_MISMATCH, "driver_id")
    assert "b'1001'" in result.reason and "1002" in result.reason


def test_an_empty_message_is_refused():
    assert sm.validate(None, None, NOW).reason_class == messages.UNPARSEABLE


def test_every_planted_invalid_kind_is_refused_with_that_reason_class():
    row = next(synthetic_rows(1, 1001, seed=1))
    assert isinstance(sm.validate(json.dumps(valid_message(row, NOW)).encode(), b"1001", NOW), sm.DriverStats)
    for kind in INVALID_KINDS:
        result = sm.validate(invalid_payload(kind, row, NOW), b"1001", NOW)
        assert isinstance(result, messages.Rejection) and result.reason_class == kind, (kind, result)


def test_newest_per_driver_keeps_the_latest_event_not_the_last_message():
    older = check(message(conv_rate=0.9, event_timestamp="2025-05-01T11:00:00Z"))
    newer = check(message(conv_rate=0.1, event_timestamp="2025-05-01T11:30:00Z"))
    other = check(message(driver_id=1002, event_timestamp="2025-05-01T10:00:00Z"), key=b"1002")
    assert sorted(newest_per_driver([newer, other, older]), key=lambda m: m.driver_id) == [newer, other]
