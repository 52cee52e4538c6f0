"""One place for configuration.

Values come from the process environment, then from `.env` at the repository root, then from the
defaults below (which match `.env.example`). They are read once per process. Hosts default to
127.0.0.1 for local mode; docker-compose.yml sets them to service names, so every URI below is right
in both modes without a branch.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class Settings:
    mode: str
    home: Path
    bind_address: str
    listen_address: str
    health_timeout: float

    postgres_host: str
    postgres_port: int
    postgres_user: str
    postgres_password: str
    feast_db: str
    mlflow_db: str
    airflow_db: str

    redis_host: str
    redis_port: int
    redis_password: str

    mlflow_host: str
    mlflow_port: int
    mlflow_workers: int

    airflow_host: str
    airflow_port: int
    airflow_admin_user: str
    airflow_admin_password: str
    airflow_parallelism: int
    airflow_fernet_key: str
    airflow_secret_key: str
    airflow_jwt_expiration_seconds: int

    kafka_host: str
    kafka_port: int
    kafka_controller_port: int
    kafka_heap: str

    landing_dir: Path
    ingest_max_invalid_share: float
    materialize_overlap_minutes: int
    driver_stats_topic: str
    driver_stats_dlq_topic: str
    stream_consumer_host: str
    stream_consumer_port: int

    monitoring_service_host: str
    monitoring_service_port: int
    monitor_interval_seconds: float
    monitor_window_minutes: int
    monitor_min_rows: int
    drift_share_threshold: float
    live_rmse_threshold: float
    retrain_sustain_minutes: float
    retrain_cooldown_minutes: float

    prometheus_host: str
    prometheus_port: int
    grafana_port: int
    elasticsearch_port: int
    kibana_port: int
    jenkins_port: int

    model_name: str
    model_alias: str
    serving_host: str
    serving_port: int
    serving_workers: int
    serving_max_drivers: int
    model_refresh_seconds: float
    serving_auth: bool
    serving_api_token: str
    predictions_topic: str
    ground_truth_topic: str
    event_spool_dir: Path
    event_spool_max_bytes: int
    prediction_logger_host: str
    prediction_logger_port: int

    log_level: str

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

    def text(key: str) -> str:
        return _lookup(env, key)

    def integer(key: str) -> int:
        raw = text(key)
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{key} must be an integer, got {raw!r}") from None

    def port(key: str) -> int:
        value = integer(key)
        if not 1 <= value <= 65535:
            raise SettingsError(f"{key} must be a TCP port in 1..65535, got {value}")
        return value

    def positive(key: str) -> int:
        value = integer(key)
        if value <= 0:
            raise SettingsError(f"{key} must be a positive integer, got {value}")
        return value

    def share(key: str) -> float:
        raw = text(key)
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise SettingsError(f"{key} must be a share between 0 and 1, got {raw!r}")
        return value

    mode = text("PLATFORM_MODE")
    if mode not in {"auto", "local", "docker"}:
        raise SettingsError(f"PLATFORM_MODE must be auto, local or docker, got {mode!r}")
    auth = text("SERVING_AUTH")
    if auth not in {"auto", "on", "off"}:
        raise SettingsError(f"SERVING_AUTH must be auto, on or off, got {auth!r}")
    serving_auth = auth == "on" or (auth == "auto" and mode == "docker")
    if serving_auth and not env.get("SERVING_API_TOKEN"):
        raise SettingsError("SERVING_AUTH is on but SERVING_API_TOKEN is empty: run `bash run.sh setup` or set it")
    home = Path(text("PLATFORM_HOME"))
    if not home.is_absolute():
        home = REPO_ROOT / home

    return Settings(
        mode=mode,
        home=home,
        bind_address=text("BIND_ADDRESS"),
        listen_address=text("LISTEN_ADDRESS"),
        health_timeout=float(text("HEALTH_TIMEOUT_SECONDS")),
        postgres_host=text("POSTGRES_HOST"),
        postgres_port=port("POSTGRES_PORT"),
        postgres_user=text("POSTGRES_USER"),
        postgres_password=text("POSTGRES_PASSWORD"),
        feast_db=text("FEAST_DB"),
        mlflow_db=text("MLFLOW_DB"),
        airflow_db=text("AIRFLOW_DB"),
        redis_host=text("REDIS_HOST"),
        redis_port=port("REDIS_PORT"),
        redis_password=text("REDIS_PASSWORD"),
        mlflow_host=text("MLFLOW_HOST"),
        mlflow_port=port("MLFLOW_PORT"),
        mlflow_workers=integer("MLFLOW_WORKERS"),
        airflow_host=text("AIRFLOW_HOST"),
        airflow_port=port("AIRFLOW_PORT"),
        airflow_admin_user=text("AIRFLOW_ADMIN_USER"),
        airflow_admin_password=text("AIRFLOW_ADMIN_PASSWORD"),
        airflow_parallelism=integer("AIRFLOW_PARALLELISM"),
        airflow_fernet_key=text("AIRFLOW_FERNET_KEY"),
        airflow_secret_key=text("AIRFLOW_SECRET_KEY"),
        airflow_jwt_expiration_seconds=integer("AIRFLOW_JWT_EXPIRATION_SECONDS"),
        kafka_host=text("KAFKA_HOST"),
        kafka_port=port("KAFKA_PORT"),
        kafka_controller_port=port("KAFKA_CONTROLLER_PORT"),
        kafka_heap=text("KAFKA_HEAP"),
        landing_dir=Path(env.get("LANDING_DIR") or home / "landing"),
        ingest_max_invalid_share=share("INGEST_MAX_INVALID_SHARE"),
        materialize_overlap_minutes=integer("MATERIALIZE_OVERLAP_MINUTES"),
        driver_stats_topic=text("DRIVER_STATS_TOPIC"),
        driver_stats_dlq_topic=text("DRIVER_STATS_DLQ_TOPIC"),
        stream_consumer_host=text("STREAM_CONSUMER_HOST"),
        stream_consumer_port=port("STREAM_CONSUMER_PORT"),
        monitoring_service_host=text("MONITORING_SERVICE_HOST"),
        monitoring_service_port=port("MONITORING_SERVICE_PORT"),
        monitor_interval_seconds=float(text("MONITOR_INTERVAL_SECONDS")),
        monitor_window_minutes=integer("MONITOR_WINDOW_MINUTES"),
        monitor_min_rows=integer("MONITOR_MIN_ROWS"),
        drift_share_threshold=share("DRIFT_SHARE_THRESHOLD"),
        live_rmse_threshold=float(text("LIVE_RMSE_THRESHOLD")),
        retrain_sustain_minutes=float(text("RETRAIN_SUSTAIN_MINUTES")),
        retrain_cooldown_minutes=float(text("RETRAIN_COOLDOWN_MINUTES")),
        prometheus_host=text("PROMETHEUS_HOST"),
        prometheus_port=port("PROMETHEUS_PORT"),
        grafana_port=port("GRAFANA_PORT"),
        elasticsearch_port=port("ELASTICSEARCH_PORT"),
        kibana_port=port("KIBANA_PORT"),
        jenkins_port=port("JENKINS_PORT"),
        model_name=text("MODEL_NAME"),
        model_alias=text("MODEL_ALIAS"),
        serving_host=text("SERVING_HOST"),
        serving_port=port("SERVING_PORT"),
        serving_workers=integer("SERVING_WORKERS") or (os.cpu_count() or 1),
        serving_max_drivers=integer("SERVING_MAX_DRIVERS"),
        model_refresh_seconds=float(text("MODEL_REFRESH_SECONDS")),
        serving_auth=serving_auth,
        serving_api_token=env.get("SERVING_API_TOKEN", "") if serving_auth else "",
        predictions_topic=text("PREDICTIONS_TOPIC"),
        ground_truth_topic=text("GROUND_TRUTH_TOPIC"),
        event_spool_dir=Path(env.get("EVENT_SPOOL_DIR") or home / "event-spool"),
        event_spool_max_bytes=positive("EVENT_SPOOL_MAX_BYTES"),
        prediction_logger_host=text("PREDICTION_LOGGER_HOST"),
        prediction_logger_port=port("PREDICTION_LOGGER_PORT"),
        log_level=text("LOG_LEVEL").upper(),
    )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return load_settings()
