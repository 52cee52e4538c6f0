"""Landed files reach the offline store validated, quarantined, idempotently, on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as arrow
import pyarrow.parquet as parquet
import pytest

from data_pipeline.ingest import ingest_file, ingest_interval, ingest_landing
from data_pipeline.ingest_report import IngestionRejected
from data_pipeline.offline_store import ensure_schema
from data_pipeline.validate import ORDERS, STATS
from mlops_platform.postgres import connect
from simulation import generate as gen

REPO_ROOT = Path(__file__).resolve().parents[2]
END = date(2024, 5, 8)
STATS_SQL = ("select driver_id, event_timestamp, created, conv_rate, acc_rate, avg_daily_trips "
             "from driver_hourly_stats order by event_timestamp, driver_id")
ORDERS_SQL = "select event_timestamp, driver_id, trip_completed from orders order by event_timestamp, driver_id"


@pytest.fixture
def store(feast_up, settings, tmp_path):
    """Settings pointing at a fresh landing folder, and empty offline tables."""
    store_settings = dataclasses.replace(settings, landing_dir=tmp_path / "landing")
    ensure_schema(store_settings)
    with connect(store_settings) as conn, conn.cursor() as cur:
        cur.execute("truncate driver_hourly_stats, orders, quarantine, ingestion_runs restart identity")
    return store_settings


def query(settings, sql: str, params: tuple = ()) -> pd.DataFrame:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("set timezone = 'UTC'")
        cur.execute(sql, params)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


def fingerprint(settings) -> dict[str, tuple]:
    """Row count and checksum of everything ingestion writes (load times excluded)."""
    checks = {
        "driver_hourly_stats": "driver_id, event_timestamp, created, conv_rate, acc_rate, avg_daily_trips, source",
        "orders": "driver_id, event_timestamp, trip_completed, source",
        "quarantine": "dataset, source, row_number, raw, reason",
        "ingestion_runs": "dataset, source, file_sha256, rows_read, rows_loaded, rows_quarantined, status",
    }
    result = {}
    for table, columns in checks.items():
        frame = query(settings, f"select count(*) as n, md5(coalesce(string_agg(row({columns})::text, '|' "
                                f"order by row({columns})::text), '')) as sum from {table}")
        result[table] = tuple(frame.iloc[0])
    return result


def without_corrupted(clean: pd.DataFrame, planted: list[gen.PlantedRow]) -> pd.DataFrame:
    """The generator's clean rows minus those a planted defect spoiled (duplicates spoil nothing)."""
    spoiled = {(p.driver_id, p.event_timestamp) for p in planted if p.kind != "duplicate_key"}
    keep = [key not in spoiled for key in zip(clean["driver_id"], clean["event_timestamp"], strict=True)]
    return clean[keep].reset_index(drop=True)


