"""No secret on a command line: `ps` shows every process's arguments to every user of the machine (and,
for containers, to the host). Secrets reach our services through the environment or mode-600 files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mlops_platform.services import SERVICES, python_command

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEYS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_FERNET_KEY",
               "AIRFLOW_SECRET_KEY", "SERVING_API_TOKEN")


def test_no_command_that_local_mode_or_a_container_runs_carries_a_secret(make_settings, tmp_path, monkeypatch):
    secrets = {key: f"secret-{key.lower()}-value" for key in SECRET_KEYS}
    settings = make_settings(**secrets)
    from mlops_platform import services

    monkeypatch.setattr(services, "postgres_bindir", lambda: Path("/usr/lib/postgresql/15/bin"))
    monkeypatch.setattr(services, "KAFKA_LIBS", tmp_path)
    for service in SERVICES:
        if service.docker_only:
            continue
        command = (services.native_command if service.launch == "native" else python_command)(service.name, settings)
        argv = " ".join(command.argv)
        leaked = [key for key, value in secrets.items() if value in argv]
        assert not leaked, f"{service.name} has {leaked} on its command line: {argv}"


def test_redis_reads_its_password_from_a_file_only_its_owner_reads(make_settings):
    from mlops_platform.local_prepare import prepare_redis
    from mlops_platform.services import redis_config

    settings = make_settings(REDIS_PASSWORD='pa"ss\\word', SERVING_API_TOKEN="x")
    prepare_redis(settings)
    path = redis_config(settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == 'requirepass "pa\\"ss\\\\word"\n'


def test_compose_commands_expand_no_secret():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for field in ("command", "entrypoint"):
            text = " ".join(service.get(field) or []) if isinstance(service.get(field), list) else str(
                service.get(field) or "")
            assert not re.search(r"\$\$?\{?\w*(PASSWORD|TOKEN|SECRET|FERNET)", text), f"{name} {field}: {text}"
        check = " ".join((service.get("healthcheck") or {}).get("test") or [])
        # In a check a secret may reach a program only through its environment or its stdin.
        as_argument = r"(-u|--user|--requirepass|--password)\s+\\?\"?[\w:]*\$\$?\{?\w*(PASSWORD|TOKEN)"
        assert not re.search(as_argument, check), f"{name}'s healthcheck passes a secret as an argument: {check}"
    redis_image = (ROOT / "platform" / "redis" / "Dockerfile").read_text()
    assert "requirepass" not in redis_image.split("ENTRYPOINT")[1]
