"""The Celery worker of Airflow (service `airflow-worker`): the host name its tasks report, and its health.

With CeleryExecutor the scheduler puts each task on Redis and any worker runs it. Several workers on one
machine (local mode) would all report the machine's host name, so a worker named by AIRFLOW_WORKER_NAME
reports that name instead (Airflow's `core.hostname_callable` points here): a task instance's `hostname`
then says which worker ran it. A worker is healthy when it answers a Celery ping through the broker, which
proves it is connected and consuming, not merely alive.
"""

from __future__ import annotations

import socket

from mlops_platform.settings import Settings, get_settings

PING_TIMEOUT_SECONDS = 3.0


def hostname() -> str:
    """What Airflow records as the host of a task this worker runs."""
    return get_settings().airflow_worker_name or socket.getfqdn()


def node_name(settings: Settings) -> str:
    """The worker's Celery node: `celery@` + its name, or + the host's name (a container's own in docker mode)."""
    return f"celery@{settings.airflow_worker_name or socket.gethostname()}"


def ping(settings: Settings) -> str:
    """Health: the worker answers a Celery ping through the broker; raises RuntimeError when it does not."""
    from celery import Celery

    node = node_name(settings)
    app = Celery("airflow-worker-health", broker=settings.airflow_celery_broker_url, set_as_current=False)
    try:
        replies = app.control.ping(destination=[node], timeout=PING_TIMEOUT_SECONDS)
    finally:
        app.close()
    if not any(node in reply for reply in replies):
        raise RuntimeError(f"{node} did not answer a ping within {PING_TIMEOUT_SECONDS:.0f}s through Redis database "
                           f"{settings.airflow_celery_redis_db}: still starting, or not connected to the broker "
                           f"(see its log)")
    return f"{node} answers"
