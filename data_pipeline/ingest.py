"""Batch ingestion of landed raw files into the offline store: validated, quarantined, idempotent.

Per file: read (parquet or CSV) -> validate -> one transaction that loads the valid rows (COPY into
staging, `INSERT ... ON CONFLICT DO NOTHING`), quarantines the rejected rows and malformed lines and
records an `ingestion_runs` row. A file whose sha256 was already loaded from the same place is skipped,
so re-running a file or an interval adds nothing anywhere. When more than `max_invalid_share` of a
file's rows are invalid, or the file cannot be read at all, none of its rows are loaded, but its
rejected rows and a 'rejected' run are still recorded so people can see why. A file whose load fails
for an unforeseen reason is recorded as well, as a 'failed' run whose message starts with "ingestion
failed". No file stops the others: IngestionRejected comes at the end, with every report.

    python -m data_pipeline.ingest --dataset all --start 2024-05-01 --end 2024-05-02
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from data_pipeline.file_ingestion import allowed_invalid_share, commit, log_report, prepare
from data_pipeline.ingest_report import IngestionBatch, IngestionRejected, IngestionReport
from data_pipeline.landing import landed_files
from data_pipeline.offline_store import ensure_schema
from data_pipeline.validate import DATASETS, TimestampWindow
from mlops_platform.settings import Settings, get_settings

log = logging.getLogger("data_pipeline.ingest")


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {list(DATASETS)}")


def ingest_file(path: Path | str, dataset: str, settings: Settings | None = None,
                max_invalid_share: float | None = None, *, window: TimestampWindow | None = None) -> IngestionReport:
    """Ingest one landed file; raises IngestionRejected (after recording why) when it was not loaded."""
    batch = ingest_files([(dataset, Path(path))], settings, max_invalid_share, window=window)
    return batch.reports[0]


# ---------------------------------------------------------------------------------------------
# Many files
# ---------------------------------------------------------------------------------------------
def ingest_files(files: Iterable[tuple[str, Path | str]], settings: Settings | None = None,
                 max_invalid_share: float | None = None, *, window: TimestampWindow | None = None,
                 raise_on_rejected: bool = True) -> IngestionBatch:
    """Ingest (dataset, path) pairs in order, each in its own transaction; a rejected or failed file stops nothing.

    The next file is read and validated in a helper thread while the current one loads, so Python's
    work overlaps PostgreSQL's. With raise_on_rejected, IngestionRejected is raised at the end (with
    every report) when any file was rejected or failed. Only an offline store that cannot be reached
    at all stops the batch early.
    """
    started = time.perf_counter()
    settings = settings or get_settings()
    threshold = allowed_invalid_share(settings, max_invalid_share)
    files = [(dataset, Path(path)) for dataset, path in files]
    for dataset, path in files:
        _check_dataset(dataset)
        if not path.is_file():
            raise FileNotFoundError(f"no landed file at {path}: check the path, or land the file first")
    ensure_schema(settings)

    batch = IngestionBatch()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-prepare") as pool:
        pending = [pool.submit(prepare, path, dataset, settings, threshold, window) for dataset, path in files[:1]]
        for index in range(len(files)):
            prepared = pending.pop().result()
            if index + 1 < len(files):
                dataset, path = files[index + 1]
                pending.append(pool.submit(prepare, path, dataset, settings, threshold, window))
            report = commit(prepared, settings)
            log_report(report)
            batch.reports.append(report)
    batch.seconds = time.perf_counter() - started

    if len(files) > 1:
        log.info("ingestion batch finished", extra=batch.to_dict())
    if raise_on_rejected and batch.rejected:
        if len(batch.reports) == 1:
            raise IngestionRejected(batch.rejected[0].message, batch.reports)
        sources = ", ".join(f"{r.source} ({r.status})" for r in batch.rejected)
        raise IngestionRejected(
            f"{len(batch.rejected)} of {len(batch.reports)} files rejected or failed ({sources}); the others were "
            f"ingested. First reason: {batch.rejected[0].message}",
            batch.reports,
        )
    return batch


def _as_utc(value: date | datetime | str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected an ISO date or datetime, got {value!r}") from None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _datasets(dataset: str) -> tuple[str, ...]:
    if dataset == "all":
        return DATASETS
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {[*DATASETS, 'all']}")
    return (dataset,)


def interval_files(start: date | datetime | str, end: date | datetime | str, dataset: str = "all",
                   landing: Path | None = None) -> list[tuple[str, Path]]:
    """(dataset, path) of the landed files whose `date=` day, from 00:00 UTC, starts in [start, end)."""
    low, high = _as_utc(start), _as_utc(end)
    if high <= low:
        raise ValueError(f"the interval must end after it starts, got start={low.isoformat()} end={high.isoformat()}")
    landing = landing or get_settings().landing_dir
    return [
        (name, path)
        for name in _datasets(dataset)
        for day, path in landed_files(landing, name)
        if low <= datetime(day.year, day.month, day.day, tzinfo=UTC) < high
    ]


def ingest_interval(start: date | datetime | str, end: date | datetime | str, dataset: str = "all",
                    settings: Settings | None = None, max_invalid_share: float | None = None, *,
                    window: TimestampWindow | None = None, raise_on_rejected: bool = True) -> IngestionBatch:
    """Ingest the files of Airflow's data interval: a daily run for [2024-05-01, 2024-05-02) takes date=2024-05-01."""
    settings = settings or get_settings()
    files = interval_files(start, end, dataset, settings.landing_dir)
    if not files:
        log.warning("no landed files in the interval", extra={"start": str(start), "end": str(end),
                                                              "dataset": dataset,
                                                              "landing": str(settings.landing_dir)})
    return ingest_files(files, settings, max_invalid_share, window=window, raise_on_rejected=raise_on_rejected)


