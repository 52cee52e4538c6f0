"""The compose project as docker mode sees it: running `docker compose`, and its services read from
`docker compose config` (profiles, dependencies, one-shots, volumes) and `docker compose ps`.

Standard library only, like all of docker mode (mlops_platform.docker_mode).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlops_platform.settings import REPO_ROOT, read_env_file

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_FILE = REPO_ROOT / ".env"
NO_EXTRA_CA = REPO_ROOT / "platform" / "docker" / "no-extra-ca.pem"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class DockerModeError(RuntimeError):
    """Something docker mode cannot do; the message says what and what to do."""


def say(message: str) -> None:
    print(message, flush=True)


def compose_env() -> dict[str, str]:
    """The environment compose runs in: .env's values may be overridden by the caller's environment,
    and the build secret defaults to the host's system CA bundle, which is what makes HTTPS to PyPI
    and Maven Central work behind a TLS-inspecting proxy (an empty file where there is none)."""
    env = dict(os.environ)
    if not env.get("BUILD_CA_BUNDLE"):
        configured = read_env_file(ENV_FILE).get("BUILD_CA_BUNDLE", "")
        system = str(SYSTEM_CA_BUNDLE) if SYSTEM_CA_BUNDLE.is_file() else str(NO_EXTRA_CA)
        env["BUILD_CA_BUNDLE"] = configured or system
    return env


def compose(*args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["docker", "compose", "--env-file", str(ENV_FILE), "-f", str(COMPOSE_FILE), *args]
    result = subprocess.run(argv, env=compose_env(), text=True,
                            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:] if capture else ""
        raise DockerModeError(f"`docker compose {' '.join(args)}` failed ({result.returncode}) {detail}".strip())
    return result


def profile_args(profiles: list[str]) -> list[str]:
    return [arg for profile in profiles for arg in ("--profile", profile)]


def parse_json_lines(text: str) -> list[dict]:
    """`compose ps --format json` prints one object per line (or one array in older versions)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def container_states(services: list[str] | None = None) -> dict[str, dict]:
    result = compose("--profile", "*", "ps", "--all", "--format", "json", *(services or []), capture=True)
    return {row["Service"]: row for row in parse_json_lines(result.stdout)}


# ---------------------------------------------------------------------------------------------
# The compose project, read from `docker compose config`
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComposeService:
    name: str
    profiles: tuple[str, ...]
    image: str
    build: dict | None
    depends_on: tuple[str, ...]
    one_shot: bool
    volumes: tuple[str, ...]
    published: bool
    replicas: int | None = None  # `deploy.replicas` as configured (None: compose's default, one)

    @property
    def stack(self) -> str:
        """The stack that owns the service: its first profile."""
        return self.profiles[0]


def load_project(config: dict) -> dict[str, ComposeService]:
    services = {}
    for name, spec in config["services"].items():
        services[name] = ComposeService(
            name=name,
            profiles=tuple(spec.get("profiles", ())),
            image=spec.get("image", ""),
            build=spec.get("build"),
            depends_on=tuple(spec.get("depends_on", {})),
            one_shot=spec.get("restart") == "no",
            volumes=tuple(v["source"] for v in spec.get("volumes", []) if v.get("type") == "volume"),
            published=bool(spec.get("ports")),
            replicas=(spec.get("deploy") or {}).get("replicas"),
        )
    return services


def project_config() -> dict:
    return json.loads(compose("--profile", "*", "config", "--format", "json", capture=True).stdout)


def in_profiles(services: dict[str, ComposeService], profiles: list[str]) -> list[str]:
    return [name for name, svc in services.items() if set(svc.profiles) & set(profiles)]


def with_dependencies(services: dict[str, ComposeService], names: list[str]) -> set[str]:
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(services[name].depends_on)
    return found


def dependents(services: dict[str, ComposeService], names: set[str]) -> set[str]:
    """Every service that needs one of `names`, directly or through others."""
    found = set(names)
    changed = True
    while changed:
        changed = False
        for name, svc in services.items():
            if name not in found and set(svc.depends_on) & found:
                found.add(name)
                changed = True
    return found - names
