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
import os
import subprocess
import sys
import time

from mlops_platform.compose_project import (
    ENV_FILE,
    ComposeService,
    DockerModeError,
    compose,
    container_states,
    in_profiles,
    load_project,
    profile_args,
    project_config,
    say,
    with_dependencies,
)
from mlops_platform.docker_images import ensure_base_image, image_present, unavailable_images
from mlops_platform.services import BY_NAME, STACKS
from mlops_platform.settings import REPO_ROOT, Settings, SettingsError, load_settings, read_env_file

WAIT_TIMEOUT_SECONDS = 900


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
    # A service configured with 0 replicas (airflow-worker under LocalExecutor) stays at 0: naming it in
    # `compose up` would start one.
    runnable = [n for n in build(services, stack, profiles) if services[n].replicas != 0]
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
