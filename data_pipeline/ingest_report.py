"""What ingestion reports: one file's outcome (IngestionReport), a batch's totals (IngestionBatch), and the
error raised when files were not loaded (IngestionRejected), with every report."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from data_pipeline.validate import DATASETS


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
