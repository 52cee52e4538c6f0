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
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as arrow

from data_pipeline.landing import landed_files, read_landed, source_name
from data_pipeline.load import insert_quarantine, insert_rows, loaded_run, lock_source, record_run
from data_pipeline.offline_store import connect, ensure_schema
from data_pipeline.raw_csv import MalformedLine, UnreadableFile
from data_pipeline.validate import DATASETS, SchemaMismatch, TimestampWindow, validate
from mlops_platform.settings import Settings, get_settings

log = logging.getLogger("data_pipeline.ingest")


@dataclass
class IngestionReport:
    """What one file contributed; `status` is loaded, skipped (this exact file was loaded before), rejected
    (unreadable, or too many invalid rows) or failed (its load broke on something unforeseen)."""

    dataset: str
    source: str
    status: str = "loaded"
    file_sha256: str = ""
    rows_read: int = 0
    rows_valid: int = 0
    rows_loaded: int = 0
    rows_already_present: int = 0  # valid rows whose key the table already had (ON CONFLICT DO NOTHING)
    rows_quarantined: int = 0
    invalid_share: float = 0.0
    max_invalid_share: float = 0.0
    read_seconds: float = 0.0
    validate_seconds: float = 0.0
    load_seconds: float = 0.0
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        for key in ("invalid_share", "read_seconds", "validate_seconds", "load_seconds", "seconds"):
            values[key] = round(values[key], 4)
        return values


class IngestionRejected(RuntimeError):
    """Some files were rejected or failed, so nothing of them was loaded (the others were); `reports` says more."""

    def __init__(self, message: str, reports: list[IngestionReport]) -> None:
        super().__init__(message)
        self.reports = reports


COUNTS = ("rows_read", "rows_valid", "rows_loaded", "rows_already_present", "rows_quarantined")
PHASES = ("read_seconds", "validate_seconds", "load_seconds")
STATUSES = ("loaded", "skipped", "rejected", "failed")
NOT_LOADED = ("rejected", "failed")


@dataclass
class IngestionBatch:
    """The reports of several files, with totals; `seconds` is wall clock (phases of files overlap)."""

    reports: list[IngestionReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rejected(self) -> list[IngestionReport]:
        """The files none of whose rows were loaded: rejected or failed."""
        return [r for r in self.reports if r.status in NOT_LOADED]

    @property
    def failed(self) -> list[IngestionReport]:
        return [r for r in self.reports if r.status == "failed"]

    def totals(self, dataset: str | None = None) -> dict:
        reports = [r for r in self.reports if dataset is None or r.dataset == dataset]
        totals: dict = {"files": len(reports)}
        for status in STATUSES:
            totals[f"files_{status}"] = sum(r.status == status for r in reports)
        for key in (*COUNTS, *PHASES):
            totals[key] = sum(getattr(r, key) for r in reports)
        for key in PHASES:
            totals[key] = round(totals[key], 3)
        return totals

    def not_loaded(self, dataset: str | None = None) -> list[dict]:
        """The rejected and failed files, each with its dataset, status and why."""
        return [{"dataset": r.dataset, "source": r.source, "status": r.status, "message": r.message}
                for r in self.rejected if dataset is None or r.dataset == dataset]

    def summary(self, dataset: str | None = None) -> dict:
        """Totals and the files not loaded, as a JSON-able dict (what an Airflow task returns)."""
        return {**self.totals(dataset), "not_loaded": self.not_loaded(dataset)}

    def to_dict(self) -> dict:
        return {
            "status": "failed" if self.failed else "rejected" if self.rejected else "ok",
            "seconds": round(self.seconds, 3),
            "totals": self.totals(),
            "datasets": {d: self.totals(d) for d in DATASETS if any(r.dataset == d for r in self.reports)},
            "not_loaded": self.not_loaded(),
        }


# ---------------------------------------------------------------------------------------------
# One file: prepare (read, validate, decide) then commit (one transaction)
# ---------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    report: IngestionReport
    started: float
    started_at: datetime
    valid: pd.DataFrame | None = None  # None: load no rows
    rejected: pd.DataFrame | None = None
    malformed: list[MalformedLine] = field(default_factory=list)


def _threshold(settings: Settings, max_invalid_share: float | None) -> float:
    value = settings.ingest_max_invalid_share if max_invalid_share is None else float(max_invalid_share)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"max_invalid_share must be a share between 0 and 1, got {value}")
    return value


