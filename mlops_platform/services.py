"""What each service of the platform is: its stack, port, URL, dependencies and how to run it.

One table serves both run modes. docker-compose.yml runs our own services with
`python -m mlops_platform.exec <name>` and checks them with `python -m mlops_platform.health <name>`;
local mode starts the very same commands as processes. Services from upstream images (PostgreSQL,
Redis, Kafka, Prometheus) run here from Debian's packages and Maven's jars with equivalent settings.
A row with `scaling` runs as several instances (serving replicas behind HAProxy, stream consumers in one
group): how many, and what differs between them, is declared here; mlops_platform.instances makes them.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import pwd
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlops_platform import mlflow_server
from mlops_platform.airflow_config import (
    airflow_component_command,
    airflow_env,
    airflow_home,
    airflow_worker_command,
    airflow_worker_count,
    airflow_worker_variables,
)
from mlops_platform.settings import REPO_ROOT, Settings

STACKS = ("feast", "mlflow", "airflow", "kafka", "monitoring", "elk", "jenkins", "serving")
KAFKA_LIBS = REPO_ROOT / "platform" / "kafka" / "target" / "kafka-libs"
PROMETHEUS_CONFIG = REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml"


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsHealth:
    """Health read from the service's /metrics (its `url`): healthy when `ready_gauge` is 1.

    `not_ready_means` says what a 0 means; `summary` is the detail shown once ready, a format string
    over the scraped samples (summed over labels; an absent one reads 0), e.g. "lag {my_lag:.0f}".
    """

    ready_gauge: str
    not_ready_means: str
    summary: str


@dataclass(frozen=True)
class Scaling:
    """A service run as several instances, each a process (local mode) or container (docker mode) of its own.

    `count` is how many `up` runs (a setting, e.g. SERVING_REPLICAS); `variables(settings, i)` the
    environment variables instance i (1..count) gets on top of the platform's, e.g. its own port. Local
    mode names instance 1 after the service and instance i `<service>-<i>` (mlops_platform.instances),
    so one instance is exactly the service as it always was. `front`: the service that balances the
    instances (started after them, told when their number changes), if any.
    """

    count: Callable[[Settings], int]
    variables: Callable[[Settings, int], dict[str, str]] = lambda s, i: {}
    front: str = ""


def instance_port(base: int, step: int, slot: int) -> int:
    """Port of slot `slot` of a scaled service: its own port for slot 0, then `step` apart."""
    port = base + slot * step
    if not 1 <= port <= 65535:
        raise ValueError(f"instance port {base} + {slot} * {step} = {port} is not a TCP port: lower "
                         f"INSTANCE_PORT_STEP or the number of instances")
    return port


def serving_replica_variables(settings: Settings, index: int) -> dict[str, str]:
    """Replica i listens on SERVING_PORT + i * INSTANCE_PORT_STEP; SERVING_PORT itself is HAProxy's."""
    return {"SERVING_PORT": str(instance_port(settings.serving_port, settings.instance_port_step, index))}


def stream_consumer_variables(settings: Settings, index: int) -> dict[str, str]:
    """Consumer 1 keeps STREAM_CONSUMER_PORT for its metrics, consumer i the (i - 1)th step after it."""
    return {"STREAM_CONSUMER_PORT": str(instance_port(settings.stream_consumer_port, settings.instance_port_step,
                                                      index - 1))}


@dataclass(frozen=True)
class Service:
    name: str
    stack: str
    port: Callable[[Settings], int] | None = None
    url: Callable[[Settings], str] | None = None
    requires: tuple[str, ...] = ()
    one_shot: bool = False
    docker_only: bool = False
    # "python": started as `python -m mlops_platform.exec <name>`, exactly as in docker-compose.yml.
    # "native": a binary from Debian or Maven, started with `native_command` below.
    launch: str = "python"
    # PostgreSQL treats SIGTERM as "wait for every client"; SIGINT is its fast, clean shutdown.
    stop_signal: str = "SIGTERM"
    extra_ports: Callable[[Settings], list[int]] = lambda s: []
    # How `python -m mlops_platform.health <name>` checks a service whose health is a gauge of its metrics.
    health: MetricsHealth | None = None
    # Several instances of it (see Scaling); an instance knows its service and its own variables.
    scaling: Scaling | None = None
    instance_of: str = ""
    instance_variables: dict[str, str] = field(default_factory=dict)


