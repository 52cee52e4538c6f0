"""Docker-mode stack control, called by run.sh: `python3 -m mlops_platform.docker_mode <stack|all> <verb>`.

Standard library only, so it runs with the host's python3 before any virtualenv exists: in docker
mode the host needs an engine, compose v2 and python3, nothing else.

- `up` builds the images it needs (after making the base image when no registry gives it), starts
  what can start, says which services cannot (an image that no registry answers for) and why, and
  waits until every long-running service is healthy and every one-shot has succeeded.
- `down` stops what the stack owns (a service's first compose profile) and keeps the infrastructure a
  running service of another stack still needs: `mlflow down` stops MLflow and leaves Airflow its
  PostgreSQL; `feast down` keeps PostgreSQL and Redis while Airflow or serving use them.
- `status` prints service, stack, state, health and the URL on the host; `urls` adds the logins.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlops_platform.services import BY_NAME, STACKS
from mlops_platform.settings import REPO_ROOT, Settings, SettingsError, load_settings, read_env_file

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_FILE = REPO_ROOT / ".env"
BASE_IMAGE_SCRIPT = REPO_ROOT / "platform" / "docker" / "make-base-image.sh"
NO_EXTRA_CA = REPO_ROOT / "platform" / "docker" / "no-extra-ca.pem"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_BASE_IMAGE = "debian:bookworm-slim"
PULL_TIMEOUT_SECONDS = 120
WAIT_TIMEOUT_SECONDS = 900


class DockerModeError(RuntimeError):
    """Something docker mode cannot do; the message says what and what to do."""


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Running compose
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Images: what is built here, what must be pulled, and whether a registry answers
# ---------------------------------------------------------------------------------------------
def dockerfile_bases(dockerfile: Path, build_args: dict[str, str]) -> list[str]:
    """The images a Dockerfile starts FROM, with ARG defaults and build args expanded; stages are skipped."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    for line in dockerfile.read_text().splitlines():
        if match := re.match(r"^ARG\s+(\w+)(?:=(\S*))?", line):
            args.setdefault(match[1], build_args.get(match[1], match[2] or ""))
        elif match := re.match(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], ""), match[1])
            if image not in stages:
                bases.append(image)
            if match[2]:
                stages.add(match[2])
    return list(dict.fromkeys(bases))


def external_images(service: ComposeService) -> list[str]:
    """Images the service needs from elsewhere: its base images when built here, else its image."""
    if service.build:
        context = Path(service.build.get("context", REPO_ROOT))
        dockerfile = context / service.build.get("dockerfile", "Dockerfile")
        return dockerfile_bases(dockerfile, service.build.get("args") or {})
    return [service.image]


