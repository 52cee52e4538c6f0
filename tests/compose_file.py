"""docker-compose.yml read and interpolated as compose does it, and the rules its tests share.

No Docker engine is needed: the file is read as YAML and interpolated with the values of .env.example
(each generated secret a distinct dummy), the way `docker compose` does with a fresh .env.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from mlops_platform import services

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
PYTHON_DOCKERFILE = ROOT / "platform" / "docker" / "Dockerfile"
JENKINS_DIR = ROOT / "platform" / "jenkins"
JENKINSFILE = ROOT / "Jenkinsfile"
GRAFANA_DIR = ROOT / "monitoring" / "grafana"
FILEBEAT_CONFIG = ROOT / "monitoring" / "elk" / "filebeat.yml"

STACKS = set(services.STACKS)
# Stacks whose services are not in docker-compose.yml yet.
STACKS_NOT_YET_IN_COMPOSE = {"serving"}
RUN_SH_VERBS = {"setup", "lint", "test", "build", "deploy", "demo"}
# Our Python services whose compose service is named differently from the exec/health name.
COMPOSE_NAME = {"feast-apply": "feast-init"}
WEAK_PASSWORDS = {"admin", "administrator", "changeme", "change-me", "password", "passw0rd", "secret",
                  "root", "default", "test", "123456", "platform", "jenkins", "airflow", "elastic"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|(?:^|_|\.)(?:[A-Z]*KEY)$", re.IGNORECASE)
MOUNT_DATA_PATHS = {  # where each stateful service keeps what must survive `down`
    "postgres": "/var/lib/postgresql/data",
    "redis": "/data",
    "mlflow": "/var/lib/platform/data/mlflow-artifacts",
    "airflow-api-server": "/var/lib/platform/airflow",
    "airflow-scheduler": "/var/lib/platform/airflow",
    "kafka": "/var/lib/kafka/data",
    "prometheus": "/prometheus",
    "grafana": "/var/lib/grafana",
    "elasticsearch": "/usr/share/elasticsearch/data",
    "kibana": "/usr/share/kibana/data",
    "filebeat": "/usr/share/filebeat/data",
    "jenkins": "/var/jenkins_home",
}


# ---------------------------------------------------------------------------------------------
# Reading and interpolating the compose file as compose does
# ---------------------------------------------------------------------------------------------
def read_env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def generated_secrets() -> set[str]:
    """Variables that `run.sh` fills with a random secret (marked __GENERATE...__ in .env.example)."""
    return {key for key, value in read_env_example().items() if value.startswith("__GENERATE")}


def env_for_compose() -> dict[str, str]:
    """What compose sees with a fresh .env: .env.example, each secret a distinct dummy value."""
    env = read_env_example()
    for key in generated_secrets():
        env[key] = f"dummy-{key.lower()}-0123456789abcdefghijklmnopqrstuvwxyz"
    return env


class MissingVariable(Exception):
    pass


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, ${VAR:+alt}, ${VAR+alt}."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        is_set = name in env
        is_non_empty = bool(env.get(name))
        if op in (":-", "-"):
            return env[name] if (is_non_empty if op == ":-" else is_set) else arg
        if op in (":?", "?"):
            if not (is_non_empty if op == ":?" else is_set):
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if (is_non_empty if op == ":+" else is_set) else ""
        return env.get(name, "")

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(source, target, read_only) of every volume entry, short or long syntax."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))
        else:
            parts = str(entry).split(":")
            if len(parts) == 1:  # anonymous volume
                yield "", parts[0], False
            else:
                yield parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def command_text(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value or "")


def python_services() -> list[services.Service]:
    """Our services that `python -m mlops_platform.exec` runs, in both modes."""
    return [s for s in services.SERVICES if s.launch == "python" and not s.docker_only]


def dockerfile_targets(path: Path) -> set[str]:
    return set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)\s*$", path.read_text()))


@functools.cache
def _raw_text() -> str:
    return COMPOSE_FILE.read_text()


def load_raw() -> dict[str, Any]:
    """docker-compose.yml as written (YAML anchors and merges resolved, ${...} untouched)."""
    return yaml.safe_load(_raw_text())


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as compose sees it with a fresh .env."""
    return interpolate_tree(load_raw(), env_for_compose())
