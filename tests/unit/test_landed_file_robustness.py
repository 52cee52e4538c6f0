"""Whatever a landed file holds, reading and validating it ends in rows, quarantined rows with a reason, or
one clear per-file error: never a crash, and never a value the offline store cannot hold."""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as arrow
import pyarrow.parquet as parquet
import pytest

from data_pipeline.landing import read_landed
from data_pipeline.load import malformed_json, raw_json
from data_pipeline.raw_csv import SHOWN_LINE_CHARS, UnreadableFile, _by_line, read_header
from data_pipeline.validate import EXACT_INTEGER, ORDERS, STATS, SchemaMismatch, TimestampWindow, validate

WINDOW = TimestampWindow(now=datetime(2024, 6, 1, tzinfo=UTC))
HEADER = b"event_timestamp,driver_id,trip_completed\n"


def order_lines(count: int, first_driver: int = 1001) -> list[bytes]:
    return [f"2024-05-01T{i % 24:02d}:00:00Z,{first_driver + i},{i % 2}".encode() for i in range(count)]


def csv_bytes(lines: list[bytes], header: bytes = HEADER) -> bytes:
    return header + b"\n".join(lines) + b"\n"


def stats_parquet(**columns) -> bytes:
    """A typed parquet file of three good stats rows, with some columns replaced."""
    table = {
        "driver_id": arrow.array([1001, 1002, 1003], arrow.int64()),
        "event_timestamp": arrow.array(["2024-05-01T00:00:00Z"] * 3),
        "created": arrow.array(["2024-05-01T00:05:00Z"] * 3),
        "conv_rate": arrow.array([0.5, 0.6, 0.7], arrow.float64()),
        "acc_rate": arrow.array([0.8, 0.8, 0.8], arrow.float64()),
        "avg_daily_trips": arrow.array([10, 11, 12], arrow.int64()),
    }
    table.update(columns)
    buffer = io.BytesIO()
    parquet.write_table(arrow.table(table), buffer)
    return buffer.getvalue()


def judged(data: bytes, file_format: str, dataset: str = STATS):
    raw = read_landed(data, file_format)
    valid, rejected = validate(raw.rows, dataset, WINDOW, row_numbers=raw.rows.index)
    return valid, dict(zip(rejected["row_number"], rejected["reason"], strict=True)), raw.malformed


# ---------------------------------------------------------------------------------------------
# Values a column cannot hold
# ---------------------------------------------------------------------------------------------
def test_non_finite_numbers_are_rejected_naming_column_and_value():
    data = stats_parquet(conv_rate=arrow.array([float("inf"), 0.6, float("nan")], arrow.float64()),
                         acc_rate=arrow.array([0.8, float("-inf"), None], arrow.float64()),
                         avg_daily_trips=arrow.array([10.0, 11.0, float("inf")], arrow.float64()))
    valid, reasons, _ = judged(data, "parquet")
    assert list(valid.index) == []
    assert reasons == {
        0: "conv_rate must be a finite number (rule finite), got inf",
        1: "acc_rate must be a finite number (rule finite), got -inf",
        2: "conv_rate must be a finite number (rule finite), got NaN; "
           "acc_rate must not be null (rule not_nullable), got null; "
           "avg_daily_trips must be a finite number (rule finite), got inf",
    }


def test_non_finite_numbers_as_text_are_rejected_too():
    raw = pd.DataFrame({"event_timestamp": ["2024-05-01T00:00:00Z"] * 3, "driver_id": ["1001", "Infinity", "1003"],
                        "trip_completed": ["1", "0", "nan"]})
    valid, rejected = validate(raw, ORDERS, WINDOW)
    assert list(valid.index) == [0]
    assert rejected["reason"].tolist() == ["driver_id must be a finite number (rule finite), got 'Infinity'",
                                           "trip_completed must be a finite number (rule finite), got 'nan'"]


