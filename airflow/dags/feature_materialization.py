"""feature_materialization: the newest offline driver stats and penguins -> Feast's Redis online store.

Runs whenever data_ingestion updated the driver_hourly_stats or penguin_measurements asset, over the intervals that run
loaded, re-reading MATERIALIZE_OVERLAP_MINUTES before them for rows that landed late. Triggered
by hand, it covers the `lookback_hours` before the run's logical date (or now). It first applies
the feature repo if it changed.

The drivers are written in MATERIALIZATION_SHARDS shards (driver_id modulo the count): `plan_shards` fixes
the window once, `materialize_shard` is mapped over the shards (one task each, retried alone, run side by
side as the executor allows), and `record_materialization` tells Feast's registry once all of them and the
penguins succeeded.
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
    def plan_shards(triggering_asset_events=None, params=None, logical_date=None, run_after=None) -> list[dict]:
        from datetime import datetime

        from data_pipeline.materialize import planned_window
        from data_pipeline.shards import plan_shards as shards_of
        from mlops_platform.settings import get_settings

        events = [event for events in (triggering_asset_events or {}).values() for event in events]
        windows = [(datetime.fromisoformat(e.extra["interval_start"]), datetime.fromisoformat(e.extra["interval_end"]))
                   for e in events if "interval_start" in (e.extra or {})]
        if windows:
            start, end = min(w[0] for w in windows), max(w[1] for w in windows)
        else:
            end = logical_date or run_after or pendulum.now("UTC")
            start = end - timedelta(hours=params["lookback_hours"])
        start, end = planned_window(start, end)
        return [{"start": start.isoformat(), "end": end.isoformat(), "shard": shard.to_dict()}
                for shard in shards_of(get_settings().materialization_shards)]

    @task(map_index_template="{{ shard_label }}")
    def materialize_shard(job: dict) -> dict:
        from datetime import datetime

        from airflow.sdk import get_current_context

        from data_pipeline.materialize import materialize_shard as write_shard
        from data_pipeline.shards import Shard

        get_current_context()["shard_label"] = f"shard {job['shard']['index']} of {job['shard']['count']}"
        report = write_shard(datetime.fromisoformat(job["start"]), datetime.fromisoformat(job["end"]),
                             Shard.from_dict(job["shard"]))
        return {"shard": job["shard"], "rows_read": report.rows_read, "rows_written": report.rows_written,
                "rows_skipped_older": report.rows_skipped_older, "seconds": round(report.seconds, 3)}

    @task
    def materialize_penguins(jobs: list[dict]) -> dict:
        from datetime import datetime

        from data_pipeline.materialize import materialize_penguins as write_penguins

        report = write_penguins(datetime.fromisoformat(jobs[0]["start"]), datetime.fromisoformat(jobs[0]["end"]),
                                overlap=timedelta(0))
        return {"penguin_rows_read": report.rows_read}

    @task
    def record_materialization(jobs: list[dict], shards: list[dict], penguins: dict) -> dict:
        from datetime import datetime

        from data_pipeline.materialize import record_materialization as record
        from mlops_platform.feature_store import feature_store

        start, end = datetime.fromisoformat(jobs[0]["start"]), datetime.fromisoformat(jobs[0]["end"])
        record(feature_store(), start, end)
        shards = list(shards)
        return {"start": jobs[0]["start"], "end": jobs[0]["end"], "shards": len(shards),
                "rows_read": sum(s["rows_read"] for s in shards),
                "rows_written": sum(s["rows_written"] for s in shards), **penguins}

    plan = plan_shards()
    apply_feature_repo() >> plan
    record_materialization(plan, materialize_shard.expand(job=plan), materialize_penguins(plan))
