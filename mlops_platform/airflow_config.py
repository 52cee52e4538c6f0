"""Airflow's whole configuration, derived from the platform settings (no airflow.cfg edits), for both modes.

Every Airflow component gets the same environment (`airflow_env`), as the Airflow project asks. With
CeleryExecutor (AIRFLOW_EXECUTOR) the scheduler sends tasks through Redis, in a database of its own
(AIRFLOW_CELERY_REDIS_DB; Feast's online store is database 0), and the Celery workers (service
`airflow-worker`) store results in Airflow's PostgreSQL database. docs/airflow.md explains both executors.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlops_platform.settings import REPO_ROOT, Settings

CELERY = "CeleryExecutor"


def airflow_home(settings: Settings) -> Path:
    return settings.home / "airflow"


def airflow_env(settings: Settings) -> dict[str, str]:
    """Airflow's whole configuration, derived from the platform settings (no airflow.cfg edits)."""
    home = airflow_home(settings)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "airflow" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": settings.airflow_executor,
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow_parallelism),
        "AIRFLOW__CORE__FERNET_KEY": settings.airflow_fernet_key,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.postgres_url(settings.airflow_db),
        "AIRFLOW__API__HOST": settings.listen_address,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": settings.airflow_secret_key,
        "AIRFLOW__API_AUTH__JWT_SECRET": settings.airflow_secret_key,
        "AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME": str(settings.airflow_jwt_expiration_seconds),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "PYTHONPATH": str(REPO_ROOT),
        **(celery_env(settings) if settings.airflow_executor == CELERY else {}),
    }


def celery_env(settings: Settings) -> dict[str, str]:
    """CeleryExecutor's part: Redis (a database of its own) carries the tasks, Airflow's database their results."""
    env = {
        "AIRFLOW__CELERY__BROKER_URL": settings.airflow_celery_broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{settings.postgres_url(settings.airflow_db)}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.airflow_worker_concurrency),
        # A worker that dies takes the tasks it had received but not started: they stay queued (unacked in
        # Redis) until the scheduler takes them back after this timeout and queues them again.
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(settings.airflow_task_queued_timeout_seconds),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL":
            str(max(5, settings.airflow_task_queued_timeout_seconds // 6)),
    }
    if settings.airflow_worker_name:
        # Tasks record the worker's name as their host: several workers on one machine stay apart.
        env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = "mlops_platform.airflow_worker.hostname"
    return env


def airflow_component_command(settings: Settings, *component: str) -> list[str]:
    """`airflow <component>`. The scheduler (its LocalExecutor) and the Celery workers fork the tasks, so with
    AIRFLOW_PRELOAD on they import the tasks' modules first (mlops_platform.airflow_preload)."""
    forks_tasks = component[0] in ("scheduler", "celery")
    runner = "mlops_platform.airflow_preload" if forks_tasks and settings.airflow_preload == "on" else "airflow"
    return [sys.executable, "-m", runner, *component]


def airflow_worker_command(settings: Settings) -> list[str]:
    """`airflow celery worker`, named AIRFLOW_WORKER_NAME when set. Task logs are on the disk (or volume) every
    Airflow component shares, so the worker serves none over HTTP."""
    name = ["--celery-hostname", settings.airflow_worker_name] if settings.airflow_worker_name else []
    return airflow_component_command(settings, "celery", "worker", "--skip-serve-logs", *name)


def worker_refusal(settings: Settings) -> str:
    """Why a worker must not start with these settings ("" when it may): with LocalExecutor it has nothing to run."""
    if settings.airflow_executor == CELERY:
        return ""
    return (f"airflow-worker runs tasks for CeleryExecutor, but AIRFLOW_EXECUTOR is {settings.airflow_executor} "
            f"(its scheduler runs them): set AIRFLOW_EXECUTOR=CeleryExecutor, or run no worker (AIRFLOW_WORKERS=0)")


def airflow_worker_count(settings: Settings) -> int:
    """Celery workers run only with CeleryExecutor: AIRFLOW_WORKERS of them (`airflow up --workers N`), at least one."""
    return max(1, settings.airflow_workers) if settings.airflow_executor == CELERY else 0


def airflow_worker_variables(settings: Settings, index: int) -> dict[str, str]:
    """Worker i is named after its instance (airflow-worker, airflow-worker-2, ...): its Celery node and the
    host its tasks report, so task instances say which worker ran them."""
    return {"AIRFLOW_WORKER_NAME": "airflow-worker" if index == 1 else f"airflow-worker-{index}"}
