"""Failed DAG runs of the last 24 hours, per DAG, from Airflow's REST API (every DAG, 0 when none failed)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from urllib.parse import quote

LOOKBACK = timedelta(hours=24)
PAGE = 1000


def count_failed(dag_ids: list[str], failed_runs: list[dict]) -> dict[str, int]:
    """dag_id -> failed runs, for every DAG listed (0 included) and any DAG that only appears in a run."""
    counts = Counter(str(run["dag_id"]) for run in failed_runs)
    return {dag_id: counts.get(dag_id, 0) for dag_id in sorted(set(dag_ids) | set(counts))}


def failed_dag_runs(client, now: datetime) -> dict[str, int]:
    """Ask Airflow; raises mlops_platform.airflow_client.AirflowError when it does not answer."""
    since = quote((now - LOOKBACK).isoformat())
    dags = client.request("GET", f"/api/v2/dags?limit={PAGE}")["dags"]
    failed = client.request("GET", f"/api/v2/dags/~/dagRuns?state=failed&end_date_gte={since}&limit={PAGE}")
    return count_failed([dag["dag_id"] for dag in dags], failed["dag_runs"])
