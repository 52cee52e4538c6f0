"""One place for configuration: each variable declared once, as the Settings field that holds it.

A field names its environment variable and its parser (`setting("POSTGRES_PORT", port)`); its default
and its documentation live in `.env.example`, the one place for both. Values come from the process
environment, then from `.env` at the repository root, then from `.env.example`, and are read once per
process. Hosts default to 127.0.0.1 for local mode; docker-compose.yml sets them to service names, so
every URI below is right in both modes without a branch. tests/unit/test_settings.py checks that
`.env.example` holds exactly the declared variables, tests/unit/test_compose_environment.py that
docker-compose.yml passes only declared ones.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file of KEY=VALUE lines; blank lines and # comments are skipped."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


# ---- parsers: (variable, text) -> value, raising SettingsError that names the variable ----
Parser = Callable[[str, str], Any]


def text(key: str, raw: str) -> str:
    return raw


def upper(key: str, raw: str) -> str:
    return raw.upper()


def integer(key: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{key} must be an integer, got {raw!r}") from None


def number(key: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{key} must be a number, got {raw!r}") from None


def port(key: str, raw: str) -> int:
    value = integer(key, raw)
    if not 1 <= value <= 65535:
        raise SettingsError(f"{key} must be a TCP port in 1..65535, got {value}")
    return value


def positive(key: str, raw: str) -> int:
    value = integer(key, raw)
    if value <= 0:
        raise SettingsError(f"{key} must be a positive integer, got {value}")
    return value


def count(key: str, raw: str) -> int:
    value = integer(key, raw)
    if value < 0:
        raise SettingsError(f"{key} must be 0 or more, got {value}")
    return value


def share(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise SettingsError(f"{key} must be a share between 0 and 1, got {raw!r}")
    return value


def workers(key: str, raw: str) -> int:
    """A process count; 0 means one per core."""
    return integer(key, raw) or (os.cpu_count() or 1)


def home_folder(key: str, raw: str) -> Path:
    """A folder; a relative one is under the repository root."""
    path = Path(raw)
    return path if path.is_absolute() else REPO_ROOT / path


def optional_folder(key: str, raw: str) -> Path | None:
    """A folder, or None when empty (a rule in load_settings then puts it under PLATFORM_HOME)."""
    return Path(raw) if raw else None


def one_of(*choices: str) -> Parser:
    said = f"{', '.join(choices[:-1])} or {choices[-1]}"

    def parse(key: str, raw: str) -> str:
        if raw not in choices:
            raise SettingsError(f"{key} must be {said}, got {raw!r}")
        return raw

    return parse


def setting(variable: str, parse: Parser = text, *, placeholder_default: bool = False) -> Any:
    """A Settings field read from `variable` with `parse`.

    placeholder_default: the .env.example value is only a placeholder for `run.sh setup` to fill, and
    an unset variable reads as empty instead of failing (rules decide whether empty is allowed).
    """
    return dataclasses.field(metadata={"variable": variable, "parse": parse, "placeholder": placeholder_default})


@dataclass(frozen=True)
class Settings:
    mode: str = setting("PLATFORM_MODE", one_of("auto", "local", "docker"))
    home: Path = setting("PLATFORM_HOME", home_folder)
    bind_address: str = setting("BIND_ADDRESS")
    listen_address: str = setting("LISTEN_ADDRESS")
    health_timeout: float = setting("HEALTH_TIMEOUT_SECONDS", number)
    instance_port_step: int = setting("INSTANCE_PORT_STEP", positive)

    postgres_host: str = setting("POSTGRES_HOST")
    postgres_port: int = setting("POSTGRES_PORT", port)
    postgres_user: str = setting("POSTGRES_USER")
    postgres_password: str = setting("POSTGRES_PASSWORD")
    feast_db: str = setting("FEAST_DB")
    mlflow_db: str = setting("MLFLOW_DB")
    airflow_db: str = setting("AIRFLOW_DB")

    redis_host: str = setting("REDIS_HOST")
    redis_port: int = setting("REDIS_PORT", port)
    redis_password: str = setting("REDIS_PASSWORD")

    mlflow_host: str = setting("MLFLOW_HOST")
    mlflow_port: int = setting("MLFLOW_PORT", port)
    mlflow_workers: int = setting("MLFLOW_WORKERS", integer)

    airflow_host: str = setting("AIRFLOW_HOST")
    airflow_port: int = setting("AIRFLOW_PORT", port)
    airflow_admin_user: str = setting("AIRFLOW_ADMIN_USER")
    airflow_admin_password: str = setting("AIRFLOW_ADMIN_PASSWORD")
    airflow_parallelism: int = setting("AIRFLOW_PARALLELISM", integer)
    airflow_fernet_key: str = setting("AIRFLOW_FERNET_KEY")
    airflow_secret_key: str = setting("AIRFLOW_SECRET_KEY")
    airflow_jwt_expiration_seconds: int = setting("AIRFLOW_JWT_EXPIRATION_SECONDS", integer)
    airflow_executor: str = setting("AIRFLOW_EXECUTOR", one_of("LocalExecutor", "CeleryExecutor"))
    airflow_workers: int = setting("AIRFLOW_WORKERS", count)
    airflow_worker_concurrency: int = setting("AIRFLOW_WORKER_CONCURRENCY", positive)
    airflow_worker_name: str = setting("AIRFLOW_WORKER_NAME")
    airflow_celery_redis_db: int = setting("AIRFLOW_CELERY_REDIS_DB", integer)
    airflow_task_queued_timeout_seconds: int = setting("AIRFLOW_TASK_QUEUED_TIMEOUT_SECONDS", positive)
    airflow_preload: str = setting("AIRFLOW_PRELOAD", one_of("on", "off"))

    kafka_host: str = setting("KAFKA_HOST")
    kafka_port: int = setting("KAFKA_PORT", port)
    kafka_controller_port: int = setting("KAFKA_CONTROLLER_PORT", port)
    kafka_heap: str = setting("KAFKA_HEAP")

    landing_dir: Path = setting("LANDING_DIR", optional_folder)
    ingest_max_invalid_share: float = setting("INGEST_MAX_INVALID_SHARE", share)
    materialize_overlap_minutes: int = setting("MATERIALIZE_OVERLAP_MINUTES", integer)
    materialization_shards: int = setting("MATERIALIZATION_SHARDS", positive)
    driver_stats_topic: str = setting("DRIVER_STATS_TOPIC")
    driver_stats_dlq_topic: str = setting("DRIVER_STATS_DLQ_TOPIC")
    stream_consumer_host: str = setting("STREAM_CONSUMER_HOST")
    stream_consumer_port: int = setting("STREAM_CONSUMER_PORT", port)
    stream_consumers: int = setting("STREAM_CONSUMERS", positive)

    monitoring_service_host: str = setting("MONITORING_SERVICE_HOST")
    monitoring_service_port: int = setting("MONITORING_SERVICE_PORT", port)
    monitor_interval_seconds: float = setting("MONITOR_INTERVAL_SECONDS", number)
    monitor_window_minutes: int = setting("MONITOR_WINDOW_MINUTES", integer)
    monitor_min_rows: int = setting("MONITOR_MIN_ROWS", integer)
    drift_share_threshold: float = setting("DRIFT_SHARE_THRESHOLD", share)
    live_rmse_threshold: float = setting("LIVE_RMSE_THRESHOLD", number)
    retrain_sustain_minutes: float = setting("RETRAIN_SUSTAIN_MINUTES", number)
    retrain_cooldown_minutes: float = setting("RETRAIN_COOLDOWN_MINUTES", number)
    rollout_confidence: float = setting("ROLLOUT_CONFIDENCE", share)
    rollout_min_outcomes: int = setting("ROLLOUT_MIN_OUTCOMES", positive)
    rollout_max_error_rate: float = setting("ROLLOUT_MAX_ERROR_RATE", share)
    rollout_max_p99_ms: float = setting("ROLLOUT_MAX_P99_MS", number)
    rollout_bootstrap_samples: int = setting("ROLLOUT_BOOTSTRAP_SAMPLES", positive)

    prometheus_host: str = setting("PROMETHEUS_HOST")
    prometheus_port: int = setting("PROMETHEUS_PORT", port)
    grafana_port: int = setting("GRAFANA_PORT", port)
    elasticsearch_port: int = setting("ELASTICSEARCH_PORT", port)
    kibana_port: int = setting("KIBANA_PORT", port)
    jenkins_port: int = setting("JENKINS_PORT", port)

    model_name: str = setting("MODEL_NAME")
    model_alias: str = setting("MODEL_ALIAS")
    serving_host: str = setting("SERVING_HOST")
    serving_port: int = setting("SERVING_PORT", port)
    serving_replicas: int = setting("SERVING_REPLICAS", positive)
    serving_workers: int = setting("SERVING_WORKERS", workers)
    serving_max_drivers: int = setting("SERVING_MAX_DRIVERS", integer)
    model_refresh_seconds: float = setting("MODEL_REFRESH_SECONDS", number)
    rollout_refresh_seconds: float = setting("ROLLOUT_REFRESH_SECONDS", number)
    serving_score_threshold: float = setting("SERVING_SCORE_THRESHOLD", number)
    # Read as auto/on/off; load_settings turns it into on or off by the mode.
    serving_auth: bool = setting("SERVING_AUTH", one_of("auto", "on", "off"))
    serving_api_token: str = setting("SERVING_API_TOKEN", placeholder_default=True)
    predictions_topic: str = setting("PREDICTIONS_TOPIC")
    ground_truth_topic: str = setting("GROUND_TRUTH_TOPIC")
    # The projects served at /models/{name}/predict (mlops_platform.projects) log to these two topics.
    model_predictions_topic: str = setting("MODEL_PREDICTIONS_TOPIC")
    model_ground_truth_topic: str = setting("MODEL_GROUND_TRUTH_TOPIC")
    notebook_port: int = setting("NOTEBOOK_PORT", port)
    event_spool_dir: Path = setting("EVENT_SPOOL_DIR", optional_folder)
    event_spool_max_bytes: int = setting("EVENT_SPOOL_MAX_BYTES", positive)
    prediction_logger_host: str = setting("PREDICTION_LOGGER_HOST")
    prediction_logger_port: int = setting("PREDICTION_LOGGER_PORT", port)

    log_level: str = setting("LOG_LEVEL", upper)

    # ---- derived values: every consumer builds URIs here, never by hand ----
    def postgres_dsn(self, database: str) -> str:
        """libpq key/value DSN (psycopg2, psql)."""
        return (
            f"host={self.postgres_host} port={self.postgres_port} dbname={database} "
            f"user={self.postgres_user} password={self.postgres_password} sslmode=disable"
        )

    def postgres_url(self, database: str, driver: str = "psycopg2") -> str:
        """SQLAlchemy URL, e.g. driver='psycopg' for Feast's registry."""
        return (
            f"postgresql+{driver}://{quote(self.postgres_user, safe='')}:"
            f"{quote(self.postgres_password, safe='')}@{self.postgres_host}:{self.postgres_port}/{database}"
        )

    @property
    def databases(self) -> tuple[str, str, str]:
        return (self.feast_db, self.mlflow_db, self.airflow_db)

    @property
    def redis_url(self) -> str:
        return f"redis://:{quote(self.redis_password, safe='')}@{self.redis_host}:{self.redis_port}/0"

    @property
    def redis_connection_string(self) -> str:
        """The form Feast's Redis online store takes."""
        return f"{self.redis_host}:{self.redis_port},password={self.redis_password}"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"http://{self.mlflow_host}:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{self.airflow_host}:{self.airflow_port}"

    @property
    def airflow_celery_broker_url(self) -> str:
        """Celery's broker: the platform's Redis, in a database of its own (Feast's online store is in 0)."""
        return (f"redis://:{quote(self.redis_password, safe='')}@{self.redis_host}:{self.redis_port}/"
                f"{self.airflow_celery_redis_db}")

    @property
    def kafka_bootstrap_servers(self) -> str:
        return f"{self.kafka_host}:{self.kafka_port}"

    @property
    def stream_consumer_url(self) -> str:
        return f"http://{self.stream_consumer_host}:{self.stream_consumer_port}"

    @property
    def prediction_logger_url(self) -> str:
        return f"http://{self.prediction_logger_host}:{self.prediction_logger_port}"

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.model_alias}"

    @property
    def monitoring_service_url(self) -> str:
        return f"http://{self.monitoring_service_host}:{self.monitoring_service_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.prometheus_host}:{self.prometheus_port}"

    @property
    def serving_url(self) -> str:
        return f"http://{self.serving_host}:{self.serving_port}"

    def feast_environment(self) -> dict[str, str]:
        """The variables feast_repo/feature_store.yaml expands (Feast reads only the process environment)."""
        return {
            "POSTGRES_HOST": self.postgres_host,
            "POSTGRES_PORT": str(self.postgres_port),
            "POSTGRES_USER": self.postgres_user,
            "POSTGRES_PASSWORD": self.postgres_password,
            "FEAST_DB": self.feast_db,
            "REDIS_HOST": self.redis_host,
            "REDIS_PORT": str(self.redis_port),
            "REDIS_PASSWORD": self.redis_password,
        }


