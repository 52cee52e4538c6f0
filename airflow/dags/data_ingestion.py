"""data_ingestion: landed raw files of one day -> validated offline store, invalid rows quarantined.

One run per data interval (a day). Re-running an interval adds nothing, so catch-up and backfills
are safe. When driver stats (or penguins) were loaded it updates the `driver_hourly_stats` (or
`penguin_measurements`) asset, which starts feature_materialization; a day with no penguin file is fine.
Triggered with `{"scope": "all"}`, a run takes every landed file not loaded
yet, whatever its day (what the demo does after landing three weeks at once).

A rejected or failed file does not stop the others: both ingest tasks load every good file and return
their totals with the files not loaded, and `check_every_file_loaded` then fails the run, counting them
by status and listing each file and why, without retrying (the same file would be rejected again). Their
`ingestion_runs` rows say `rejected` (fix the file upstream) or `failed` (a load that broke: report it).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Asset, Param, task
from airflow.timetables.interval import CronDataIntervalTimetable

from data_pipeline.offline_store import PENGUINS_ASSET_URI, STATS_ASSET_URI

DRIVER_STATS_ASSET = Asset(STATS_ASSET_URI)
PENGUINS_ASSET = Asset(PENGUINS_ASSET_URI)

with DAG(
    dag_id="data_ingestion",
    # Data intervals, not bare trigger times: each run ingests exactly the day it covers.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),  # catchup is off: no backfill from here
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={"scope": Param("interval", enum=["interval", "all"],
                           description="interval: the files of the run's day; all: every landed file not loaded yet")},
    tags=["data"],
    doc_md=__doc__,
):

    @task(outlets=[DRIVER_STATS_ASSET])
    def ingest_driver_stats(data_interval_start=None, data_interval_end=None, outlet_events=None,
                            params=None) -> dict:
        from data_pipeline.ingest import ingest_scope

        batch, start, end = ingest_scope(params["scope"], data_interval_start, data_interval_end, "driver_stats",
                                         raise_on_rejected=False)
        outlet_events[DRIVER_STATS_ASSET].extra = {"interval_start": start.isoformat(), "interval_end": end.isoformat()}
        return batch.summary("driver_stats")

    @task
    def ingest_orders(data_interval_start=None, data_interval_end=None, params=None) -> dict:
        from data_pipeline.ingest import ingest_scope

        batch, _, _ = ingest_scope(params["scope"], data_interval_start, data_interval_end, "orders",
                                   raise_on_rejected=False)
        return batch.summary("orders")

    @task(outlets=[PENGUINS_ASSET])
    def ingest_penguins(data_interval_start=None, data_interval_end=None, outlet_events=None, params=None) -> dict:
        from data_pipeline.ingest import ingest_scope

        batch, start, end = ingest_scope(params["scope"], data_interval_start, data_interval_end, "penguins",
                                         raise_on_rejected=False)
        outlet_events[PENGUINS_ASSET].extra = {"interval_start": start.isoformat(), "interval_end": end.isoformat()}
        return batch.summary("penguins")

    @task
    def check_every_file_loaded(stats: dict, orders: dict, penguins: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from data_pipeline.ingest_report import not_loaded_message

        message = not_loaded_message([stats, orders, penguins])
        if message:
            raise AirflowFailException(message)

    check_every_file_loaded(ingest_driver_stats(), ingest_orders(), ingest_penguins())
