"""Landed files reach the offline store validated, quarantined, idempotently, on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_pipeline import generate as gen
from data_pipeline.ingest import IngestionRejected, ingest_file, ingest_interval, ingest_landing
from data_pipeline.offline_store import connect, ensure_schema
from data_pipeline.validate import ORDERS, STATS

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
    assert summary["status"] == "rejected" and summary["rejected"][0]["source"] == bad_file
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
