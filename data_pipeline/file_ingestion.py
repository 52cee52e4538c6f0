"""One landed file's ingestion: prepare (read, validate, decide) then commit (one transaction).

`prepare` touches the database only to see whether the file was loaded before, so the next file can be
prepared in a helper thread while the current one commits (data_pipeline.ingest.ingest_files).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as arrow

from data_pipeline.ingest_report import NOT_LOADED, IngestionReport
from data_pipeline.landing import read_landed, source_name
from data_pipeline.load import insert_quarantine, insert_rows, loaded_run, lock_source, record_run
from data_pipeline.raw_csv import MalformedLine, UnreadableFile
from data_pipeline.validate import SchemaMismatch, TimestampWindow, validate
from mlops_platform.postgres import connect
from mlops_platform.settings import Settings

log = logging.getLogger("data_pipeline.ingest")


@dataclass
class PreparedFile:
    report: IngestionReport
    started: float
    started_at: datetime
    valid: pd.DataFrame | None = None  # None: load no rows
    rejected: pd.DataFrame | None = None
    malformed: list[MalformedLine] = field(default_factory=list)


def allowed_invalid_share(settings: Settings, max_invalid_share: float | None) -> float:
    value = settings.ingest_max_invalid_share if max_invalid_share is None else float(max_invalid_share)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"max_invalid_share must be a share between 0 and 1, got {value}")
    return value


def prepare(path: Path, dataset: str, settings: Settings, threshold: float,
             window: TimestampWindow | None) -> PreparedFile:
    """Everything before the transaction; touches the database only to see whether the file is done."""
    prepared = _read_and_validate(path, dataset, settings, threshold, window)
    prepared.report.seconds = time.perf_counter() - prepared.started  # work time, not time spent queued
    return prepared


def _not_loaded(prepared: PreparedFile, status: str, message: str) -> PreparedFile:
    prepared.report.status, prepared.report.message = status, message
    prepared.valid = None
    return prepared


def _read_and_validate(path: Path, dataset: str, settings: Settings, threshold: float,
                       window: TimestampWindow | None) -> PreparedFile:
    prepared = PreparedFile(IngestionReport(dataset, source_name(path, settings.landing_dir),
                                            max_invalid_share=threshold), time.perf_counter(), datetime.now(UTC))
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


def _write(prepared: PreparedFile, settings: Settings) -> tuple[int, datetime] | None:
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


def _record(cur, prepared: PreparedFile) -> None:
    report = prepared.report
    record_run(cur, dataset=report.dataset, source=report.source, sha256=report.file_sha256,
               rows_read=report.rows_read, rows_loaded=report.rows_loaded, rows_quarantined=report.rows_quarantined,
               status=report.status, message=report.message or None, started_at=prepared.started_at)


def _record_failure(prepared: PreparedFile, settings: Settings, error: Exception) -> None:
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


def commit(prepared: PreparedFile, settings: Settings) -> IngestionReport:
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


def log_report(report: IngestionReport) -> None:
    fields = report.to_dict()
    fields["detail"] = fields.pop("message")  # `message` is the log line's own field
    level = logging.ERROR if report.status in NOT_LOADED else logging.INFO
    log.log(level, f"{report.status} {report.dataset} file {report.source}", extra=fields)