def _prepare(path: Path, dataset: str, settings: Settings, threshold: float,
             window: TimestampWindow | None) -> _Prepared:
    """Everything before the transaction; touches the database only to see whether the file is done."""
    prepared = _read_and_validate(path, dataset, settings, threshold, window)
    prepared.report.seconds = time.perf_counter() - prepared.started  # work time, not time spent queued
    return prepared


def _not_loaded(prepared: _Prepared, status: str, message: str) -> _Prepared:
    prepared.report.status, prepared.report.message = status, message
    prepared.valid = None
    return prepared


def _read_and_validate(path: Path, dataset: str, settings: Settings, threshold: float,
                       window: TimestampWindow | None) -> _Prepared:
    prepared = _Prepared(IngestionReport(dataset, source_name(path, settings.landing_dir), max_invalid_share=threshold),
                         time.perf_counter(), datetime.now(UTC))
    report = prepared.report
    try:
        data = path.read_bytes()
    except OSError as error:
        return _not_loaded(prepared, "rejected", f"{report.source} cannot be read: {error}; nothing of it was "
                                                 "loaded. Check that the file exists and is readable, then re-run.")
    report.file_sha256 = hashlib.sha256(data).hexdigest()
    with connect(settings) as conn, conn.cursor() as cur:
        previous = loaded_run(cur, dataset, report.source, report.file_sha256)
    if previous:
        report.status = "skipped"
        report.message = f"already loaded by ingestion run {previous[0]} at {previous[1].isoformat()} (same sha256)"
        return prepared
    try:
        raw = read_landed(data, path.suffix.lower().lstrip("."))
        prepared.malformed = raw.malformed
        report.rows_read = len(raw.rows) + len(raw.malformed)
        report.read_seconds = time.perf_counter() - prepared.started
        checkpoint = time.perf_counter()
        prepared.valid, prepared.rejected = validate(raw.rows, dataset, window, row_numbers=raw.rows.index)
        report.validate_seconds = time.perf_counter() - checkpoint
    except (SchemaMismatch, UnreadableFile, arrow.ArrowException, UnicodeDecodeError) as error:
        prepared.malformed, prepared.rejected = [], None
        return _not_loaded(prepared, "rejected", f"{report.source} cannot be read as {dataset} rows: {error}; "
                                                 "nothing of it was loaded. Fix the file upstream and land it again.")
    except Exception as error:  # an unforeseen shape of file: this file fails, the others go on
        log.exception(f"reading {report.source} failed", extra={"dataset": dataset, "source": report.source})
        prepared.malformed, prepared.rejected = [], None
        return _not_loaded(prepared, "failed", f"ingestion failed: {report.source} could not be read or validated "
                                               f"({type(error).__name__}: {error}); nothing of it was loaded. "
                                               "Report it with the file; the other files were not affected.")

    report.rows_valid = len(prepared.valid)
    report.rows_quarantined = len(prepared.rejected) + len(prepared.malformed)
    report.invalid_share = report.rows_quarantined / report.rows_read if report.rows_read else 0.0
    if report.rows_read == 0:
        report.message = f"{report.source} has a header but no rows"
    if report.invalid_share > threshold:
        _not_loaded(prepared, "rejected", (
            f"{report.source}: {report.rows_quarantined} of {report.rows_read} rows are invalid "
            f"({report.invalid_share:.2%}), more than the allowed {threshold:.2%} (INGEST_MAX_INVALID_SHARE or "
            "--max-invalid-share). None of its rows were loaded; the invalid ones are in quarantine with their "
            "reasons. Fix the file upstream and land it again, or re-run with a higher threshold if they are "
            "acceptable."
        ))
    return prepared


def _write(prepared: _Prepared, settings: Settings) -> tuple[int, datetime] | None:
    """Quarantine, rows and the run record in one transaction; returns the run that loaded this file meanwhile."""
    report = prepared.report
    with connect(settings) as conn, conn.cursor() as cur:
        lock_source(cur, report.dataset, report.source)
        previous = loaded_run(cur, report.dataset, report.source, report.file_sha256)
        if previous is None:
            insert_quarantine(cur, report.dataset, report.source, prepared.rejected, prepared.malformed)
            if prepared.valid is not None and len(prepared.valid):
                report.rows_loaded = insert_rows(cur, report.dataset, prepared.valid, report.source)
                report.rows_already_present = len(prepared.valid) - report.rows_loaded
            _record(cur, prepared)
    return previous