# Variables of docker mode that no Python service reads: compose hands them to the images that need
# them, and run.sh or mlops_platform/docker_mode.py read them for builds and the table of logins.
DOCKER_ONLY_VARIABLES: dict[str, str] = {
    "BASE_IMAGE": "the image every image of ours starts FROM (compose build args, docker_mode.py)",
    "BUILD_CA_BUNDLE": "extra CA certificates image builds trust (run.sh, docker_mode.py)",
    "GRAFANA_ADMIN_USER": "Grafana's admin login (compose -> grafana)",
    "GRAFANA_ADMIN_PASSWORD": "Grafana's admin password (compose -> grafana)",
    "ELASTIC_PASSWORD": "the elastic user's password (compose -> Elasticsearch, Kibana, Filebeat, setup jobs)",
    "KIBANA_SYSTEM_PASSWORD": "the kibana_system user's password (compose -> Kibana, elk-setup)",
    "KIBANA_ENCRYPTION_KEY": "Kibana's saved-object and reporting encryption key (compose -> kibana)",
    "JENKINS_ADMIN_USER": "Jenkins' admin login (compose -> jenkins, casc.yaml)",
    "JENKINS_ADMIN_PASSWORD": "Jenkins' admin password (compose -> jenkins, casc.yaml)",
}


