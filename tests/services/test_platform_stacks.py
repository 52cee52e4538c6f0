"""Each local stack comes up healthy through `bash run.sh all up` and answers real requests."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from tests.conftest import eventually, run_sh, secrets_on_command_lines


def http_json(url: str, data: dict | None = None, token: str | None = None, method: str | None = None):
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                     method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_all_up_reports_local_mode_and_skips_docker_only_services(platform_up):
    assert "mode: local" in platform_up.stdout
    for service in ("grafana", "elasticsearch", "kibana", "jenkins"):
        assert f"{service}" in platform_up.stdout and "docker mode only" in platform_up.stdout


def test_status_table_shows_every_local_service_healthy(platform_up):
    result = run_sh("all", "status")
    lines = result.stdout.splitlines()
    assert lines[1].split()[:6] == ["SERVICE", "STACK", "MODE", "URL", "RESTARTS", "HEALTH"]
    for service in ("postgres", "redis", "mlflow", "airflow-api-server", "airflow-scheduler",
                    "airflow-dag-processor", "airflow-triggerer", "kafka", "prometheus"):
        row = next(line for line in lines if line.startswith(service + " "))
        assert " local " in row and "healthy:" in row and "unhealthy" not in row, row


def test_each_database_answers_sql(platform_up, settings):
    import psycopg2

    for database in (settings.feast_db, settings.mlflow_db, settings.airflow_db):
        conn = psycopg2.connect(settings.postgres_dsn(database))
        try:
            with conn.cursor() as cur:
                cur.execute("select current_database()")
                assert cur.fetchone()[0] == database
        finally:
            conn.close()


def test_redis_answers_and_requires_its_password(platform_up, settings):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def client(password):
        return redis.Redis(host=settings.redis_host, port=settings.redis_port, password=password,
                           retry=Retry(NoBackoff(), 0))

    assert client(settings.redis_password).ping() is True
    with pytest.raises(redis.AuthenticationError):
        client("wrong").ping()
    with pytest.raises((redis.AuthenticationError, redis.ResponseError), match="NOAUTH|Authentication"):
        client(None).get("anything")


def test_mlflow_health_and_a_logged_run_round_trips(platform_up, settings):
    import mlflow
    from mlflow.tracking import MlflowClient

    with urllib.request.urlopen(f"{settings.mlflow_tracking_uri}/health", timeout=5) as response:
        assert response.status == 200
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    experiment = f"platform-smoke-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "alpha", "0.5")
    client.log_metric(run.info.run_id, "rmse", 0.25)
    client.log_text(run.info.run_id, "artifact served by the tracking server", "notes/readme.txt")
    client.set_terminated(run.info.run_id)

    fetched = client.get_run(run.info.run_id)
    assert fetched.data.params == {"alpha": "0.5"}
    assert fetched.data.metrics == {"rmse": 0.25}
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/readme.txt") == (
        "artifact served by the tracking server"
    )


def airflow_token(settings) -> str:
    return http_json(f"{settings.airflow_url}/auth/token",
                     {"username": settings.airflow_admin_user, "password": settings.airflow_admin_password})[
        "access_token"
    ]


def test_airflow_health_and_a_dag_is_listed(platform_up, settings):
    health = http_json(f"{settings.airflow_url}/api/v2/monitor/health")
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[component]["status"] == "healthy", health
    token = airflow_token(settings)

    def listed():
        dags = http_json(f"{settings.airflow_url}/api/v2/dags", token=token)["dags"]
        return {dag["dag_id"] for dag in dags} >= {"platform_health"}

    eventually(listed, timeout=120, interval=0.5)


def test_airflow_rejects_a_wrong_password(platform_up, settings):
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as excinfo:
        http_json(f"{settings.airflow_url}/auth/token",
                  {"username": settings.airflow_admin_user, "password": "not-the-password"})
    assert excinfo.value.code in (401, 403)


def test_kafka_topic_is_created_and_a_message_round_trips(platform_up, settings):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"platform-smoke-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        assert topic in admin.list_topics()
    finally:
        admin.close()
    payload = json.dumps({"driver_id": 1001, "probe": uuid.uuid4().hex}).encode()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    producer.send(topic, payload).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=30000,
                             group_id=f"smoke-{uuid.uuid4().hex[:6]}")
    try:
        received = next(iter(consumer)).value
    finally:
        consumer.close()
    assert received == payload


def test_prometheus_is_ready_and_scrapes_itself(platform_up, settings):
    with urllib.request.urlopen(f"{settings.prometheus_url}/-/ready", timeout=5) as response:
        assert response.status == 200

    def up_series():
        body = http_json(f"{settings.prometheus_url}/api/v1/query?query=up")
        return [r for r in body["data"]["result"] if r["metric"].get("job") == "prometheus"]

    series = eventually(up_series, timeout=60, interval=0.5)
    assert series[0]["value"][1] == "1"
    assert series[0]["metric"]["instance"] == f"127.0.0.1:{settings.prometheus_port}"


@pytest.mark.parametrize("stack", ["elk", "jenkins"])
def test_docker_only_stacks_refuse_local_up_when_asked_alone(stack):
    result = run_sh(stack, "up", check=False)
    assert result.returncode != 0
    assert "docker mode only" in result.stderr


def test_a_dag_triggered_through_the_rest_api_runs_on_the_scheduler(platform_up, settings):
    """The real path, not `airflow dags test`: scheduler, LocalExecutor workers and the execution API."""
    from mlops_platform.airflow_client import AirflowClient

    client = AirflowClient.from_settings(settings)
    eventually(lambda: client.run_state("platform_health", client.trigger("platform_health")) is not None,
               timeout=120, interval=0.5)
    run_id = client.runs("platform_health", limit=1)[0]["dag_run_id"]
    assert client.wait("platform_health", run_id, timeout=300) == "success"


def test_no_process_of_the_platform_shows_a_secret_on_its_command_line(platform_up, settings):
    secrets = {"POSTGRES_PASSWORD": settings.postgres_password, "REDIS_PASSWORD": settings.redis_password,
               "AIRFLOW_ADMIN_PASSWORD": settings.airflow_admin_password,
               "AIRFLOW_SECRET_KEY": settings.airflow_secret_key, "AIRFLOW_FERNET_KEY": settings.airflow_fernet_key,
               "SERVING_API_TOKEN": settings.serving_api_token}
    assert not secrets_on_command_lines(secrets)
