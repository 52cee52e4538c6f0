"""What a local service needs on disk and in PostgreSQL before and right after it starts.

PostgreSQL's cluster (initdb) and databases, Kafka's formatted storage, redis.conf with its password, and
Prometheus's configuration with docker-compose's targets rewritten to this machine's ports. Each step is
idempotent: `up` runs it before every start (PREPARE) or once the server answers (AFTER_START).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlops_platform import instances
from mlops_platform.errors import PlatformError
from mlops_platform.local import main_pid, say
from mlops_platform.postgres import open_connection
from mlops_platform.services import (
    BY_NAME,
    PROMETHEUS_CONFIG,
    Service,
    data_dir,
    java_command,
    kafka_cluster_id,
    kafka_properties,
    postgres_bindir,
    postgres_data,
    postgres_user,
    redis_config,
    redis_config_text,
    write_private_file,
)
from mlops_platform.settings import Settings

# The server's own database, where the platform's databases are created and dropped.
ADMIN_DATABASE = "postgres"
ADMIN_TIMEOUT_SECONDS = 3


def prepare_postgres(settings: Settings) -> None:
    data = postgres_data(settings)
    link = data_dir(settings, "postgres")
    if data != link and not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to(data)
    if (data / "PG_VERSION").exists():
        return
    user = postgres_user()
    data.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=data.parent, delete=False) as pwfile:
        pwfile.write(settings.postgres_password + "\n")
    try:
        if user is not None:
            os.chown(data, user.pw_uid, user.pw_gid)
            os.chown(pwfile.name, user.pw_uid, user.pw_gid)
        data.chmod(0o700)
        result = subprocess.run(
            [str(postgres_bindir() / "initdb"), "-D", str(data), "-U", settings.postgres_user,
             f"--pwfile={pwfile.name}", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"],
            capture_output=True, text=True, cwd=data.parent,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
    finally:
        os.unlink(pwfile.name)
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise PlatformError(f"initdb failed:\n{result.stdout}{result.stderr}")


def create_databases(settings: Settings) -> None:
    conn = open_connection(settings, timeout=ADMIN_TIMEOUT_SECONDS, database=ADMIN_DATABASE)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("select datname from pg_database")
            existing = {row[0] for row in cur.fetchall()}
            for database in settings.databases:
                if database not in existing:
                    cur.execute(f'create database "{database}"')
                    say(f"  created database {database}")
    finally:
        conn.close()


def postgres_server_answers(settings: Settings) -> tuple[bool, str]:
    import psycopg2

    try:
        open_connection(settings, timeout=ADMIN_TIMEOUT_SECONDS, database=ADMIN_DATABASE).close()
    except psycopg2.OperationalError as exc:
        return False, str(exc).strip().splitlines()[0]
    return True, "server answers"


def drop_database(settings: Settings, database: str) -> None:
    """Forget one stack's database (down --volumes of mlflow or airflow); no-op when PostgreSQL is down."""
    import psycopg2

    try:
        conn = open_connection(settings, timeout=ADMIN_TIMEOUT_SECONDS, database=ADMIN_DATABASE)
    except psycopg2.OperationalError:
        return
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'drop database if exists "{database}" with (force)')
        cur.execute(f'create database "{database}"')
    conn.close()
    say(f"  emptied database {database}")


def prepare_kafka(settings: Settings) -> None:
    config = settings.home / "kafka" / "server.properties"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(kafka_properties(settings))
    if (data_dir(settings, "kafka") / "meta.properties").exists():
        return
    data_dir(settings, "kafka").mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        java_command(settings, "kafka.tools.StorageTool", "format", "-t", kafka_cluster_id(),
                     "-c", str(config), "--ignore-formatted"),
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise PlatformError(f"formatting Kafka's storage failed:\n{result.stdout}{result.stderr}")


