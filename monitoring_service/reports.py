"""Evidently HTML reports, one per evaluated window, named by the window's end; only the newest are kept.

A report embeds Evidently's viewer (about 4 MB), and a window ends every MONITOR_INTERVAL_SECONDS,
so the folder keeps the newest KEEP_REPORTS files.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops_platform.settings import Settings

KEEP_REPORTS = 50


def report_folder(settings: Settings) -> Path:
    return settings.home / "monitoring" / "reports"


def report_name(window_end: datetime) -> str:
    """e.g. 2024-09-15T10-00-00Z.html: sortable, and no ':' to quote in a URL."""
    return window_end.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%SZ") + ".html"


def write_report(snapshot: Any, folder: Path, window_end: datetime, keep: int = KEEP_REPORTS) -> Path:
    """Save the snapshot's HTML (written aside, then renamed: a reader never sees half a file) and prune."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / report_name(window_end)
    partial = path.with_suffix(".part")
    snapshot.save_html(str(partial))
    partial.replace(path)
    for old in list_reports(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


def list_reports(folder: Path) -> list[Path]:
    """Reports, newest first."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.html"), reverse=True)
