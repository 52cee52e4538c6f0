"""Ingestion throughput from landing to the offline table, by phase, against a naive pandas baseline.

Generates `--drivers` x `--days` of hourly driver stats (1,000 x 90 = 2.16M rows) into a temporary
landing folder, ingests every file with data_pipeline.ingest, and reports rows/s for reading,
validation, loading and in total. On a sample of the same valid rows it then times the loader
(COPY into staging + INSERT ... ON CONFLICT) against `DataFrame.to_sql(method="multi")`.

It runs against the platform's PostgreSQL (settings as everywhere: .env, then the environment), in a
schema of its own (`bench_ingestion`, dropped at the end), so the real offline tables are untouched:

    bash run.sh feast up && .venv/bin/python benchmarks/bench_ingestion.py
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

SCHEMA = "bench_ingestion"
# libpq reads PGOPTIONS at every connect: every connection of this process, ours and SQLAlchemy's,
# resolves unqualified table names in the benchmark's schema.
os.environ["PGOPTIONS"] = f"-c search_path={SCHEMA}"

import pandas as pd  # noqa: E402

from data_pipeline.ingest import ingest_files  # noqa: E402
from data_pipeline.landing import landed_files, read_raw  # noqa: E402
from data_pipeline.load import insert_rows  # noqa: E402
from data_pipeline.offline_store import STATS_TABLE, ensure_schema  # noqa: E402
from data_pipeline.validate import STATS, validate  # noqa: E402
from mlops_platform.postgres import connect  # noqa: E402
from mlops_platform.settings import get_settings  # noqa: E402
from simulation.generate import generate_driver_stats, generate_orders, write_landing  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def truncate(settings) -> None:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"truncate {STATS_TABLE}, orders, quarantine, ingestion_runs")


def naive_to_sql(sample: pd.DataFrame, settings) -> float:
    """Seconds for pandas' to_sql(method='multi') into the same table (chunks of 1,000 rows)."""
    from sqlalchemy import create_engine

    engine = create_engine(settings.postgres_url(settings.feast_db))
    frame = sample.assign(source="naive")
    started = time.perf_counter()
    frame.to_sql(STATS_TABLE, engine, if_exists="append", index=False, method="multi", chunksize=1000)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def copy_upsert(sample: pd.DataFrame, settings) -> float:
    started = time.perf_counter()
    with connect(settings) as conn, conn.cursor() as cur:
        insert_rows(cur, STATS, sample, "copy")
    return time.perf_counter() - started


def row(what: str, rows: int, seconds: float) -> str:
    rate = rows / seconds if seconds > 0 else float("inf")
    return f"| {what:<50} | {rows:>10,} | {seconds:>8.2f} | {rate:>12,.0f} |"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad-row-rate", type=float, default=0.01)
    parser.add_argument("--sample", type=int, default=20_000, help="rows for the loader vs to_sql comparison")
    parser.add_argument("--keep", action="store_true", help=f"keep the {SCHEMA} schema and the landing folder")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, settings) -> dict:
    """Generate and land the files, ingest them, then time validation alone and the two loaders on a sample."""
    started = time.perf_counter()
    stats = generate_driver_stats(args.drivers, args.days, seed=args.seed)
    orders = generate_orders(stats, seed=args.seed)
    write_landing(stats, orders, settings.landing_dir, args.bad_row_rate, args.seed)
    generated = time.perf_counter() - started

    files = [(STATS, path) for _, path in landed_files(settings.landing_dir, STATS)]
    batch = ingest_files(files, settings, max_invalid_share=1.0)

    # Validation once over all rows, to separate its per-row cost from its per-file overhead.
    raw = pd.concat([read_raw(path.read_bytes(), "parquet", STATS) for _, path in files], ignore_index=True)
    started = time.perf_counter()
    validate(raw, STATS)
    validate_once = time.perf_counter() - started
    del raw

    sample = stats.head(args.sample)  # clean rows, typed as validation returns them
    truncate(settings)
    copy_seconds = copy_upsert(sample, settings)
    truncate(settings)
    naive_seconds = naive_to_sql(sample, settings)
    return {"landed_rows": len(stats) + len(orders), "generated": generated, "files": len(files),
            "totals": batch.totals(STATS), "wall_clock": batch.seconds, "validate_once": validate_once,
            "sample": len(sample), "copy_seconds": copy_seconds, "naive_seconds": naive_seconds}


def print_report(args: argparse.Namespace, figures: dict, server: str, load_before: float) -> None:
    totals = figures["totals"]
    rows, sample, copy_seconds, naive_seconds = (totals["rows_read"], figures["sample"], figures["copy_seconds"],
                                                 figures["naive_seconds"])
    print(f"\ningestion of {args.drivers:,} drivers x {args.days} days of hourly stats "
          f"({figures['files']} daily parquet files, {args.bad_row_rate:.0%} planted bad rows)\n")
    print(f"| {'what':<50} | {'rows':>10} | {'seconds':>8} | {'rows/s':>12} |")
    print(f"|{'-' * 52}|{'-' * 12}|{'-' * 10}|{'-' * 14}|")
    print(row("generate + land (not part of ingestion)", figures["landed_rows"], figures["generated"]))
    print(row("read (parquet -> pandas)", rows, totals["read_seconds"]))
    print(row("validate (parse + pandera + reasons)", rows, totals["validate_seconds"]))
    print(row(f"load ({totals['rows_loaded']:,} rows + {totals['rows_quarantined']:,} quarantined)", rows,
              totals["load_seconds"]))
    print(row("total, landing -> offline table (wall clock)", rows, figures["wall_clock"]))
    print(row("validate, all rows as one frame (no per-file cost)", rows, figures["validate_once"]))
    print(row("sample: COPY + INSERT ON CONFLICT", sample, copy_seconds))
    print(row("sample: pandas to_sql(method='multi')", sample, naive_seconds))
    print(f"\nloader vs to_sql on the same {sample:,} rows: {naive_seconds / copy_seconds:.1f}x faster")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}, "
          f"PostgreSQL {server}, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
    print("phases are summed over files; the next file is read and validated while the current one loads, "
          "so the wall clock is less than their sum")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-landing-") as folder:
        settings = dataclasses.replace(get_settings(), landing_dir=Path(folder))
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute(f"create schema if not exists {SCHEMA}")
        ensure_schema(settings)
        truncate(settings)
        try:
            figures = measure(args, settings)
        finally:
            if not args.keep:
                with connect(settings) as conn, conn.cursor() as cur:
                    cur.execute(f"drop schema if exists {SCHEMA} cascade")

    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("show server_version")
        server = cur.fetchone()[0]
    print_report(args, figures, server, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