def assert_same_rows(loaded: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(loaded) == len(expected)
    for column in expected.columns:
        if expected[column].dtype == np.float64:  # stored as real
            np.testing.assert_allclose(loaded[column].astype(float), expected[column], atol=1e-6)
        elif isinstance(expected[column].dtype, pd.DatetimeTZDtype):
            assert (pd.to_datetime(loaded[column], utc=True) == expected[column]).all(), column
        else:
            assert (loaded[column].astype("int64") == expected[column]).all(), column


def day_slice(frame: pd.DataFrame, day: date) -> pd.DataFrame:
    return frame[frame["event_timestamp"].dt.date == day].reset_index(drop=True)


def test_a_landed_batch_loads_the_valid_rows_quarantines_the_rest_and_reruns_add_nothing(store):
    stats = gen.generate_driver_stats(drivers=25, days=3, end=END, seed=5)
    orders = gen.generate_orders(stats, seed=5)
    landed = gen.write_landing(stats, orders, store.landing_dir, bad_row_rate=0.03, seed=5)
    planted = {name: summary.planted for name, summary in landed.items()}
    assert all(planted.values()), "the batch must contain planted bad rows"

    batch = ingest_landing(settings=store, max_invalid_share=0.5)  # small files: the share varies a lot

    assert [r.status for r in batch.reports] == ["loaded"] * 6
    assert_same_rows(query(store, STATS_SQL), without_corrupted(stats, planted[STATS]))
    assert_same_rows(query(store, ORDERS_SQL), without_corrupted(orders, planted[ORDERS]))
    # The planner's statistics already know the load (a join planned on the truncated table's would not).
    estimates = query(store, "select relname, reltuples from pg_class where relname in ('driver_hourly_stats', "
                             "'orders')").set_index("relname")["reltuples"]
    assert estimates.to_dict() == {"driver_hourly_stats": len(query(store, STATS_SQL)),
                                   "orders": len(query(store, ORDERS_SQL))}

    quarantined = query(store, "select dataset, source, row_number, raw, reason from quarantine")
    assert {(d, s, n) for d, s, n in quarantined[["dataset", "source", "row_number"]].itertuples(index=False)} == {
        (name, p.file, p.row_number) for name, rows in planted.items() for p in rows}
    assert quarantined["reason"].str.len().gt(10).all()
    duplicates = quarantined[quarantined["reason"].str.startswith("duplicate key")]
    assert len(duplicates) == sum(p.kind == "duplicate_key" for rows in planted.values() for p in rows)
    assert set(quarantined[quarantined["dataset"] == STATS]["raw"].iloc[0]) == set(stats.columns)

    totals = batch.totals()
    assert totals["rows_loaded"] == len(query(store, STATS_SQL)) + len(query(store, ORDERS_SQL))
    assert totals["rows_quarantined"] == len(quarantined)
    assert totals["rows_read"] == sum(s.rows_written for s in landed.values())
    runs = query(store, "select status, rows_read, rows_loaded, rows_quarantined from ingestion_runs")
    assert (runs["status"] == "loaded").all() and len(runs) == 6
    assert runs["rows_loaded"].sum() == totals["rows_loaded"]

    before = fingerprint(store)
    again = ingest_landing(settings=store)
    assert [r.status for r in again.reports] == ["skipped"] * 6
    assert "already loaded by ingestion run" in again.reports[0].message
    single = ingest_file(store.landing_dir / landed[STATS].files[0], STATS, settings=store)
    assert single.status == "skipped"
    assert fingerprint(store) == before

    # The same rows delivered again under another name: every key is present already.
    resent = store.landing_dir / landed[STATS].files[0].replace(".parquet", "_resent.parquet")
    shutil.copy(store.landing_dir / landed[STATS].files[0], resent)
    report = ingest_file(resent, STATS, settings=store)
    assert report.status == "loaded" and report.rows_loaded == 0
    assert report.rows_already_present == report.rows_valid > 0
    assert fingerprint(store)["driver_hourly_stats"] == before["driver_hourly_stats"]


def test_a_file_over_the_invalid_threshold_loads_nothing_but_records_why(store):
    stats = gen.generate_driver_stats(drivers=40, days=2, end=END, seed=8)
    orders = gen.generate_orders(stats, seed=8)
    first, second = date(2024, 5, 6), date(2024, 5, 7)
    good = gen.write_landing(day_slice(stats, first), day_slice(orders, first), store.landing_dir, 0.01, seed=8)
    bad = gen.write_landing(day_slice(stats, second), day_slice(orders, second), store.landing_dir, 0.2, seed=8)
    bad_file = bad[STATS].files[0]

    with pytest.raises(IngestionRejected) as rejected:
        ingest_file(store.landing_dir / bad_file, STATS, settings=store, max_invalid_share=0.05)
    message = str(rejected.value)
    report = rejected.value.reports[0]
    assert f"{report.rows_quarantined} of {report.rows_read} rows are invalid" in message
    assert "more than the allowed 5.00%" in message and bad_file in message
    assert 0.15 < report.invalid_share < 0.25 and report.rows_loaded == 0

    assert query(store, "select count(*) as n from driver_hourly_stats")["n"].iloc[0] == 0
    quarantined = query(store, "select row_number from quarantine where source = %s", (bad_file,))
    assert sorted(quarantined["row_number"]) == sorted(p.row_number for p in bad[STATS].planted)
    runs = query(store, "select status, message, rows_loaded from ingestion_runs where source = %s", (bad_file,))
    assert runs["status"].tolist() == ["rejected"] and runs["rows_loaded"].tolist() == [0]
    assert "more than the allowed 5.00%" in runs["message"].iloc[0]

    # In a batch, the rejected file loads nothing and the others load; the batch fails at the end.
    with pytest.raises(IngestionRejected, match=r"1 of 2 files rejected") as batch_rejected:
        ingest_landing(STATS, settings=store, max_invalid_share=0.05)
    assert [r.status for r in batch_rejected.value.reports] == ["loaded", "rejected"]
    sources = query(store, "select distinct source from driver_hourly_stats")["source"].tolist()
    assert sources == good[STATS].files

    # The CLI says so too, and exits non-zero.
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.ingest", "--dataset", "driver_stats", "--max-invalid-share", "0.05",
         "--landing", str(store.landing_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "rejected" and summary["not_loaded"][0]["source"] == bad_file
    assert summary["totals"]["files_skipped"] == 1  # the good file was loaded before


def test_an_interval_ingests_only_its_partitions(store):
    stats = gen.generate_driver_stats(drivers=10, days=3, end=END, seed=9)
    landed = gen.write_landing(stats, gen.generate_orders(stats, seed=9), store.landing_dir, 0.01, seed=9)

    batch = ingest_interval("2024-05-06", "2024-05-07", settings=store, max_invalid_share=0.5)

    expected = ["driver_stats/date=2024-05-06/driver_stats_2024-05-06.parquet",
                "orders/date=2024-05-06/orders_2024-05-06.csv"]
    assert [r.source for r in batch.reports] == expected
    assert sorted(query(store, "select distinct source from driver_hourly_stats union "
                               "select distinct source from orders")["source"]) == expected
    days = query(store, "select distinct (event_timestamp at time zone 'UTC')::date as day from driver_hourly_stats")
    assert days["day"].tolist() == [date(2024, 5, 6)]

    everything = ingest_interval("2024-05-01", "2024-05-09", settings=store, max_invalid_share=0.5)
    statuses = {r.source: r.status for r in everything.reports}
    assert sorted(statuses) == sorted(landed[STATS].files + landed[ORDERS].files)
    assert {s for f, s in statuses.items() if f in expected} == {"skipped"}
    assert list(statuses.values()).count("loaded") == 4


# ---------------------------------------------------------------------------------------------
# Files that are bad in ways of their own: each ends in quarantine or a per-file outcome, never a stopped batch
# ---------------------------------------------------------------------------------------------
def run_cli(store, *args: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.ingest", "--landing", str(store.landing_dir), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    return result.returncode, json.loads(lines[-1])


def runs_by_source(store) -> dict[str, tuple]:
    runs = query(store, "select source, status, rows_read, rows_loaded, rows_quarantined, message from ingestion_runs")
    return {row.source: (row.status, row.rows_read, row.rows_loaded, row.rows_quarantined, row.message)
            for row in runs.itertuples(index=False)}


def rewrite_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write numpy columns as they are: NaN stays NaN (pandas' own conversion would make it a null)."""
    parquet.write_table(arrow.table({c: arrow.array(frame[c].to_numpy()) for c in frame.columns}), path)


def test_non_finite_values_are_quarantined_and_a_bad_file_stops_no_other(store):
    stats = gen.generate_driver_stats(drivers=20, days=2, end=END, seed=21)
    orders = gen.generate_orders(stats, seed=21)
    landed = gen.write_landing(stats, orders, store.landing_dir, 0.0, seed=21)
    spoiled, unreadable = (store.landing_dir / f for f in landed[STATS].files)
    frame = parquet.read_table(spoiled).to_pandas()
    frame["conv_rate"] = frame["conv_rate"].astype(float)
    frame.loc[3, "conv_rate"], frame.loc[4, "acc_rate"], frame.loc[5, "conv_rate"] = np.inf, -np.inf, np.nan
    frame["avg_daily_trips"] = frame["avg_daily_trips"].astype("int64")
    frame.loc[6, "avg_daily_trips"] = 2**60  # an int64 that bigint holds but float64 does not hold exactly
    rewrite_parquet(spoiled, frame)
    unreadable.write_bytes(b"PAR1 this is not a parquet file")

    code, summary = run_cli(store, "--max-invalid-share", "0.5")

    assert code == 2, summary
    assert [(r["source"], r["status"]) for r in summary["not_loaded"]] == [(landed[STATS].files[1], "rejected")]
    assert "cannot be read as driver_stats rows" in summary["not_loaded"][0]["message"]
    assert summary["totals"]["files_loaded"] == 3
    assert_same_rows(query(store, ORDERS_SQL), orders)  # the other dataset, untouched by the bad files
    loaded_stats = query(store, "select driver_id, event_timestamp from driver_hourly_stats")
    assert len(loaded_stats) == len(frame) - 4
    quarantined = query(store, "select row_number, raw, reason from quarantine order by row_number")
    assert quarantined["row_number"].tolist() == [3, 4, 5, 6]
    assert [raw["conv_rate"] for raw in quarantined["raw"]][0] == "inf"
    assert quarantined["reason"].tolist() == [
        "conv_rate must be a finite number (rule finite), got inf",
        "acc_rate must be a finite number (rule finite), got -inf",
        "conv_rate must be a finite number (rule finite), got NaN",
        "avg_daily_trips must be a whole number between -9007199254740991 and 9007199254740991 "
        f"(rule exact_integer), got {2**60}",
    ]
    runs = runs_by_source(store)
    assert sorted(runs) == sorted(landed[STATS].files + landed[ORDERS].files), "every file has its run"
    assert runs[landed[STATS].files[0]][:4] == ("loaded", len(frame), len(frame) - 4, 4)
    assert runs[landed[STATS].files[1]][0] == "rejected" and "cannot be read" in runs[landed[STATS].files[1]][4]


def test_malformed_csv_lines_are_quarantined_with_their_line_numbers_and_the_rest_loads(store):
    stats = gen.generate_driver_stats(drivers=30, days=1, end=END, seed=22)
    orders = gen.generate_orders(stats, seed=22)
    landed = gen.write_landing(stats, orders, store.landing_dir, 0.0, seed=22)
    source = landed[ORDERS].files[0]
    path = store.landing_dir / source
    lines = path.read_bytes().split(b"\n")
    spoiled = {  # 1-based line number (the header is line 1) -> the line as it now reads
        5: lines[4] + b",surplus",
        9: lines[8].rsplit(b",", 1)[0] + b',"1',  # an unterminated quote
        12: lines[11].replace(b",", b",\xff", 1),  # a byte that is no UTF-8
    }
    for number, line in spoiled.items():
        lines[number - 1] = line
    path.write_bytes(b"\n".join(lines))

    report = ingest_file(path, ORDERS, settings=store, max_invalid_share=0.2)

    assert report.status == "loaded" and report.rows_read == len(orders)
    assert report.rows_quarantined == 3 and report.rows_loaded == len(orders) - 3
    quarantined = query(store, "select row_number, raw, reason from quarantine where source = %s "
                               "order by row_number", (source,))
    assert quarantined["row_number"].tolist() == [3, 7, 10]  # row N is line N + 2
    assert [raw["line_number"] for raw in quarantined["raw"]] == [5, 9, 12]
    assert quarantined["raw"].iloc[0]["line"] == spoiled[5].decode()
    assert "\\xff" in quarantined["raw"].iloc[2]["line"]
    assert quarantined["reason"].iloc[0].startswith("line 5 has 4 fields, expected 3")
    assert quarantined["reason"].iloc[1].startswith("line 9 is not a valid CSV record")
    assert quarantined["reason"].iloc[2].startswith("line 12 is not UTF-8 text")
    expected = orders.drop(index=[3, 7, 10]).reset_index(drop=True)
    assert_same_rows(query(store, ORDERS_SQL), expected.sort_values(["event_timestamp", "driver_id"]))


def test_a_file_postgresql_refuses_is_recorded_as_failed_and_the_others_load(store):
    stats = gen.generate_driver_stats(drivers=10, days=2, end=END, seed=23)
    orders = gen.generate_orders(stats, seed=23)
    landed = gen.write_landing(stats, orders, store.landing_dir, 0.0, seed=23)
    refused = landed[ORDERS].files[1]
    with connect(store) as conn, conn.cursor() as cur:  # something only PostgreSQL knows to refuse
        cur.execute("alter table orders add constraint test_refuses_the_last_day "
                    "check (event_timestamp < '2024-05-07T00:00:00Z') not valid")
    try:
        with pytest.raises(IngestionRejected, match="1 of 4 files rejected or failed") as raised:
            ingest_landing(settings=store)
    finally:
        with connect(store) as conn, conn.cursor() as cur:
            cur.execute("alter table orders drop constraint if exists test_refuses_the_last_day")

    statuses = {r.source: r.status for r in raised.value.reports}
    assert statuses.pop(refused) == "failed" and set(statuses.values()) == {"loaded"}
    failed = next(r for r in raised.value.reports if r.source == refused)
    assert "ingestion failed" in failed.message and "test_refuses_the_last_day" in failed.message
    assert set(query(store, "select distinct source from orders")["source"]) == {landed[ORDERS].files[0]}
    runs = runs_by_source(store)
    assert sorted(runs) == sorted(landed[STATS].files + landed[ORDERS].files)
    assert runs[refused][:3] == ("failed", failed.rows_read, 0) and runs[refused][4].startswith("ingestion failed")
    assert {status for source, (status, *_) in runs.items() if source != refused} == {"loaded"}

    again = ingest_landing(settings=store)  # once PostgreSQL takes it, the same file loads
    assert {r.source: r.status for r in again.reports}[refused] == "loaded"


def test_whole_file_problems_each_end_in_a_rejected_run_with_a_reason(store):
    stats = gen.generate_driver_stats(drivers=5, days=7, end=END, seed=24)
    orders = gen.generate_orders(stats, seed=24)
    landed = gen.write_landing(stats, orders, store.landing_dir, 0.0, seed=24)
    files = [store.landing_dir / f for f in landed[ORDERS].files]
    header = files[0].read_bytes().split(b"\n", 1)[0]
    files[0].write_bytes(b"")
    files[1].write_bytes(header + b"\n")
    files[2].write_bytes(gzip.compress(b"\xef\xbb\xbf" + files[2].read_bytes()))
    files[3].write_text(files[3].read_text(), encoding="utf-16")
    files[4].write_bytes(b"driver;event_timestamp;trip\n1;2;3\n")
    files[5].write_bytes(files[5].read_bytes().replace(b"2024-05-", b"9999-05-", 1))  # past pandas' range
    parquet.write_table(arrow.table({"driver_id": [1001], "conv_rate": [0.5]}), files[6].with_suffix(".parquet"))
    files[6].unlink()

    code, summary = run_cli(store, "--dataset", "orders", "--max-invalid-share", "0.5")

    assert code == 2, summary
    runs = runs_by_source(store)
    names = [f.relative_to(store.landing_dir).as_posix() for f in files[:6]] + [
        files[6].with_suffix(".parquet").relative_to(store.landing_dir).as_posix()]
    assert sorted(runs) == sorted(names), "every file has its run"
    outcome = {name: (runs[name][0], runs[name][4] or "") for name in names}
    assert outcome[names[0]][0] == "rejected" and "the file is empty" in outcome[names[0]][1]
    assert outcome[names[1]] == ("loaded", f"{names[1]} has a header but no rows")
    assert outcome[names[2]][0] == "loaded" and runs[names[2]][2] > 0
    assert outcome[names[3]][0] == "rejected" and "UTF-16" in outcome[names[3]][1]
    assert outcome[names[4]][0] == "rejected" and "missing ['event_timestamp', 'driver_id'" in outcome[names[4]][1]
    assert outcome[names[5]][0] == "loaded" and runs[names[5]][3] == 1
    assert outcome[names[6]][0] == "rejected"
    assert "missing ['event_timestamp', 'trip_completed']" in outcome[names[6]][1]
    reason = query(store, "select reason from quarantine where source = %s", (names[5],))["reason"].iloc[0]
    assert reason.startswith("event_timestamp must be between 2015-01-01T00:00:00Z and")
    assert summary["totals"]["files_rejected"] == 4 and summary["totals"]["files_loaded"] == 3