def test_integers_beyond_what_bigint_keeps_exactly_are_rejected_not_wrapped():
    data = stats_parquet(driver_id=arrow.array([1001, 2**53 + 1, 1003], arrow.int64()),  # 2**53 as a float64
                         avg_daily_trips=arrow.array([10.0, 11.0, 1e20], arrow.float64()))
    valid, reasons, _ = judged(data, "parquet")
    assert valid["driver_id"].tolist() == [1001]
    assert reasons == {
        1: f"driver_id must be a whole number between -{EXACT_INTEGER} and {EXACT_INTEGER} (rule exact_integer), "
           f"got {2**53 + 1}",
        2: f"avg_daily_trips must be a whole number between -{EXACT_INTEGER} and {EXACT_INTEGER} "
           "(rule exact_integer), got 1e+20",
    }


def test_rates_too_small_for_a_postgresql_real_are_rejected():
    data = stats_parquet(conv_rate=arrow.array([1e-50, 1e-40, 0.0], arrow.float64()))
    valid, reasons, _ = judged(data, "parquet")
    assert list(valid.index) == [1, 2]  # 1e-40 is a subnormal real, 0 is 0
    assert reasons[0].startswith("conv_rate must be 0 or between 1.4e-45 and 3.403e+38 in magnitude")
    assert reasons[0].endswith("(rule real_range), got 1e-50")


def test_timestamps_beyond_pandas_range_are_outside_the_window_not_a_crash():
    far = datetime(9999, 12, 31, tzinfo=UTC)
    created = arrow.array([datetime(2024, 5, 1, tzinfo=UTC), far, far], arrow.timestamp("us", "UTC"))
    data = stats_parquet(created=created,
                         event_timestamp=arrow.array(["2024-05-01T00:00:00Z", "2024-05-01T00:00:00Z",
                                                      "9999-12-31T00:00:00Z"]))
    valid, reasons, _ = judged(data, "parquet")
    assert list(valid.index) == [0]
    window = "must be between 2015-01-01T00:00:00Z and 2024-06-02T00:00:00Z (rule timestamp_window)"
    assert reasons[1] == f"created {window}, got 9999-12-31 00:00:00+00:00"
    assert reasons[2] == (f"event_timestamp {window}, got '9999-12-31T00:00:00Z'; "
                          f"created {window}, got 9999-12-31 00:00:00+00:00")


def test_values_of_the_wrong_type_are_rejected_as_unparseable():
    data = stats_parquet(driver_id=arrow.array([True, False, True]),
                         conv_rate=arrow.array([[0.5], [0.6], None], arrow.list_(arrow.float64())),
                         acc_rate=arrow.array([b"0.8", b"0.8", b"0.8"], arrow.binary()))
    valid, reasons, _ = judged(data, "parquet")
    assert list(valid.index) == []
    assert reasons[0] == ("driver_id must be a number (rule parseable), got True; "
                          "conv_rate must be a number (rule parseable), got [0.5]")
    assert reasons[2] == ("driver_id must be a number (rule parseable), got True; "
                          "conv_rate must not be null (rule not_nullable), got null")


def test_a_flag_may_be_a_boolean_and_extra_columns_are_ignored():
    table = arrow.table({"event_timestamp": ["2024-05-01T00:00:00Z"] * 2, "driver_id": [1001, 1002],
                         "trip_completed": [True, False], "comment": ["late", None]})
    buffer = io.BytesIO()
    parquet.write_table(table, buffer)
    valid, reasons, _ = judged(buffer.getvalue(), "parquet", ORDERS)
    assert reasons == {} and valid["trip_completed"].tolist() == [1, 0]


