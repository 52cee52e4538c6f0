"""Evidently HTML reports, one per evaluated window, named by the window's end; only the newest are kept.

A report embeds Evidently's viewer (about 4 MB), and a window ends every MONITOR_INTERVAL_SECONDS,
so the folder keeps the newest KEEP_REPORTS files.
"""

from __future__ import annotations

import html
import os
import re
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


def write_report(snapshot: Any, folder: Path, window_end: datetime, keep: int = KEEP_REPORTS,
                 caption: str | None = None) -> Path:
    """Save the snapshot's HTML (written aside, then renamed: a reader never sees half a file) and prune.

    `caption` is shown above Evidently's page, which names columns but not the model they belong to.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / report_name(window_end)
    partial = folder / f".{path.stem}.{os.getpid()}.part"  # its own, should two services share the folder
    snapshot.save_html(str(partial))
    if caption:
        add_caption(partial, caption)
    partial.replace(path)
    for old in list_reports(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


def list_reports(folder: Path) -> list[Path]:
    """Drift reports, newest first (named by time, so they start with a digit; rollout reports do not and are
    never pruned here)."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("[0-9]*.html"), reverse=True)


def add_caption(path: Path, caption: str) -> None:
    """Put `caption` at the top of the page's body (at its end, should the page have no <body> tag)."""
    page = path.read_text(encoding="utf-8")
    banner = (f'<p id="report-caption" style="font-family: sans-serif; margin: 12px 16px">{html.escape(caption)}'
              "</p>")
    body = re.search(r"<body[^>]*>", page, re.IGNORECASE)
    at = body.end() if body else len(page)
    path.write_text(page[:at] + banner + page[at:], encoding="utf-8")


def drift_caption(model_name: str, version: str, watched: tuple[str, ...], not_watched: tuple[str, ...]) -> str:
    """Which model a report is about, and which features its drift watched."""
    text = (f"Model {model_name} version {version}: drift of its features {', '.join(watched)} and of its score "
            "against its training reference.")
    if not_watched:
        text += f" Not watched: {', '.join(not_watched)} (the model does not use them)."
    return text
