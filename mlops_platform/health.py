"""Health checks, one per service: `python -m mlops_platform.health <service>` exits 0 when healthy.

docker-compose.yml's healthchecks and local mode's `up`/`status` call the same functions, so "healthy"
means the same thing in both modes: the service answers a real request, not merely that a port is open.
A service whose health is a gauge of its metrics says so in its row of the service table
(services.MetricsHealth); one function, `metrics_health`, checks them all.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial

from mlops_platform.postgres import open_connection
from mlops_platform.services import SERVICES, Service
from mlops_platform.settings import Settings, get_settings

TIMEOUT_SECONDS = 3.0


class Unhealthy(Exception):
    """The service answered badly or not at all; the message says how."""


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise Unhealthy(f"{url} does not answer ({getattr(exc, 'reason', exc)})") from None


def scrape_metrics(url: str) -> dict[str, float]:
    """A service's /metrics as sample name -> value, summed over labels (for services whose health is a gauge)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = _get(url)
    if status != 200:
        raise Unhealthy(f"{url} answered {status}")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


class _AbsentReadsZero(dict):
    def __missing__(self, key: str) -> float:
        return 0.0


def metrics_health(service: Service, settings: Settings) -> str:
    """Healthy when the service's /metrics answers with its ready gauge at 1 (services.MetricsHealth);
    the detail is the service's summary of its samples."""
    spec = service.health
    url = service.url(settings)
    values = scrape_metrics(url)
    if spec.ready_gauge not in values:
        raise Unhealthy(f"{url} answered without {spec.ready_gauge}: is this the {service.name.replace('-', ' ')}?")
    if values[spec.ready_gauge] != 1.0:
        raise Unhealthy(f"{spec.ready_gauge} is {values[spec.ready_gauge]:g}, expected 1: {spec.not_ready_means}")
    return "ready, " + spec.summary.format_map(_AbsentReadsZero(values))


def postgres(settings: Settings) -> str:
    import psycopg2

    for database in settings.databases:
        try:
            conn = open_connection(settings, timeout=int(TIMEOUT_SECONDS), database=database)
            try:
                with conn.cursor() as cur:
                    cur.execute("select 1")
            finally:
                conn.close()
        except psycopg2.Error as exc:
            raise Unhealthy(f"database {database!r}: {str(exc).strip().splitlines()[0]}") from None
    return f"databases {', '.join(settings.databases)} answer"


def redis(settings: Settings) -> str:
    import redis as redis_lib

    from mlops_platform.redis_client import redis_client

    client = redis_client(settings, timeout=TIMEOUT_SECONDS, retries=0)
    try:
        client.ping()
    except redis_lib.RedisError as exc:
        raise Unhealthy(f"PING failed: {exc}") from None
    finally:
        client.close()
    return "PING answered"


def mlflow(settings: Settings) -> str:
    status, body = _get(f"{settings.mlflow_tracking_uri}/health")
    if status != 200:
        raise Unhealthy(f"/health answered {status}: {body[:200]}")
    return "/health OK"


def _airflow_health(settings: Settings) -> dict:
    status, body = _get(f"{settings.airflow_url}/api/v2/monitor/health")
    if status != 200:
        raise Unhealthy(f"/api/v2/monitor/health answered {status}")
    return json.loads(body)


def airflow_component(key: str) -> Callable[[Settings], str]:
    def check(settings: Settings) -> str:
        component = _airflow_health(settings).get(key) or {}
        if component.get("status") != "healthy":
            raise Unhealthy(f"{key} is {component.get('status') or 'not reporting'} "
                            f"(last heartbeat {component.get('latest_' + key + '_heartbeat', 'never')})")
        return f"{key} healthy"
    return check


def airflow_worker(settings: Settings) -> str:
    from mlops_platform import airflow_worker as worker

    try:
        return worker.ping(settings)
    except RuntimeError as exc:
        raise Unhealthy(str(exc)) from None


def kafka(settings: Settings) -> str:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers,
                                 request_timeout_ms=int(TIMEOUT_SECONDS * 1000))
    except (KafkaError, OSError) as exc:
        raise Unhealthy(f"broker {settings.kafka_bootstrap_servers} does not answer ({exc})") from None
    try:
        topics = admin.list_topics()
    finally:
        admin.close()
    return f"broker answers, {len(topics)} topics"


def serving(settings: Settings) -> str:
    """Alive is healthy; whether a model is loaded is reported, since a fresh platform has none yet."""
    status, body = _get(f"{settings.serving_url}/health")
    if status != 200:
        raise Unhealthy(f"/health answered {status}: {body[:200]}")
    ready_status, ready_body = _get(f"{settings.serving_url}/ready")
    return "ready" if ready_status == 200 else f"alive, not ready: {ready_body[:160]}"


def prometheus(settings: Settings) -> str:
    status, body = _get(f"{settings.prometheus_url}/-/ready")
    if status != 200:
        raise Unhealthy(f"/-/ready answered {status}: {body[:200]}")
    return "ready"


CHECKS: dict[str, Callable[[Settings], str]] = {
    "postgres": postgres,
    "redis": redis,
    "mlflow": mlflow,
    "airflow-api-server": lambda s: ("metadatabase " + _airflow_health(s)["metadatabase"]["status"]),
    "airflow-scheduler": airflow_component("scheduler"),
    "airflow-dag-processor": airflow_component("dag_processor"),
    "airflow-triggerer": airflow_component("triggerer"),
    "airflow-worker": airflow_worker,
    "kafka": kafka,
    "serving": serving,
    "serving-lb": serving,  # HAProxy is healthy when a replica of the API answers through it
    "prometheus": prometheus,
    **{service.name: partial(metrics_health, service) for service in SERVICES if service.health is not None},
}


def check(name: str, settings: Settings) -> tuple[bool, str]:
    """(healthy, what was seen): never raises for an unhealthy service."""
    try:
        return True, CHECKS[name](settings)
    except Unhealthy as exc:
        return False, str(exc)
    except Exception as exc:  # a client library's own error type we did not foresee
        return False, f"{type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CHECKS:
        print(f"usage: python -m mlops_platform.health <{'|'.join(CHECKS)}>", file=sys.stderr)
        return 2
    healthy, detail = check(argv[0], get_settings())
    print(f"{argv[0]}: {'healthy' if healthy else 'unhealthy'}: {detail}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