def _http(host: str, port: int, path: str = "") -> str:
    return f"http://{host}:{port}{path}"


SERVICES: tuple[Service, ...] = (
    Service("postgres", "feast", port=lambda s: s.postgres_port, launch="native", stop_signal="SIGINT",
            url=lambda s: f"postgresql://{s.postgres_host}:{s.postgres_port}/{{{','.join(s.databases)}}}"),
    Service("redis", "feast", port=lambda s: s.redis_port, launch="native",
            url=lambda s: f"redis://{s.redis_host}:{s.redis_port}"),
    Service("feast-apply", "feast", requires=("postgres", "redis"), one_shot=True),
    Service("mlflow", "mlflow", port=lambda s: s.mlflow_port, requires=("postgres",),
            url=lambda s: s.mlflow_tracking_uri),
    Service("airflow-init", "airflow", requires=("postgres",), one_shot=True),
    Service("airflow-api-server", "airflow", port=lambda s: s.airflow_port, requires=("airflow-init",),
            url=lambda s: s.airflow_url),
    Service("airflow-scheduler", "airflow", requires=("airflow-api-server",)),
    Service("airflow-dag-processor", "airflow", requires=("airflow-api-server",)),
    Service("airflow-triggerer", "airflow", requires=("airflow-api-server",)),
    # CeleryExecutor's workers (none with LocalExecutor); they take tasks from Redis (docs/airflow.md).
    Service("airflow-worker", "airflow", requires=("redis", "airflow-api-server"),
            scaling=Scaling(airflow_worker_count, airflow_worker_variables)),
    Service("kafka", "kafka", port=lambda s: s.kafka_port, launch="native",
            extra_ports=lambda s: [s.kafka_controller_port],
            url=lambda s: f"kafka://{s.kafka_bootstrap_servers}"),
    Service("stream-consumer", "kafka", port=lambda s: s.stream_consumer_port, requires=("kafka", "feast-apply"),
            scaling=Scaling(lambda s: s.stream_consumers, stream_consumer_variables),
            url=lambda s: f"{s.stream_consumer_url}/metrics", health=MetricsHealth(
                "driver_stats_consumer_ready",
                "not connected to Kafka and the stores yet, or the last batch failed (see its log)",
                "{driver_stats_consumer_messages_consumed_total:.0f} messages consumed, "
                "lag {driver_stats_consumer_lag:.0f}")),
    Service("prometheus", "monitoring", port=lambda s: s.prometheus_port, launch="native",
            url=lambda s: s.prometheus_url),
    Service("prediction-logger", "serving", port=lambda s: s.prediction_logger_port, requires=("kafka", "postgres"),
            url=lambda s: f"{s.prediction_logger_url}/metrics", health=MetricsHealth(
                "prediction_logger_ready",
                "not connected to Kafka and PostgreSQL yet, or the last batch failed (see its log)",
                "{prediction_logger_messages_consumed_total:.0f} messages consumed, lag {prediction_logger_lag:.0f}")),
    Service("serving", "serving", port=lambda s: s.serving_port, requires=("redis", "mlflow", "kafka", "feast-apply"),
            scaling=Scaling(lambda s: s.serving_replicas, serving_replica_variables, front="serving-lb"),
            url=lambda s: s.serving_url),
    # HAProxy in front of the API's replicas, on SERVING_PORT (mlops_platform.haproxy).
    Service("serving-lb", "serving", port=lambda s: s.serving_port, requires=("serving",), launch="native",
            url=lambda s: s.serving_url),
    Service("monitoring-service", "monitoring", port=lambda s: s.monitoring_service_port,
            requires=("postgres", "mlflow"), url=lambda s: f"{s.monitoring_service_url}/metrics",
            health=MetricsHealth(
                "monitoring_ready", "the first evaluation has not read the prediction log yet, or PostgreSQL "
                "does not answer (see the service's log)", "window has data: {monitoring_window_has_data}")),
    Service("grafana", "monitoring", docker_only=True, url=lambda s: _http(s.bind_address, s.grafana_port)),
    Service("elasticsearch", "elk", docker_only=True,
            url=lambda s: _http(s.bind_address, s.elasticsearch_port)),
    Service("kibana", "elk", docker_only=True, url=lambda s: _http(s.bind_address, s.kibana_port)),
    Service("filebeat", "elk", docker_only=True),
    Service("jenkins", "jenkins", docker_only=True, url=lambda s: _http(s.bind_address, s.jenkins_port)),
)
BY_NAME = {service.name: service for service in SERVICES}