def test_quarantine_json_never_holds_what_jsonb_refuses():
    frame = pd.DataFrame({"driver_id": [np.inf, -np.inf, np.nan, pd.NA],
                          "event_timestamp": ["a\x00b", b"\xff\x00", pd.Timestamp("2024-05-01", tz="UTC"), "\ud800"],
                          "trip_completed": [np.array([1, 2]), {"x": 1}, True, 2**70]}, dtype=object)

    def no_constants(name):
        raise AssertionError(f"JSON with {name}: PostgreSQL refuses it")

    decoded = [json.loads(text, parse_constant=no_constants) for text in raw_json(frame, ORDERS)]
    assert [row["driver_id"] for row in decoded] == ["inf", "-inf", "NaN", None]
    assert decoded[0]["event_timestamp"] == "a\\x00b" and decoded[1]["event_timestamp"] == "\\xff\\x00"
    assert decoded[3]["event_timestamp"] == "\\ud800"
    assert decoded[2]["trip_completed"] is True and decoded[3]["trip_completed"] == 2**70
    assert "\\u0000" not in "".join(raw_json(frame, ORDERS))
    assert json.loads(malformed_json(7, "1,2\x00,3")) == {"line_number": 7, "line": "1,2\\x00,3"}


# ---------------------------------------------------------------------------------------------
# Malformed CSV lines
# ---------------------------------------------------------------------------------------------
def test_malformed_csv_lines_are_set_aside_with_their_line_numbers():
    lines = order_lines(8)
    lines[1] = lines[1] + b",extra"  # line 3: too many fields
    lines[3] = b'2024-05-01T03:00:00Z,"1004,1'  # line 5: an unterminated quote
    lines[4] = b"2024-05-01T04:00:00Z,10\xff05,0"  # line 6: a byte that is no UTF-8
    lines[5] = b"2024-05-01T05:00:00Z"  # line 7: too few fields
    valid, reasons, malformed = judged(csv_bytes(lines), "csv", ORDERS)

    assert [(m.line_number, m.row_number) for m in malformed] == [(3, 1), (5, 3), (6, 4), (7, 5)]
    assert malformed[0].reason == ("line 3 has 4 fields, expected 3 (event_timestamp,driver_id,trip_completed) "
                                   "(rule well_formed_line)")
    assert "is not a valid CSV record" in malformed[1].reason
    assert "is not UTF-8 text" in malformed[2].reason and "byte 0xff at position 23" in malformed[2].reason
    assert malformed[0].text == "2024-05-01T01:00:00Z,1002,1,extra"
    assert malformed[2].text == "2024-05-01T04:00:00Z,10\\xff05,0"
    assert list(valid.index) == [0, 2, 6, 7] and reasons == {}
    assert valid["driver_id"].tolist() == [1001, 1003, 1007, 1008]


def test_an_unterminated_quote_costs_its_line_not_the_lines_after_it():
    lines = order_lines(5)
    lines[1] = b'2024-05-01T01:00:00Z,"1002,1'
    valid, reasons, malformed = judged(csv_bytes(lines), "csv", ORDERS)
    assert [m.line_number for m in malformed] == [3]
    assert valid["driver_id"].tolist() == [1001, 1003, 1004, 1005]


def test_rows_after_a_malformed_line_keep_their_file_row_numbers():
    lines = order_lines(4)
    lines[1] = b"garbage,with,too,many,fields"
    lines[3] = b"2024-05-01T00:00:00Z,1001,0"  # the same key as row 0
    valid, reasons, malformed = judged(csv_bytes(lines), "csv", ORDERS)
    assert reasons == {3: "duplicate key (driver_id=1001, event_timestamp=2024-05-01T00:00:00Z) (rule unique), "
                          "first seen at row 0"}
    assert list(valid.index) == [0, 2]


def test_a_long_malformed_line_is_kept_cut_short():
    lines = order_lines(2) + [b"x," * 5000]
    _, _, malformed = judged(csv_bytes(lines), "csv", ORDERS)
    assert malformed[0].line_number == 4 and len(malformed[0].text) < SHOWN_LINE_CHARS + 30


def test_a_clean_csv_reads_the_same_fast_or_line_by_line():
    data = csv_bytes(order_lines(50))
    fast = read_landed(data, "csv")
    slow = _by_line(data, read_header(data))
    assert fast.malformed == [] and slow.malformed == []
    pd.testing.assert_frame_equal(fast.rows, slow.rows, check_index_type=False)


