"""data_ingestion and feature_materialization run end to end with `airflow dags test` on real services."""

from __future__ import annotations

from datetime import date

import pytest

from data_pipeline.materialize import delete_online_rows
from data_pipeline.offline_store import ensure_schema
from feast_repo.features import FEATURE_SERVICE
from mlops_platform.feature_store import feature_store
from mlops_platform.postgres import connect
from simulation.generate import generate
from tests.conftest import airflow_dags_test

DAY = date(2025, 2, 9)
# A run triggered at midnight covers the day that just ended: data interval [DAY, DAY + 1 day).
RUN_DATE = "2025-02-10T00:00:00+00:00"


@pytest.fixture(scope="module")
def landed(settings, feast_up, airflow_up):
    ensure_schema()
    with connect() as conn, conn.cursor() as cur:
        cur.execute("delete from driver_hourly_stats where source like %s", ("%date=2025-02-%",))
        cur.execute("delete from orders where source like %s", ("%date=2025-02-%",))
        cur.execute("delete from quarantine where source like %s", ("%date=2025-02-%",))
        cur.execute("delete from ingestion_runs where source like %s", ("%date=2025-02-%",))
    delete_online_rows(feature_store(settings), range(1001, 1013))  # no value from an earlier session
    return generate(drivers=12, days=2, end=date(2025, 2, 11), seed=11, bad_row_rate=0.02,
                    landing=settings.landing_dir)


def counts_by_source(table: str) -> dict[str, int]:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"select source, count(*) from {table} where source like %s group by source",
                    ("%date=2025-02-%",))
        return dict(cur.fetchall())


def shard_tasks(settings, logical_date: str) -> list[tuple[int, str]]:
    """(map index, state) of each materialize_shard task of the DAG run at `logical_date`, from Airflow's database."""
    import psycopg2

    conn = psycopg2.connect(settings.postgres_dsn(settings.airflow_db))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "select ti.map_index, ti.state from task_instance ti join dag_run dr "
                "on dr.dag_id = ti.dag_id and dr.run_id = ti.run_id where dr.dag_id = 'feature_materialization' "
                "and dr.logical_date = %s and ti.task_id = 'materialize_shard' order by ti.map_index", (logical_date,))
            return [(int(index), str(state)) for index, state in cur.fetchall()]
    finally:
        conn.close()


def test_ingestion_dag_loads_exactly_its_interval_and_quarantines_bad_rows(settings, landed):
    airflow_dags_test(settings, "data_ingestion", RUN_DATE)

    stats_files = [f for f in landed.datasets["driver_stats"].files]
    inside = [f for f in stats_files if f"date={DAY.isoformat()}" in f]
    outside = [f for f in stats_files if f not in inside]
    loaded = counts_by_source("driver_hourly_stats")
    assert set(loaded) == set(inside), "only the run's own day is ingested"
    assert not set(outside) & set(loaded)
    planted = [p for p in landed.datasets["driver_stats"].planted if p.file in inside]
    quarantined = counts_by_source("quarantine")
    assert sum(quarantined.get(f, 0) for f in inside) == len(planted)
    assert set(counts_by_source("orders")) == {f for f in landed.datasets["orders"].files if DAY.isoformat() in f}

    before = (counts_by_source("driver_hourly_stats"), counts_by_source("orders"), counts_by_source("quarantine"))
    airflow_dags_test(settings, "data_ingestion", RUN_DATE)
    after = (counts_by_source("driver_hourly_stats"), counts_by_source("orders"), counts_by_source("quarantine"))
    assert after == before, "re-running an interval adds nothing"


def test_materialization_dag_puts_the_latest_loaded_row_of_each_driver_online(settings, landed):
    airflow_dags_test(settings, "data_ingestion", RUN_DATE)
    airflow_dags_test(settings, "feature_materialization", "2025-02-10T00:00:00+00:00", {"lookback_hours": 24},
                      env={"MATERIALIZATION_SHARDS": "3"})
    assert shard_tasks(settings, "2025-02-10T00:00:00+00:00") == [(0, "success"), (1, "success"), (2, "success")]

    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            "select distinct on (driver_id) driver_id, conv_rate, acc_rate, avg_daily_trips "
            "from driver_hourly_stats where source like %s order by driver_id, event_timestamp desc",
            (f"%date={DAY.isoformat()}%",))
        expected = {row[0]: row[1:] for row in cur.fetchall()}
    assert len(expected) == 12
    store = feature_store(settings)
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE),
        entity_rows=[{"driver_id": d} for d in expected]).to_dict()
    for i, driver in enumerate(online["driver_id"]):
        conv, acc, trips = expected[driver]
        assert online["conv_rate"][i] == pytest.approx(conv)
        assert online["acc_rate"][i] == pytest.approx(acc)
        assert online["avg_daily_trips"][i] == trips
