"""Materialization into Redis: the platform's fast path, whole and in shards, against Feast's `store.materialize()`.

Feast's own materialize runs on a sample (it takes a minute per million drivers), and ours on the same
sample in the same run gives the ratio; then ours writes all the drivers with 1 shard and with N shards
side by side (one process each, as the DAG's mapped tasks run them). Raw Redis hashes of 2,000 sampled
drivers must be byte-identical to Feast's, and the sharded run's to the single one's. Rows live in a
window no other data uses. Run against the platform's PostgreSQL and Redis (`bash run.sh feast up`):

    .venv/bin/python -m benchmarks.bench_materialization --drivers 1000000 --shards 2 --feast-sample 100000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from benchmarks.common import print_table
from data_pipeline import materialize as mat
from data_pipeline.offline_store import STATS_TABLE, ensure_schema
from data_pipeline.shards import Shard
from feast_repo.features import FEATURE_NAMES, FEATURE_VIEW, JOIN_KEY
from mlops_platform.feature_store import FeastRedisEncoding, feature_store, online_store_address, value_kinds
from mlops_platform.postgres import connect
from mlops_platform.redis_client import redis_client

WINDOW_START = datetime(2019, 6, 1, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(days=1)
FIRST_ID = 50_000_000
FEATURES = list(FEATURE_NAMES)


def load_rows(n: int, seed: int = 7) -> None:
    """n drivers with one row each in the window (as the earlier figures in docs/benchmarks.md)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(FIRST_ID, FIRST_ID + n)
    minutes = rng.integers(0, 24 * 60 - 10, n)
    ts = pd.to_datetime(WINDOW_START) + pd.to_timedelta(minutes, unit="m")
    frame = pd.DataFrame({
        "driver_id": ids, "event_timestamp": ts, "created": ts + pd.Timedelta(minutes=5),
        "conv_rate": rng.random(n).astype(np.float32), "acc_rate": rng.random(n).astype(np.float32),
        "avg_daily_trips": rng.integers(0, 60, n), "source": "benchmark",
    })
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where driver_id >= %s", (FIRST_ID,))
        cur.copy_expert(f"COPY {STATS_TABLE} (driver_id, event_timestamp, created, conv_rate, acc_rate, "
                        "avg_daily_trips, source) FROM STDIN WITH (FORMAT csv)", buffer)
    with connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"vacuum analyze {STATS_TABLE}")


def drop_rows() -> None:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where driver_id >= %s", (FIRST_ID,))


def clear_keys(store, n: int) -> None:
    mat.delete_online_rows(store, range(FIRST_ID, FIRST_ID + n))


def raw_hashes(store, ids: list[int]) -> dict[int, dict]:
    encoding = FeastRedisEncoding(store.project, JOIN_KEY, FEATURE_VIEW,
                                  value_kinds(store.get_feature_view(FEATURE_VIEW)), 3)
    client = redis_client(online_store_address(store))
    try:
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(encoding.key(i))
        return dict(zip(ids, pipe.execute(), strict=True))
    finally:
        client.close()


def sample_ids(n: int) -> list[int]:
    return sorted(np.random.default_rng(1).choice(np.arange(FIRST_ID, FIRST_ID + n), min(n, 2000),
                                                  replace=False).tolist())


def redis_cpu_seconds(store) -> float:
    """CPU the Redis server has used so far (the benchmark's Redis serves nothing else meanwhile)."""
    client = redis_client(online_store_address(store))
    try:
        cpu = client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    finally:
        client.close()


def ours(store) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds, all threads) of one single-shard write."""
    began, cpu = time.perf_counter(), time.process_time()
    mat.write_shard(WINDOW_START, WINDOW_END, mat.ALL_DRIVERS, store)
    return time.perf_counter() - began, time.process_time() - cpu


def sharded(count: int) -> tuple[float, float]:
    """Wall time of `count` shard processes started together, each ready (Feast imported) before the start."""
    workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_materialization", "--worker",
                                 str(index), str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for index in range(count)]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    began = time.perf_counter()
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    reports = [json.loads(worker.stdout.readline()) for worker in workers]
    seconds = time.perf_counter() - began
    assert all(worker.wait() == 0 for worker in workers)
    print(f"  shards: {reports}", flush=True)
    return seconds, sum(r["cpu_seconds"] for r in reports)


def worker(index: int, count: int) -> int:
    """One shard's process: get ready, wait for the start, write the shard, report."""
    store = feature_store()
    store.get_feature_view(FEATURE_VIEW)
    print("ready", flush=True)
    sys.stdin.readline()
    cpu = time.process_time()
    report = mat.materialize_shard(WINDOW_START, WINDOW_END, Shard(index, count), store=store)
    print(json.dumps({"shard": index, "rows": report.rows_read, "seconds": round(report.seconds, 2),
                      "cpu_seconds": round(time.process_time() - cpu, 2)}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--feast-sample", type=int, default=100_000)
    parser.add_argument("--worker", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    ensure_schema()
    store = feature_store()
    rows, same = [], []

    def row(what: str, n: int, run) -> None:
        redis_before = redis_cpu_seconds(store)
        seconds, cpu = run()
        redis_cpu = redis_cpu_seconds(store) - redis_before
        load = os.getloadavg()[0]
        rows.append((what, f"{n:,}", f"{seconds:.1f}", f"{n / seconds:,.0f}", f"{cpu:.1f}", f"{redis_cpu:.1f}",
                     f"{load:.1f}"))
        print(f"  {what}: {n:,} rows in {seconds:.1f} s, load average {load:.1f}", flush=True)

    def feast_materialize() -> tuple[float, float]:
        began, cpu = time.perf_counter(), time.process_time()
        store.materialize(start_date=WINDOW_START, end_date=WINDOW_END, feature_views=[FEATURE_VIEW])
        return time.perf_counter() - began, time.process_time() - cpu

    n = args.feast_sample
    load_rows(n)
    clear_keys(store, n)
    row("Feast materialize()", n, feast_materialize)
    feast_rate = float(rows[0][3].replace(",", ""))
    by_feast = raw_hashes(store, sample_ids(n))
    clear_keys(store, n)
    row("ours, 1 shard", n, lambda: ours(store))
    same.append(raw_hashes(store, sample_ids(n)) == by_feast and all(by_feast.values()))
    clear_keys(store, n)

    n = args.drivers
    load_rows(n)
    clear_keys(store, n)
    row("ours, 1 shard", n, lambda: ours(store))
    single = raw_hashes(store, sample_ids(n))
    clear_keys(store, n)
    row(f"ours, {args.shards} shards side by side", n, lambda: sharded(args.shards))
    same.append(raw_hashes(store, sample_ids(n)) == single and all(single.values()))
    clear_keys(store, n)
    drop_rows()

    rows = [(*r[:4], f"{float(r[3].replace(',', '')) / feast_rate:.1f}x", *r[4:]) for r in rows]
    print_table("Materialization into Redis (one row per driver)",
                ("what", "drivers", "seconds", "rows/s", "vs Feast rows/s", "client CPU s", "Redis CPU s",
                 "load avg"), rows)
    print(f"same bytes as Feast (sample): {'yes' if same[0] else 'NO'}; "
          f"sharded same as single: {'yes' if same[1] else 'NO'}")
    return 0 if all(same) else 1


if __name__ == "__main__":
    raise SystemExit(main())
