"""docker-compose.yml keeps secrets out of reach: every one comes from .env, none is guessable or on a
command line, and no container is privileged or holds the Docker socket.
"""

from __future__ import annotations

import re
from typing import Any

from tests.compose_file import (
    COMPOSE_FILE,
    SECRET_KEY,
    WEAK_PASSWORDS,
    command_text,
    environment,
    generated_secrets,
    mounts,
    read_env_example,
)


def test_no_privileged_container_and_no_docker_socket(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        assert not service.get("privileged"), f"{name} must not be privileged"
        assert service.get("pid") != "host" and service.get("ipc") != "host", f"{name} shares a host namespace"
        assert not service.get("cap_add"), f"{name} adds capabilities"
        for source, target, _ in mounts(service):
            assert "docker.sock" not in source + target, f"{name} mounts the Docker socket"


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------
def test_secret_values_are_references_to_env(raw: dict[str, Any]) -> None:
    reference = re.compile(r"\$\{[A-Z0-9_]+(?::\?[^}]*|:-)?\}")
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert isinstance(value, str) and reference.fullmatch(value), (
                    f"{name}: {key} must be ${{VAR:?message}} (or an empty default), not {value!r}"
                )


def test_generated_secrets_are_required_and_never_defaulted() -> None:
    text = COMPOSE_FILE.read_text()
    assert "__GENERATE" not in text
    for key in generated_secrets():
        for match in re.finditer(rf"\$\{{{key}(?![A-Za-z0-9_])([^}}]*)\}}", text):
            assert match[1].startswith(":?"), f"${{{key}{match[1]}}} must be ${{{key}:?message}}: no default"


def test_no_weak_password_reaches_a_container(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key) and value:
                assert str(value).lower() not in WEAK_PASSWORDS, f"{name}: {key} is a guessable default"
                assert len(str(value)) >= 16, f"{name}: {key} is too short to be a generated secret"


def test_secrets_never_appear_on_a_command_line(raw: dict[str, Any]) -> None:
    # ${SECRET} would be written into the container's command (docker inspect, ps); $$SECRET is
    # expanded by the container's shell from its environment instead.
    secret_names = generated_secrets() | {k for k in read_env_example() if SECRET_KEY.search(k)}
    for name, service in raw["services"].items():
        texts = [command_text(service.get("command")), command_text(service.get("entrypoint")),
                 command_text((service.get("healthcheck") or {}).get("test"))]
        for text in texts:
            for secret in secret_names:
                assert not re.search(rf"(?<!\$)\$\{{?{secret}(?![A-Za-z0-9_])", text), (
                    f"{name} puts {secret} on a command line; use $${secret} and the environment"
                )
