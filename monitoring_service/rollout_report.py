"""The HTML report of a rollout: each variant's numbers with their intervals, the differences, the decision.

One file per rollout, `rollout-<rollout_id>.html` beside the drift reports, rewritten at each evaluation;
the last one written holds the evidence the final decision was taken on, and is kept.
"""

from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path

from mlops_platform.rollout import Rollout
from monitoring_service.rollout_bootstrap import Interval
from monitoring_service.rollout_comparison import Comparison, VariantStats
from monitoring_service.rollout_decision import Decision

REPORT_PREFIX = "rollout-"


def rollout_report_name(rollout_id: str) -> str:
    return f"{REPORT_PREFIX}{rollout_id}.html"


def list_rollout_reports(folder: Path) -> list[Path]:
    """Rollout reports, the most recently written first."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{REPORT_PREFIX}*.html"), key=lambda p: p.stat().st_mtime, reverse=True)


def _number(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _interval(interval: Interval | None, digits: int = 4) -> str:
    if interval is None:
        return "–"
    return f"{interval.estimate:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


ROWS = (
    ("Model version", lambda s: s.model_version),
    ("Requests", lambda s: _number(s.requests)),
    ("Failed requests", lambda s: _number(s.failed_requests)),
    ("Error rate", lambda s: "–" if s.error_rate is None else f"{s.error_rate:.2%}"),
    ("Latency p50 (ms)", lambda s: _number(s.latency_p50_ms, 1)),
    ("Latency p99 (ms)", lambda s: _number(s.latency_p99_ms, 1)),
    ("Labelled outcomes", lambda s: _number(s.outcomes)),
    ("Completion rate", lambda s: _number(s.completion_rate, 3)),
    ("Brier score", lambda s: _interval(s.brier)),
    ("RMSE", lambda s: _interval(s.rmse)),
    ("ROC AUC", lambda s: _interval(s.auc)),
    ("Precision", lambda s: _interval(s.precision)),
    ("Recall", lambda s: _interval(s.recall)),
)


def render(rollout: Rollout, comparison: Comparison, decision: Decision, evaluated_at: datetime,
           outcome: str | None = None) -> str:
    """The page; `outcome` says what was done about the decision (promoted, rolled back, or why not)."""
    def cell(text: str) -> str:
        return f"<td>{html.escape(text)}</td>"

    variants: tuple[VariantStats, VariantStats] = comparison.variants()
    head = "".join(f"<th>{html.escape(s.variant)}</th>" for s in variants)
    body = "".join(f"<tr><th>{html.escape(label)}</th>{''.join(cell(read(s)) for s in variants)}</tr>"
                   for label, read in ROWS)
    paired = (f"paired on {comparison.paired_outcomes} (request, driver) rows both variants scored"
              if comparison.paired else "each variant resampled on its own")
    status = outcome or ("decided: " + decision.action if decision.action != "continue" else "running")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Rollout {html.escape(rollout.rollout_id)}</title>
<style>body {{ font-family: sans-serif; margin: 16px }} td, th {{ padding: 4px 12px; text-align: left }}
table {{ border-collapse: collapse }} tr:nth-child(even) {{ background: #f3f3f3 }}</style></head><body>
<h1>Rollout of {html.escape(rollout.model_name)}: version {html.escape(rollout.challenger_version)} against
version {html.escape(rollout.champion_version)}</h1>
<p>Mode <b>{html.escape(rollout.mode)}</b>, challenger share {rollout.share:.0%}, started
{html.escape(rollout.started_at.isoformat())}; evaluated {html.escape(evaluated_at.isoformat())}.
Status: <b id="status">{html.escape(status)}</b>.</p>
<h2>Decision: <span id="decision">{html.escape(decision.action)}</span></h2>
<p id="reason">{html.escape(decision.reason)}</p>
<h2>Variants</h2>
<p>Intervals: {comparison.confidence:.0%} bootstrap percentile intervals over {comparison.bootstrap_samples}
resamples; precision and recall at score &ge; {comparison.threshold:g}.</p>
<table><tr><th></th>{head}</tr>{body}</table>
<h2>Challenger &minus; champion</h2>
<p>Bootstrap {html.escape(paired)}.</p>
<table><tr><th>Brier score (below 0: challenger better)</th><td>{_interval(comparison.brier_difference)}</td></tr>
<tr><th>ROC AUC (above 0: challenger better)</th><td>{_interval(comparison.auc_difference)}</td></tr></table>
</body></html>
"""


def write_rollout_report(folder: Path, rollout: Rollout, comparison: Comparison, decision: Decision,
                         evaluated_at: datetime, outcome: str | None = None) -> Path:
    """Write (aside, then rename: a reader never sees half a page) and return the rollout's report."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / rollout_report_name(rollout.rollout_id)
    partial = folder / f".{path.stem}.{os.getpid()}.part"
    partial.write_text(render(rollout, comparison, decision, evaluated_at, outcome), encoding="utf-8")
    partial.replace(path)
    return path