def services_of(stack: str) -> list[Service]:
    return [service for service in SERVICES if service.stack == stack]


# ---------------------------------------------------------------------------------------------
# Paths of local-mode state: everything lives under PLATFORM_HOME.
# ---------------------------------------------------------------------------------------------
def data_dir(settings: Settings, name: str) -> Path:
    return settings.home / "data" / name


def log_file(settings: Settings, name: str) -> Path:
    return settings.home / "logs" / f"{name}.log"


def pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.pid"


# ---------------------------------------------------------------------------------------------
# Commands of our Python services (run by `python -m mlops_platform.exec`, in both modes).
# ---------------------------------------------------------------------------------------------
def write_private_file(path: Path, text: str) -> None:
    """A file holding a secret: created readable by its owner only, never readable by others on the way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # an existing file keeps its mode through os.open


def write_airflow_passwords(settings: Settings) -> None:
    """Give the admin user the password from .env, so Airflow never generates and prints one."""
    write_private_file(airflow_home(settings) / "passwords.json",
                       json.dumps({settings.airflow_admin_user: settings.airflow_admin_password}) + "\n")


def python_command(name: str, settings: Settings) -> Command:
    py = sys.executable
    if name == "mlflow":  # its fixed options are in mlflow/server.toml
        return Command(*mlflow_server.server_command(settings))
    if name == "airflow-init":
        return Command([py, "-m", "airflow", "db", "migrate"], airflow_env(settings))
    if name == "airflow-worker":
        return Command(airflow_worker_command(settings), airflow_env(settings))
    if name.startswith("airflow-"):
        return Command(airflow_component_command(settings, name.removeprefix("airflow-")), airflow_env(settings))
    if name == "serving":
        return Command([py, "-m", "model_serving.api"], {"PYTHONPATH": str(REPO_ROOT)})
    if name == "prediction-logger":
        return Command([py, "-m", "model_serving.prediction_logger"], {"PYTHONPATH": str(REPO_ROOT)})
    if name == "monitoring-service":
        return Command([py, "-m", "monitoring_service"], {"PYTHONPATH": str(REPO_ROOT)})
    if name == "stream-consumer":
        return Command([py, "-m", "data_pipeline.stream_consumer"], {"PYTHONPATH": str(REPO_ROOT)})
    if name == "feast-apply":
        return Command([py, "-m", "mlops_platform.feast_apply"], {"PYTHONPATH": str(REPO_ROOT)})
    raise KeyError(f"{name} is not one of our Python services")


# ---------------------------------------------------------------------------------------------
# Native services (local mode only; docker-compose.yml uses the upstream images).
# ---------------------------------------------------------------------------------------------
def postgres_bindir() -> Path:
    """Debian installs the server under /usr/lib/postgresql/<major>/bin, off the PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    raise FileNotFoundError("PostgreSQL server binaries not found: run `bash run.sh setup`")


# ---------------------------------------------------------------------------------------------
# Running as root: PostgreSQL refuses to, so it runs as the `postgres` user Debian creates.
# ---------------------------------------------------------------------------------------------
def postgres_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise FileNotFoundError("running as root needs the 'postgres' system user: run `bash run.sh setup`") from None


def _traversable(path: Path, user: pwd.struct_passwd) -> bool:
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        mode = st.st_mode
        if st.st_uid == user.pw_uid:
            ok = mode & 0o100
        elif st.st_gid == user.pw_gid:
            ok = mode & 0o010
        else:
            ok = mode & 0o001
        if not ok:
            return False
    return True


def postgres_data(settings: Settings) -> Path:
    """The data directory; as root under a folder the postgres user cannot reach, a linked one."""
    link = data_dir(settings, "postgres")
    user = postgres_user()
    if user is None or _traversable(link.parent, user):
        return link
    key = hashlib.sha1(str(settings.home).encode()).hexdigest()[:12]
    return Path(user.pw_dir) / f"ride-mlops-{key}"


def redis_config(settings: Settings) -> Path:
    return settings.home / "redis" / "redis.conf"


