"""platform_health: checks, from Airflow's own workers, that every service the pipelines need answers.

Trigger it after changing .env or the network: each task fails with the service's own error.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

SERVICES = ("postgres", "redis", "mlflow", "kafka")

with DAG(
    dag_id="platform_health",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["platform"],
    doc_md=__doc__,
):

    @task
    def check_service(name: str) -> str:
        from mlops_platform.health import check
        from mlops_platform.settings import get_settings

        healthy, detail = check(name, get_settings())
        if not healthy:
            raise RuntimeError(f"{name} is unhealthy: {detail}")
        return detail

    check_service.expand(name=list(SERVICES))
