"""feature_materialization: the newest offline driver stats and penguins -> Feast's Redis online store.

Runs whenever data_ingestion updated the driver_hourly_stats or penguin_measurements asset, over the intervals that run
loaded, re-reading MATERIALIZE_OVERLAP_MINUTES before them for rows that landed late. Triggered
by hand, it covers the `lookback_hours` before the run's logical date (or now). It first applies
the feature repo if it changed.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from data_pipeline.offline_store import PENGUINS_ASSET_URI, STATS_ASSET_URI

DRIVER_STATS_ASSET = Asset(STATS_ASSET_URI)
PENGUINS_ASSET = Asset(PENGUINS_ASSET_URI)

with DAG(
    dag_id="feature_materialization",
    schedule=DRIVER_STATS_ASSET | PENGUINS_ASSET,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),  # catchup is off: no backfill from here
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={"lookback_hours": Param(24, type="integer", minimum=1, description="window of a manual run")},
    tags=["data", "feast"],
    doc_md=__doc__,
):

    @task
    def apply_feature_repo() -> bool:
        from mlops_platform.feast_apply import apply_if_changed

        return apply_if_changed()

    @task
    def materialize(triggering_asset_events=None, params=None, logical_date=None, run_after=None) -> dict:
        from datetime import datetime

        from data_pipeline.materialize import materialize_interval, materialize_penguins

        events = [event for events in (triggering_asset_events or {}).values() for event in events]
        windows = [(datetime.fromisoformat(e.extra["interval_start"]), datetime.fromisoformat(e.extra["interval_end"]))
                   for e in events if "interval_start" in (e.extra or {})]
        if windows:
            start, end = min(w[0] for w in windows), max(w[1] for w in windows)
        else:
            end = logical_date or run_after or pendulum.now("UTC")
            start = end - timedelta(hours=params["lookback_hours"])
        report = materialize_interval(start, end)
        penguins = materialize_penguins(start, end)
        return {"start": report.start.isoformat(), "end": report.end.isoformat(),
                "rows_read": report.rows_read, "rows_written": report.rows_written,
                "penguin_rows_read": penguins.rows_read}

    apply_feature_repo() >> materialize()