def image_present(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def pull(image: str) -> str | None:
    """None when the image is here after pulling it, else why it is not."""
    try:
        result = subprocess.run(["docker", "pull", image], capture_output=True, text=True,
                                timeout=PULL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return f"no registry answered for {image} within {PULL_TIMEOUT_SECONDS}s"
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return f"{image} cannot be pulled: {lines[-1] if lines else 'no reason given'}"


def base_image() -> str:
    return os.environ.get("BASE_IMAGE") or read_env_file(ENV_FILE).get("BASE_IMAGE") or DEFAULT_BASE_IMAGE


def ensure_base_image() -> None:
    """The base of every image we build: here already, pulled, or made with debootstrap (as root)."""
    image = base_image()
    if image_present(image):
        return
    reason = pull(image)
    if reason is None:
        return
    if os.geteuid() != 0:
        raise DockerModeError(f"{reason}\nMake it from Debian's packages instead (needs root and debootstrap):\n"
                              f"    sudo apt-get install -y debootstrap && sudo bash {BASE_IMAGE_SCRIPT} {image}")
    say(f"==> {reason}; making {image} with debootstrap")
    if subprocess.run(["bash", str(BASE_IMAGE_SCRIPT), image]).returncode != 0:
        raise DockerModeError(f"making the base image {image} failed (see above)")


def unavailable_images(services: dict[str, ComposeService], names: set[str]) -> dict[str, str]:
    """Service name -> why it cannot start, for services whose images no registry gives."""
    ours = base_image()
    reasons_by_image: dict[str, str | None] = {}
    blocked: dict[str, str] = {}
    for name in sorted(names):
        for image in external_images(services[name]):
            if image == ours:
                continue
            if image not in reasons_by_image:
                reasons_by_image[image] = None if image_present(image) else pull(image)
            if reasons_by_image[image]:
                blocked[name] = reasons_by_image[image]
    cannot_start = set(blocked) | dependents(services, set(blocked))
    for name in (cannot_start - set(blocked)) & names:
        needed = sorted(set(services[name].depends_on) & cannot_start)
        blocked[name] = f"needs {', '.join(needed)}, which cannot start"
    return blocked


# ---------------------------------------------------------------------------------------------
# Verbs
# ---------------------------------------------------------------------------------------------
def container_states(services: list[str] | None = None) -> dict[str, dict]:
    result = compose("--profile", "*", "ps", "--all", "--format", "json", *(services or []), capture=True)
    return {row["Service"]: row for row in parse_json_lines(result.stdout)}


def runnable_services(services: dict[str, ComposeService], stack: str, profiles: list[str]) -> list[str]:
    """The services of `profiles` whose images can be had here; says which cannot start and why."""
    wanted = set(in_profiles(services, profiles))
    blocked = unavailable_images(services, wanted)
    grouped: dict[tuple[str, str], list[str]] = {}
    for name, why in sorted(blocked.items()):
        grouped.setdefault((services[name].stack, why), []).append(name)
    for (owner, why), names in sorted(grouped.items()):
        say(f"[{owner}] {', '.join(names)} cannot start: {why}")
    runnable = sorted(wanted - set(blocked))
    if not runnable:
        raise DockerModeError(f"nothing of {stack} can start here (see above)")
    if blocked:
        say(f"[{stack}] going on with the rest: {', '.join(runnable)}")
    return runnable


def build(services: dict[str, ComposeService], stack: str, profiles: list[str]) -> list[str]:
    """Build the images of the runnable services (the base image first); returns those services."""
    runnable = runnable_services(services, stack, profiles)
    ensure_base_image()
    to_build = [n for n in runnable if services[n].build]
    if to_build:
        compose(*profile_args(profiles), "build", *to_build)
    return runnable


def up(stack: str, profiles: list[str]) -> None:
    services = load_project(project_config())
    runnable = build(services, stack, profiles)
    long_running = [n for n in runnable if not services[n].one_shot]
    one_shots = [n for n in runnable if services[n].one_shot]
    # `--wait` treats a one-shot that nothing waits for as a failure: wait for the long-running
    # services, then check that each one-shot ran to success.
    compose(*profile_args(profiles), "up", "-d", "--no-build", "--remove-orphans", *one_shots, *long_running,
            check=True)
    if long_running:
        result = compose(*profile_args(profiles), "up", "-d", "--no-build", "--wait",
                         "--wait-timeout", str(WAIT_TIMEOUT_SECONDS), *long_running, check=False)
        if result.returncode != 0:
            raise DockerModeError(f"{stack}: not every service became healthy; "
                                  f"see `bash run.sh {stack} status` and `bash run.sh {stack} logs`")
    failed_one_shots = wait_for_one_shots(one_shots)
    if failed_one_shots:
        raise DockerModeError(f"one-shot services failed: {', '.join(failed_one_shots)}; "
                              f"see `docker compose logs {' '.join(failed_one_shots)}`")


def wait_for_one_shots(names: list[str], timeout: float = WAIT_TIMEOUT_SECONDS) -> list[str]:
    """Names of the one-shots that did not exit 0 (each is waited for until it exits)."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    failed = []
    while pending and time.monotonic() < deadline:
        states = container_states(pending)
        for name in list(pending):
            row = states.get(name)
            if row and row.get("State") == "exited":
                pending.remove(name)
                if int(row.get("ExitCode", 1)) != 0:
                    failed.append(name)
        if pending:
            time.sleep(1)
    return failed + pending


def down(stack: str, profiles: list[str], volumes: bool) -> None:
    if stack == "all":
        compose("--profile", "*", "down", "--remove-orphans", *(["--volumes"] if volumes else []))
        return
    config = project_config()
    services = load_project(config)
    owned = {name for name, svc in services.items() if svc.stack == stack}
    active = {name for name, row in container_states().items() if row.get("State") not in ("exited", "dead")}
    others = active - owned
    # The stack's own server (mlflow for `mlflow down`) always stops; the infrastructure it owns besides
    # (PostgreSQL and Redis for feast) stays while a running service of another stack needs it.
    still_needed = {dep for name in others for dep in with_dependencies(services, [name])} & owned - {stack}
    for name in sorted(still_needed):
        users = sorted(n for n in others if name in with_dependencies(services, [n]))
        say(f"[{stack}] keeping {name}: {', '.join(users)} still use it")
    targets = sorted(owned - still_needed)
    if targets:
        compose("--profile", "*", "rm", "--stop", "--force", *targets)
    if volumes:
        remove_volumes(services, set(targets), config.get("volumes", {}))


def remove_volumes(services: dict[str, ComposeService], stopped: set[str], config_volumes: dict) -> None:
    """Named volumes that only the stopped services mount."""
    mounted_elsewhere = {v for name, svc in services.items() if name not in stopped for v in svc.volumes}
    for volume in sorted({v for name in stopped for v in services[name].volumes} - mounted_elsewhere):
        real = config_volumes.get(volume, {}).get("name", volume)
        subprocess.run(["docker", "volume", "rm", "-f", real], capture_output=True)
        say(f"removed volume {real}")


def host_settings() -> Settings | None:
    """Settings as the host sees the platform: 127.0.0.1 and the published ports of .env."""
    try:
        return load_settings()
    except SettingsError:
        return None


def status(profiles: list[str]) -> bool:
    services = load_project(project_config())
    names = in_profiles(services, profiles)
    states = container_states()
    settings = host_settings()
    rows = [("SERVICE", "STACK", "STATE", "HEALTH", "URL")]
    healthy = True
    for name in names:
        row = states.get(name, {})
        state = row.get("State") or "not created"
        health = row.get("Health") or ("-" if services[name].one_shot or not row else "no check")
        if services[name].one_shot and state == "exited":
            health = "done" if int(row.get("ExitCode", 1)) == 0 else f"failed ({row.get('ExitCode')})"
        elif state == "not created" and not image_present(services[name].image):
            health = "image not here"  # a pulled image no registry gave: `up` said so
        elif not services[name].one_shot and (state != "running" or health not in ("healthy", "no check")):
            healthy = False
        known = BY_NAME.get(name)
        # Only what the host can reach: a service without published ports answers inside the network only.
        url = known.url(settings) if known and known.url and settings and services[name].published else ""
        rows.append((name, services[name].stack, state, health, url))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        say("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)))
    return healthy


def urls() -> None:
    """Every URL on the host, with the logins from .env (the platform's own secrets)."""
    env = {**read_env_file(REPO_ROOT / ".env.example"), **read_env_file(ENV_FILE), **os.environ}
    host = env.get("BIND_ADDRESS", "127.0.0.1")
    host = "127.0.0.1" if host == "0.0.0.0" else host

    def url(port_key: str, path: str = "") -> str:
        return f"http://{host}:{env.get(port_key, '')}{path}"

    def login(user_key: str, password_key: str) -> str:
        user = env.get(user_key, user_key)
        return f"user {user}, password {env.get(password_key)}"

    lines = [
        ("Airflow", url("AIRFLOW_PORT"), login("AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD")),
        ("MLflow", url("MLFLOW_PORT"), "no login"),
        ("Serving API", url("SERVING_PORT", "/docs"),
         f"header Authorization: Bearer {env.get('SERVING_API_TOKEN')} (docker mode)"),
        ("Grafana", url("GRAFANA_PORT"), login("GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD")),
        ("Prometheus", url("PROMETHEUS_PORT"), "no login"),
        ("Reports", url("MONITORING_SERVICE_PORT", "/reports/"), "no login"),
        ("Kibana", url("KIBANA_PORT"), login("elastic", "ELASTIC_PASSWORD")),
        ("Elasticsearch", url("ELASTICSEARCH_PORT"), login("elastic", "ELASTIC_PASSWORD")),
        ("Jenkins", url("JENKINS_PORT"), login("JENKINS_ADMIN_USER", "JENKINS_ADMIN_PASSWORD")),
        ("Kafka", f"{host}:{env.get('KAFKA_PORT')}", "bootstrap servers, no login"),
        ("PostgreSQL", f"postgresql://{host}:{env.get('POSTGRES_PORT')}", login("POSTGRES_USER", "POSTGRES_PASSWORD")),
    ]
    width = max(len(name) for name, _, _ in lines)
    say("==> Where to look (logins from .env)")
    for name, address, login in lines:
        say(f"    {name.ljust(width)}  {address}   {login}")


def logs(profiles: list[str], follow: bool) -> None:
    services = load_project(project_config())
    compose(*profile_args(profiles), "logs", "--tail", "200", *(["--follow"] if follow else []),
            *in_profiles(services, profiles), check=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run.sh", description="Docker-mode stack control.")
    parser.add_argument("stack", choices=[*STACKS, "all", "urls"])
    parser.add_argument("verb", nargs="?", choices=("up", "down", "restart", "status", "logs", "build"))
    parser.add_argument("--volumes", action="store_true")
    parser.add_argument("--follow", "-f", action="store_true")
    args = parser.parse_args(argv)
    if args.stack == "urls":
        urls()
        return 0
    profiles = list(STACKS) if args.stack == "all" else [args.stack]
    try:
        if args.verb in ("down", "restart"):
            down(args.stack, profiles, volumes=args.volumes and args.verb == "down")
        if args.verb in ("up", "restart"):
            up(args.stack, profiles)
            status(profiles)
        if args.verb == "status":
            return 0 if status(profiles) else 1
        if args.verb == "logs":
            logs(profiles, args.follow)
        if args.verb == "build":
            build(load_project(project_config()), args.stack, profiles)
    except DockerModeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