def redis_config_text(settings: Settings) -> str:
    escaped = settings.redis_password.replace("\\", "\\\\").replace('"', '\\"')
    return f'requirepass "{escaped}"\n'


def kafka_properties(settings: Settings) -> str:
    data = data_dir(settings, "kafka")
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{settings.kafka_controller_port}",
        f"listeners=PLAINTEXT://{settings.listen_address}:{settings.kafka_port},"
        f"CONTROLLER://127.0.0.1:{settings.kafka_controller_port}",
        f"advertised.listeners=PLAINTEXT://{settings.kafka_host}:{settings.kafka_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=3",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.retention.hours=168",
        "",
    ])


def kafka_cluster_id() -> str:
    """A random cluster id; never one starting with '-', which kafka-storage's parser takes for an option."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return cluster_id


def java_command(settings: Settings, main_class: str, *args: str) -> list[str]:
    if not KAFKA_LIBS.is_dir():
        raise FileNotFoundError(f"Kafka jars not found in {KAFKA_LIBS}: run `bash run.sh setup`")
    return [
        "java", f"-Xms{settings.kafka_heap}", f"-Xmx{settings.kafka_heap}", "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={REPO_ROOT / 'platform' / 'kafka' / 'log4j2.yaml'}",
        "-cp", f"{KAFKA_LIBS}/*", main_class, *args,
    ]


def native_command(name: str, settings: Settings) -> Command:
    if name == "postgres":
        data = postgres_data(settings)
        return Command([
            str(postgres_bindir() / "postgres"), "-D", str(data),
            "-c", f"listen_addresses={settings.listen_address}", "-p", str(settings.postgres_port),
            "-c", f"unix_socket_directories={data}", "-c", "max_connections=200",
            "-c", "shared_buffers=128MB", "-c", "log_destination=stderr",
        ])
    if name == "redis":
        data = data_dir(settings, "redis")
        # The password is in redis.conf (mode 600, written by local mode), never on the command line.
        return Command([
            "redis-server", str(redis_config(settings)), "--bind", settings.listen_address,
            "--port", str(settings.redis_port), "--dir", str(data),
            "--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes",
        ])
    if name == "kafka":
        props = settings.home / "kafka" / "server.properties"
        return Command(java_command(settings, "kafka.Kafka", str(props)))
    if name == "serving-lb":
        from mlops_platform import haproxy

        return Command(haproxy.command(settings))
    if name == "prometheus":
        return Command([
            "prometheus", f"--config.file={settings.home / 'prometheus' / 'prometheus.yml'}",
            f"--storage.tsdb.path={data_dir(settings, 'prometheus')}",
            f"--web.listen-address={settings.listen_address}:{settings.prometheus_port}",
            "--web.enable-lifecycle", "--storage.tsdb.retention.time=7d",
        ])
    raise KeyError(f"{name} is not a native service")


def local_launch(service: Service, settings: Settings) -> Command:
    """What local mode spawns: our services through the same entry point docker-compose.yml uses."""
    if service.launch == "native":
        return native_command(service.name, settings)
    # Airflow's services record the executor they started with (local mode can switch it: airflow_executor).
    executor = {"AIRFLOW_EXECUTOR": settings.airflow_executor} if service.stack == "airflow" else {}
    return Command([sys.executable, "-m", "mlops_platform.exec", service.instance_of or service.name],
                   {"PYTHONPATH": str(REPO_ROOT), **executor, **service.instance_variables})


# prometheus_client's multiprocess directory belongs to one process tree. Feast's import sets it in any
# process that imports Feast (the test runner, a CLI); inherited by a service, it would put that service's
# metrics into files another exporter (MLflow's) reads and reports as its own.
PROCESS_PRIVATE_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


# Usage reporting off in every process we start (an exported value wins): MLflow's telemetry thread
# races `requests` in task processes (KeyError '_MLFLOW_TELEMETRY_SESSION_ID' failed training tasks).
QUIET_LIBRARIES = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}


def merged_env(*parts: dict[str, str]) -> dict[str, str]:
    """This process's environment without its process-private variables, with `parts` on top."""
    env = {**QUIET_LIBRARIES, **{k: v for k, v in os.environ.items() if k not in PROCESS_PRIVATE_VARIABLES}}
    for part in parts:
        env.update(part)
    return env