def ingest_landing(dataset: str = "all", settings: Settings | None = None, max_invalid_share: float | None = None,
                   *, window: TimestampWindow | None = None, raise_on_rejected: bool = True) -> IngestionBatch:
    """Ingest everything landed; files loaded before are skipped after one query each."""
    settings = settings or get_settings()
    files = [(name, path) for name in _datasets(dataset) for _, path in landed_files(settings.landing_dir, name)]
    return ingest_files(files, settings, max_invalid_share, window=window, raise_on_rejected=raise_on_rejected)


def ingest_scope(scope: str, start: datetime | None, end: datetime | None, dataset: str,
                 settings: Settings | None = None, *,
                 raise_on_rejected: bool = True) -> tuple[IngestionBatch, datetime, datetime]:
    """An Airflow run's ingestion: its interval, or (scope "all") every landed file not loaded yet.
    Returns the batch and the window of partition days it covered, for materialization downstream.
    A run triggered without a logical date has no interval: it covers the day before it."""
    if scope not in ("interval", "all"):
        raise ValueError(f"scope must be 'interval' or 'all', got {scope!r}")
    if start is None or end is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start, end = today - timedelta(days=1), today
    if scope == "interval":
        return ingest_interval(start, end, dataset, settings, raise_on_rejected=raise_on_rejected), start, end
    settings = settings or get_settings()
    days = [day for day, _ in landed_files(settings.landing_dir, dataset)]
    if days:
        start, end = min(start, _as_utc(days[0])), max(end, _as_utc(days[-1]) + timedelta(days=1))
    return ingest_landing(dataset, settings, raise_on_rejected=raise_on_rejected), start, end


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--start", help="ISO date or datetime: first partition day to ingest (with --end)")
    parser.add_argument("--end", help="ISO date or datetime: ingest partition days before this (with --start)")
    parser.add_argument("--max-invalid-share", type=float,
                        help="reject a file when more than this share of its rows is invalid "
                             "(default: INGEST_MAX_INVALID_SHARE)")
    parser.add_argument("--landing", type=Path, help="landing folder (default: LANDING_DIR from settings)")
    args = parser.parse_args(argv)
    if (args.start is None) != (args.end is None):
        parser.error("--start and --end go together: give both for an interval, or neither for everything landed")

    from mlops_platform.logs import configure_logging

    settings = get_settings()
    if args.landing:
        settings = dataclasses.replace(settings, landing_dir=args.landing)
    configure_logging("data-ingestion", settings.log_level)
    try:
        if args.start is not None:
            batch = ingest_interval(args.start, args.end, args.dataset, settings, args.max_invalid_share,
                                    raise_on_rejected=False)
        else:
            batch = ingest_landing(args.dataset, settings, args.max_invalid_share, raise_on_rejected=False)
    except Exception as error:  # the CLI says what failed and exits non-zero
        text = f"{type(error).__name__}: {str(error).strip()}"
        if type(error).__name__ == "OperationalError":
            text += (f" (offline store at {settings.postgres_host}:{settings.postgres_port}: start it with "
                     "`bash run.sh feast up`, or check POSTGRES_HOST and POSTGRES_PORT)")
        log.error("ingestion failed", extra={"error": text})
        print(json.dumps({"status": "error", "error": text}))
        return 1
    print(json.dumps(batch.to_dict()))
    return 2 if batch.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
