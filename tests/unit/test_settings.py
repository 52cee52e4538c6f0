"""One settings module: environment over .env over documented defaults, with clear errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mlops_platform.settings import (
    DOCKER_ONLY_VARIABLES,
    REPO_ROOT,
    Settings,
    SettingsError,
    declared_variables,
    load_settings,
    read_env_file,
    setting_variables,
)

SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret", "REDIS_PASSWORD": "redis-secret", "AIRFLOW_ADMIN_PASSWORD": "af",
    "AIRFLOW_FERNET_KEY": "fernet", "AIRFLOW_SECRET_KEY": "secret",
}


def test_environment_wins_over_env_file_which_wins_over_defaults(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PORT=6543\nREDIS_PORT=7000\n# a comment\n\nMLFLOW_HOST='mlflow'\n")
    settings = load_settings({**SECRETS, "REDIS_PORT": "7100"}, env_file)
    assert settings.postgres_port == 6543
    assert settings.redis_port == 7100
    assert settings.mlflow_host == "mlflow"
    assert settings.airflow_port == 8080  # documented default from .env.example
    assert settings.home == REPO_ROOT / ".platform"


def test_uris_are_built_from_the_same_values_in_every_form(tmp_path: Path):
    settings = load_settings({**SECRETS, "POSTGRES_HOST": "postgres", "POSTGRES_PASSWORD": "p@ss/word"},
                             tmp_path / "missing.env")
    assert settings.postgres_url("feast", "psycopg") == "postgresql+psycopg://platform:p%40ss%2Fword@postgres:5432/feast"
    assert "host=postgres port=5432 dbname=mlflow" in settings.postgres_dsn("mlflow")
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.feast_environment()["POSTGRES_HOST"] == "postgres"


def test_a_missing_secret_says_how_to_create_it(tmp_path: Path):
    with pytest.raises(SettingsError, match="POSTGRES_PASSWORD is not set: run `bash run.sh setup`"):
        load_settings({}, tmp_path / "missing.env")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("POSTGRES_PORT", "five", "POSTGRES_PORT must be an integer, got 'five'"),
    ("REDIS_PORT", "70000", "REDIS_PORT must be a TCP port in 1..65535, got 70000"),
    ("PLATFORM_MODE", "cloud", "PLATFORM_MODE must be auto, local or docker, got 'cloud'"),
    ("LIVE_RMSE_THRESHOLD", "high", "LIVE_RMSE_THRESHOLD must be a number, got 'high'"),
])
def test_malformed_values_are_named(tmp_path: Path, key: str, value: str, message: str):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings({**SECRETS, key: value}, tmp_path / "missing.env")


def test_env_example_documents_every_setting_and_commits_no_secret():
    values = read_env_file(REPO_ROOT / ".env.example")
    for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
                "ELASTIC_PASSWORD", "JENKINS_ADMIN_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_SECRET_KEY",
                "SERVING_API_TOKEN"):
        assert values[key].startswith("__GENERATE"), key
    ports = {k: int(v) for k, v in values.items() if k.endswith("_PORT")}
    assert ports == {
        "POSTGRES_PORT": 5432, "REDIS_PORT": 6379, "MLFLOW_PORT": 5000, "AIRFLOW_PORT": 8080,
        "KAFKA_PORT": 9092, "KAFKA_CONTROLLER_PORT": 9093, "PROMETHEUS_PORT": 9090, "GRAFANA_PORT": 3000,
        "ELASTICSEARCH_PORT": 9200, "KIBANA_PORT": 5601, "JENKINS_PORT": 8081, "SERVING_PORT": 8000,
        "STREAM_CONSUMER_PORT": 9108, "PREDICTION_LOGGER_PORT": 9109,
        "MONITORING_SERVICE_PORT": 9110, "NOTEBOOK_PORT": 8888,
    }


def test_env_example_documents_exactly_the_declared_variables():
    """.env.example is the one place for defaults and documentation: a declared variable missing there has
    no default, and one only there is read by nobody."""
    documented, declared = set(read_env_file(REPO_ROOT / ".env.example")), declared_variables()
    assert not declared - documented, f"declared but not in .env.example: {sorted(declared - documented)}"
    assert not documented - declared, f"in .env.example but not declared: {sorted(documented - declared)}"


def test_each_variable_is_declared_once_and_fills_its_own_attribute():
    variables = [field.metadata["variable"] for field in dataclasses.fields(Settings)]
    assert len(variables) == len(set(variables)), "a variable is read into two Settings fields"
    assert not set(variables) & set(DOCKER_ONLY_VARIABLES), "a docker-only variable is also a setting"
    # Every field is filled from its variable: change each value and see it arrive in its own attribute.
    settings = load_settings({**SECRETS, "SERVING_API_TOKEN": "t0ken", "SERVING_AUTH": "on", "SERVING_WORKERS": "3",
                              "PLATFORM_HOME": "/srv/platform", "LOG_LEVEL": "debug"}, Path("/nonexistent/.env"))
    assert setting_variables()["SERVING_WORKERS"] == "serving_workers" and settings.serving_workers == 3
    assert (settings.log_level, settings.home) == ("DEBUG", Path("/srv/platform"))
    assert settings.landing_dir == Path("/srv/platform/landing")
    assert settings.event_spool_dir == Path("/srv/platform/event-spool")


def test_the_airflow_token_lifetime_is_a_setting_that_reaches_airflow(tmp_path: Path):
    from mlops_platform.services import airflow_env

    assert load_settings(SECRETS, tmp_path / "none").airflow_jwt_expiration_seconds == 86400
    short = load_settings({**SECRETS, "AIRFLOW_JWT_EXPIRATION_SECONDS": "30"}, tmp_path / "none")
    assert airflow_env(short)["AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME"] == "30"


def test_serving_auth_is_on_in_docker_mode_and_off_in_local_mode_by_default(tmp_path: Path):
    with_token = {**SECRETS, "SERVING_API_TOKEN": "t0ken"}
    assert load_settings({**with_token, "PLATFORM_MODE": "local"}, tmp_path / "none").serving_auth is False
    docker = load_settings({**with_token, "PLATFORM_MODE": "docker"}, tmp_path / "none")
    assert docker.serving_auth is True and docker.serving_api_token == "t0ken"
    assert load_settings({**with_token, "SERVING_AUTH": "on"}, tmp_path / "none").serving_auth is True
    with pytest.raises(SettingsError, match="SERVING_API_TOKEN is empty"):
        load_settings({**SECRETS, "SERVING_AUTH": "on", "SERVING_API_TOKEN": ""}, tmp_path / "none")


def test_docker_mode_also_writes_json_logs_to_the_shared_log_folder(tmp_path: Path, monkeypatch):
    import json
    import logging

    from mlops_platform import logs
    from mlops_platform import settings as settings_module

    monkeypatch.setenv("PLATFORM_MODE", "docker")
    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("SERVING_API_TOKEN", "t0ken")
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    settings_module.get_settings.cache_clear()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure_logging("unit-test").info("hello", extra={"request_id": "r-1", "latency_ms": 1.5})
        for handler in logging.getLogger().handlers:
            handler.flush()
        line = json.loads((tmp_path / "logs" / "unit-test.log").read_text().splitlines()[-1])
        assert line["message"] == "hello" and line["service"] == "unit-test" and line["request_id"] == "r-1"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        settings_module.get_settings.cache_clear()


def test_a_started_service_does_not_inherit_the_callers_metrics_directory(monkeypatch):
    """Feast's import sets prometheus_client's multiprocess directory in whoever imports it; a service
    inheriting it would write its metrics where MLflow's exporter reads them and reports them as its own."""
    from mlops_platform.services import merged_env

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/feast_metrics_x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROCESS_DIR", "/tmp/feast_metrics_x")
    env = merged_env({"PYTHONPATH": "/repo"}, {"PROMETHEUS_MULTIPROC_DIR": "/srv/serving-metrics"})
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/srv/serving-metrics"  # a service's own choice still applies
    assert "PROMETHEUS_MULTIPROCESS_DIR" not in env and env["PYTHONPATH"] == "/repo"
    assert env["PATH"] == os.environ["PATH"]