DOCKER_ONLY_BEGIN = re.compile(r"(?m)^[ \t]*# docker-only begin\b")
DOCKER_ONLY_END = re.compile(r"(?m)^[ \t]*# docker-only end\b")
DOCKER_ONLY_BLOCK = re.compile(r"(?ms)^[ \t]*# docker-only begin\b.*?^[ \t]*# docker-only end\b[^\n]*(?:\n|\Z)")


def drop_docker_only_blocks(text: str) -> str:
    """`text` without its `# docker-only begin` ... `# docker-only end` blocks (whole lines)."""
    kept = DOCKER_ONLY_BLOCK.sub("", text)
    if DOCKER_ONLY_BEGIN.search(kept) or DOCKER_ONLY_END.search(kept):
        raise PlatformError(f"{PROMETHEUS_CONFIG}: unbalanced `# docker-only begin` / `# docker-only end` markers")
    return kept


def render_prometheus_config(settings: Settings) -> str:
    """docker-compose targets (service:port) rewritten to this machine's host and ports.

    Blocks between `# docker-only begin` and `# docker-only end` (scrape jobs of containers that local
    mode does not run, such as node-exporter) are left out.
    """
    local_targets = {
        "prometheus:9090": f"127.0.0.1:{settings.prometheus_port}",
        "mlflow:5000": f"127.0.0.1:{settings.mlflow_port}",
        "prediction-logger:9109": f"127.0.0.1:{settings.prediction_logger_port}",
        "monitoring-service:9110": f"127.0.0.1:{settings.monitoring_service_port}",
    }
    text = drop_docker_only_blocks(PROMETHEUS_CONFIG.read_text())
    text = REPLICATED_TARGETS.sub(lambda m: f'{m["indent"]}file_sd_configs:\n'
                                            f'{m["indent"]}  - files: ["{TARGETS_DIR}/{m["name"]}.json"]\n', text)
    return re.sub(r"\b[a-z][a-z0-9-]*:\d+\b", lambda m: local_targets.get(m.group(0), m.group(0)), text)


# A scrape job that finds a replicated compose service through Docker's DNS (one target per replica).
REPLICATED_TARGETS = re.compile(r'(?P<indent> *)dns_sd_configs:\n *- names: \["(?P<name>[a-z-]+)"\]\n *type: A\n'
                                r' *port: \d+\n')


TARGETS_DIR = "targets"  # next to the rendered prometheus.yml


def scrape_targets_file(settings: Settings, name: str) -> Path:
    return settings.home / "prometheus" / TARGETS_DIR / f"{name}.json"


def write_scrape_targets(settings: Settings, service: Service, members: list[Service] | None = None) -> None:
    """The service's instances (those `up` runs unless `members` says), as Prometheus file_sd targets: one
    per replica, since each has its own counters. Prometheus watches the file: a new count needs no restart."""
    path = scrape_targets_file(settings, service.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [f"127.0.0.1:{one.port(settings)}" for one in members or instances.planned(service, settings)]
    text = json.dumps([{"targets": targets}], indent=1) + "\n"
    if not path.exists() or path.read_text() != text:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(path)  # Prometheus never reads half a file


def prepare_prometheus(settings: Settings) -> None:
    target = settings.home / "prometheus" / "prometheus.yml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_prometheus_config(settings))
    for match in REPLICATED_TARGETS.finditer(PROMETHEUS_CONFIG.read_text()):
        service = BY_NAME[match["name"]]
        running = [one for one in instances.every(service, settings) if main_pid(settings, one.name)]
        write_scrape_targets(settings, service, running or instances.planned(service, settings))
    rules = PROMETHEUS_CONFIG.parent / "rules"
    if rules.is_dir():
        shutil.copytree(rules, target.parent / "rules", dirs_exist_ok=True)


def prepare_redis(settings: Settings) -> None:
    """redis.conf with the password, readable by its owner only: redis-server reads it at start."""
    write_private_file(redis_config(settings), redis_config_text(settings))


PREPARE = {
    "postgres": prepare_postgres,
    "redis": prepare_redis,
    "kafka": prepare_kafka,
    "prometheus": prepare_prometheus,
}
AFTER_START = {"postgres": create_databases}
