"""docker-compose.yml's data and mounted files: named volumes for state, read-only binds of the repository's
configuration, and the configuration PostgreSQL, Prometheus, Grafana and Filebeat read from them.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from tests.compose_file import (
    FILEBEAT_CONFIG,
    GRAFANA_DIR,
    MOUNT_DATA_PATHS,
    PYTHON_DOCKERFILE,
    ROOT,
    command_text,
    environment,
    is_bind,
    mounts,
)


# ---------------------------------------------------------------------------------------------
# Data and mounted files
# ---------------------------------------------------------------------------------------------
def test_data_lives_on_declared_named_volumes(raw: dict[str, Any]) -> None:
    declared = set(raw.get("volumes") or {})
    used: set[str] = set()
    for name, service in raw["services"].items():
        for source, target, _ in mounts(service):
            assert source, f"{name}: anonymous volume at {target} would be lost on the next `up`"
            if not is_bind(source):
                assert source in declared, f"{name}: volume {source} is not declared under volumes:"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    for name, path in MOUNT_DATA_PATHS.items():
        targets = {t for s, t, _ in mounts(raw["services"][name]) if s and not is_bind(s)}
        assert path in targets, f"{name} keeps its data in {path}, which is not on a named volume"


def test_bind_mounts_exist_and_are_read_only(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        for source, target, read_only in mounts(service):
            if not is_bind(source):
                continue
            assert source.startswith("./"), f"{name}: bind mount {source} must be relative to the repository"
            assert (ROOT / source).exists(), f"{name}: {source} does not exist (docker would create an empty dir)"
            assert read_only, f"{name}: {source} -> {target} must be mounted read-only"


def test_every_volume_of_our_python_services_mounts_where_the_image_makes_a_folder_for_its_user(
        compose: dict[str, Any]) -> None:
    # A fresh named volume takes the owner of the folder it mounts on; a folder the image never made
    # is root's, and the service user cannot write its reports, outputs or landed files there.
    made = set(re.findall(r"/var/lib/platform[\w/-]*", PYTHON_DOCKERFILE.read_text().split("chown -R platform")[0]))
    for name, service in compose["services"].items():
        build = service.get("build")
        if not (isinstance(build, dict) and build.get("dockerfile") == "platform/docker/Dockerfile"):
            continue
        for source, target, _ in mounts(service):
            if not source.startswith((".", "/")):
                assert target in made, f"{name} mounts volume {source} on {target}, which the image does not create"


def test_postgres_creates_the_platform_databases(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    image_dir = ROOT / postgres["build"]["context"]
    entrypoint = (image_dir / "entrypoint.sh").read_text()
    assert "init-databases.sh" in entrypoint, "the entrypoint never creates the databases"
    script = image_dir / "init-databases.sh"
    assert os.access(script, os.X_OK), f"{script} must be executable"
    text = script.read_text()
    env = environment(postgres)
    for variable in ("FEAST_DB", "MLFLOW_DB", "AIRFLOW_DB"):
        assert variable in text, f"the init script ignores {variable}"
        assert variable in env, f"postgres does not pass {variable} to its init script"
    assert "pg_isready" in command_text(postgres["healthcheck"]["test"])


def test_prometheus_reads_the_repository_config(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    for source, target, _ in mounts(prometheus):
        if config.startswith(target.rstrip("/") + "/"):
            path = ROOT / source / config[len(target.rstrip("/")) + 1:]
            assert path.is_file(), f"prometheus reads {config}, but {path.relative_to(ROOT)} does not exist"
            break
    else:
        pytest.fail(f"{config} is not inside any mount of the prometheus service")


# ---------------------------------------------------------------------------------------------
# Grafana and ELK
# ---------------------------------------------------------------------------------------------
def test_grafana_is_provisioned_and_closed_to_anonymous_users(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    env = environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false", "Grafana must not be open to anonymous users"
    targets = {t: s for s, t, _ in mounts(grafana)}
    assert targets.get("/etc/grafana/provisioning") == "./monitoring/grafana/provisioning"
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    prometheus = [d for d in datasources["datasources"] if d["uid"] == "prometheus"]
    assert prometheus, "no Grafana datasource with uid `prometheus` (dashboards refer to it)"
    assert prometheus[0]["url"] == "http://prometheus:9090", f"datasource url {prometheus[0]['url']}"
    assert "prometheus" in compose["services"]
    dashboards = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    path = dashboards["providers"][0]["options"]["path"]
    assert targets.get(path) == "./monitoring/grafana/dashboards", f"{path} is not where the dashboards are mounted"


def test_filebeat_ships_to_elasticsearch_with_credentials_from_env(compose: dict[str, Any]) -> None:
    filebeat = compose["services"]["filebeat"]
    config = yaml.safe_load(FILEBEAT_CONFIG.read_text())
    output = config["output.elasticsearch"] if "output.elasticsearch" in config else config["output"]["elasticsearch"]
    assert output["hosts"] == ["http://elasticsearch:9200"], f"filebeat ships to {output['hosts']}"
    assert output["password"] == "${ELASTIC_PASSWORD}", "filebeat's password must come from the environment"
    assert "ELASTIC_PASSWORD" in environment(filebeat), "the filebeat service does not set ELASTIC_PASSWORD"
    mounted = [t for _, t, _ in mounts(filebeat)]
    for log_input in config["filebeat.inputs"]:
        for path in log_input["paths"]:
            assert any(path.startswith(t.rstrip("/") + "/") for t in mounted), f"filebeat reads {path}, not mounted"
