"""The data_ingestion DAG loads every good file of its interval even when another file is bad, then fails the
run naming the bad file, on real services (`airflow dags test`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import date

from data_pipeline.offline_store import ensure_schema
from mlops_platform.postgres import connect
from simulation.generate import generate
from tests.conftest import REPO_ROOT

DAY = date(2025, 3, 9)
RUN_DATE = "2025-03-10T00:00:00+00:00"  # data interval [DAY, DAY + 1 day)
PATTERN = f"%date={DAY.isoformat()}%"


def forget_the_day() -> None:
    with connect() as conn, conn.cursor() as cur:
        for table in ("driver_hourly_stats", "orders", "quarantine", "ingestion_runs"):
            cur.execute(f"delete from {table} where source like %s", (PATTERN,))


def dags_test(settings, dag_id: str, logical_date: str) -> str:
    """`airflow dags test` whatever the run's outcome; returns its output."""
    from mlops_platform.airflow_client import AirflowClient
    from mlops_platform.services import airflow_env, merged_env

    AirflowClient.from_settings(settings).pause(dag_id)
    result = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", dag_id, logical_date], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600, env=merged_env(airflow_env(settings)))
    return result.stdout + result.stderr


def test_a_bad_file_fails_the_run_after_the_good_ones_were_loaded(settings, feast_up, airflow_up):
    ensure_schema()
    forget_the_day()
    landed = generate(drivers=6, days=1, end=date(2025, 3, 10), seed=31, bad_row_rate=0.0,
                      landing=settings.landing_dir)
    stats_file, orders_file = landed.datasets["driver_stats"].files[0], landed.datasets["orders"].files[0]
    # The stats file is the bad one: no new stats row reaches the online store through materialization.
    (settings.landing_dir / stats_file).write_bytes(b"")  # nothing a reader can use
    try:
        output = dags_test(settings, "data_ingestion", RUN_DATE)
    finally:
        shutil.rmtree(settings.landing_dir / "orders" / f"date={DAY.isoformat()}", ignore_errors=True)
        shutil.rmtree(settings.landing_dir / "driver_stats" / f"date={DAY.isoformat()}", ignore_errors=True)

    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    assert finished and "state=failed" in finished[-1], output[-5000:]
    assert f"{stats_file} (driver_stats, rejected)" in output and "the file is empty" in output, output[-5000:]
    with connect() as conn, conn.cursor() as cur:
        cur.execute("select count(*) from orders where source = %s", (orders_file,))
        assert cur.fetchone()[0] == landed.datasets["orders"].rows_written
        cur.execute("select source, status from ingestion_runs where source like %s order by source", (PATTERN,))
        assert cur.fetchall() == [(stats_file, "rejected"), (orders_file, "loaded")]
    forget_the_day()