def test_bom_crlf_blank_lines_and_gzip_are_read_as_their_rows():
    data = b"\xef\xbb\xbf" + csv_bytes(order_lines(3)).replace(b"\n", b"\r\n") + b"\r\n\r\n"
    for variant in (data, gzip.compress(data)):
        raw = read_landed(variant, "csv")
        assert raw.malformed == [] and raw.rows["driver_id"].tolist() == ["1001", "1002", "1003"]
    parquet_rows = read_landed(gzip.compress(stats_parquet()), "parquet").rows
    assert parquet_rows["driver_id"].tolist() == [1001, 1002, 1003]


@pytest.mark.parametrize(("data", "file_format", "error", "message"), [
    (b"", "csv", UnreadableFile, "the file is empty"),
    (b"\n\n", "csv", UnreadableFile, "the file is empty"),
    ("event_timestamp,driver_id\n".encode("utf-16"), "csv", UnreadableFile, "UTF-16"),
    (b"event_timestamp,driver_\xffid\n", "csv", UnreadableFile, "the header line is not UTF-8"),
    (b"event_timestamp,driver_id,driver_id\n", "csv", SchemaMismatch, "more than once"),
    (b"\x1f\x8b\x08\x00garbage", "csv", UnreadableFile, "gzip-compressed but cannot be decompressed"),
    (b"", "parquet", UnreadableFile, "the file is empty"),
    (b"driver_id,event_timestamp\n1,2\n", "parquet", arrow.ArrowInvalid, "Parquet magic bytes not found"),
])
def test_a_file_that_cannot_be_read_at_all_says_why(data, file_format, error, message):
    with pytest.raises(error, match=message):
        read_landed(data, file_format)


def test_a_header_without_rows_is_a_file_of_no_rows():
    raw = read_landed(HEADER, "csv")
    valid, rejected = validate(raw.rows, ORDERS, WINDOW, row_numbers=raw.rows.index)
    assert raw.malformed == [] and valid.empty and rejected.empty


def test_a_file_of_another_schema_names_the_missing_columns():
    raw = read_landed(b"driver;event_timestamp;trip\n1;2;3\n", "csv")
    with pytest.raises(SchemaMismatch, match=r"missing \['event_timestamp', 'driver_id', 'trip_completed'\]"):
        validate(raw.rows, ORDERS, WINDOW)
    wrong = read_landed(stats_parquet(), "parquet")
    with pytest.raises(SchemaMismatch, match=r"missing \['trip_completed'\]"):
        validate(wrong.rows, ORDERS, WINDOW)


def test_the_files_not_loaded_are_listed_in_one_message():
    from data_pipeline.ingest_report import IngestionBatch, IngestionReport, not_loaded_message

    batch = IngestionBatch([IngestionReport(STATS, "a.parquet"),
                            IngestionReport(ORDERS, "b.csv", status="rejected", message="the file is empty"),
                            IngestionReport(ORDERS, "c.csv", status="failed", message="ingestion failed: X")])
    assert not_loaded_message([batch.summary(STATS)]) is None
    message = not_loaded_message([batch.summary(STATS), batch.summary(ORDERS)])
    assert message.splitlines()[1:] == ["- b.csv (orders, rejected): the file is empty",
                                        "- c.csv (orders, failed): ingestion failed: X"]
    assert message.splitlines()[0].startswith("2 landed file(s) were not loaded (1 rejected, 1 failed)")
    assert batch.summary(ORDERS)["files_rejected"] == 1 and batch.summary(ORDERS)["files_failed"] == 1
    assert batch.to_dict()["status"] == "failed"
    assert [(f["source"], f["status"]) for f in batch.to_dict()["not_loaded"]] == [("b.csv", "rejected"),
                                                                                  ("c.csv", "failed")]


def test_every_outcome_but_skipped_is_a_status_ingestion_runs_accepts():
    from data_pipeline.ingest_report import STATUSES
    from data_pipeline.offline_store import DDL, RUN_STATUSES

    assert set(RUN_STATUSES) == set(STATUSES) - {"skipped"}
    assert "check (status in ('loaded', 'rejected', 'failed'))" in DDL