def setting_variables() -> dict[str, str]:
    """Environment variable -> Settings attribute, for every variable the Python services read."""
    return {f.metadata["variable"]: f.name for f in dataclasses.fields(Settings)}


def declared_variables() -> set[str]:
    """Every configuration variable of the platform: what .env.example documents, no more, no less."""
    return set(setting_variables()) | set(DOCKER_ONLY_VARIABLES)


_DEFAULTS: dict[str, str] = read_env_file(REPO_ROOT / ".env.example")


def _lookup(env: dict[str, str], key: str) -> str:
    if key in env:
        return env[key]
    default = _DEFAULTS.get(key)
    if default is None or default.startswith("__GENERATE"):
        raise SettingsError(
            f"{key} is not set: run `bash run.sh setup` to create .env, or export {key}"
        )
    return default


def load_settings(environ: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Build settings from an environment mapping and a dotenv file (the environment wins)."""
    env = read_env_file(env_file or REPO_ROOT / ".env")
    env.update(os.environ if environ is None else environ)
    values = {}
    for field in dataclasses.fields(Settings):
        variable = field.metadata["variable"]
        raw = env.get(variable, "") if field.metadata["placeholder"] else _lookup(env, variable)
        values[field.name] = field.metadata["parse"](variable, raw)
    return Settings(**_apply_rules(values))


def _apply_rules(values: dict[str, Any]) -> dict[str, Any]:
    """The rules that join several variables: serving auth by mode, folders under PLATFORM_HOME."""
    auth, token = values["serving_auth"], values["serving_api_token"]
    serving_auth = auth == "on" or (auth == "auto" and values["mode"] == "docker")
    if serving_auth and not token:
        raise SettingsError("SERVING_AUTH is on but SERVING_API_TOKEN is empty: run `bash run.sh setup` or set it")
    if not 1 <= values["airflow_celery_redis_db"] <= 15:
        raise SettingsError(f"AIRFLOW_CELERY_REDIS_DB must be a Redis database in 1..15 (0 holds Feast's online "
                            f"store), got {values['airflow_celery_redis_db']}")
    home = values["home"]
    return {**values, "serving_auth": serving_auth, "serving_api_token": token if serving_auth else "",
            "landing_dir": values["landing_dir"] or home / "landing",
            "event_spool_dir": values["event_spool_dir"] or home / "event-spool"}


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return load_settings()