def _record(cur, prepared: _Prepared) -> None:
    report = prepared.report
    record_run(cur, dataset=report.dataset, source=report.source, sha256=report.file_sha256,
               rows_read=report.rows_read, rows_loaded=report.rows_loaded, rows_quarantined=report.rows_quarantined,
               status=report.status, message=report.message or None, started_at=prepared.started_at)


def _record_failure(prepared: _Prepared, settings: Settings, error: Exception) -> None:
    """After a failed load (rolled back): keep what can be kept, the quarantine if it stores, and the run."""
    report = prepared.report
    log.exception(f"loading {report.source} failed", extra={"dataset": report.dataset, "source": report.source})
    report.status, report.rows_loaded, report.rows_already_present = "failed", 0, 0
    report.message = (f"ingestion failed: {report.source} could not be stored ({type(error).__name__}: "
                      f"{str(error).strip()}); nothing of it was loaded. Report it with the file; the other files "
                      "were not affected.")
    with connect(settings) as conn, conn.cursor() as cur:
        lock_source(cur, report.dataset, report.source)
        cur.execute("savepoint quarantine")
        try:
            insert_quarantine(cur, report.dataset, report.source, prepared.rejected, prepared.malformed)
        except Exception:  # the quarantine itself may be what broke: the run record must still be written
            cur.execute("rollback to savepoint quarantine")
            report.rows_quarantined = 0
        _record(cur, prepared)


def _commit(prepared: _Prepared, settings: Settings) -> IngestionReport:
    """Write the file's outcome; a load that breaks is rolled back and recorded as failed, and the batch goes on.

    Only when even the failure cannot be recorded (the database is gone) does the error stop the batch.
    """
    report = prepared.report
    if report.status == "skipped":
        return report
    checkpoint = time.perf_counter()
    try:
        previous = _write(prepared, settings)
    except Exception as error:
        previous = None
        _record_failure(prepared, settings, error)  # if even this fails, the database is gone: the batch stops
    if previous is not None:
        report.status, report.rows_loaded, report.rows_quarantined = "skipped", 0, 0
        report.message = f"loaded meanwhile by ingestion run {previous[0]} (same sha256)"
    report.load_seconds = time.perf_counter() - checkpoint
    report.seconds += report.load_seconds
    return report


def _log(report: IngestionReport) -> None:
    fields = report.to_dict()
    fields["detail"] = fields.pop("message")  # `message` is the log line's own field
    level = logging.ERROR if report.status in NOT_LOADED else logging.INFO
    log.log(level, f"{report.status} {report.dataset} file {report.source}", extra=fields)


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
    threshold = _threshold(settings, max_invalid_share)
    files = [(dataset, Path(path)) for dataset, path in files]
    for dataset, path in files:
        _check_dataset(dataset)
        if not path.is_file():
            raise FileNotFoundError(f"no landed file at {path}: check the path, or land the file first")
    ensure_schema(settings)

    batch = IngestionBatch()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-prepare") as pool:
        pending = [pool.submit(_prepare, path, dataset, settings, threshold, window) for dataset, path in files[:1]]
        for index in range(len(files)):
            prepared = pending.pop().result()
            if index + 1 < len(files):
                dataset, path = files[index + 1]
                pending.append(pool.submit(_prepare, path, dataset, settings, threshold, window))
            report = _commit(prepared, settings)
            _log(report)
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


def not_loaded_message(summaries: Iterable[dict]) -> str | None:
    """What IngestionBatch.summary() dicts say about files not loaded, as one message; None when all were."""
    files = [entry for summary in summaries for entry in summary.get("not_loaded", [])]
    if not files:
        return None
    lines = [f"- {f['source']} ({f['dataset']}, {f['status']}): {f['message']}" for f in files]
    counts = ", ".join(f"{n} {status}" for status in NOT_LOADED if (n := sum(f["status"] == status for f in files)))
    return (f"{len(files)} landed file(s) were not loaded ({counts}); every other file was, and each has its "
            "ingestion_runs record (rejected: fix the file upstream; failed: report it with the file):\n"
            + "\n".join(lines))


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
