"""Local mode's stack verbs, called by the front door (mlops_platform.cli): `up`, `down`, `status`, `logs`.

`up` adds the stack's services and what they need in dependency order (SERVICES is ordered that way)
and waits for each to be healthy; `down` stops them in reverse order and stops supervisord with the
last one; `status` shows supervisord's view of each service, then its health check for a live one.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from mlops_platform import instances, process_tree, supervisor
from mlops_platform.errors import PlatformError
from mlops_platform.local import main_pid, ports_of, restart_count, say, tail, unsupervised_processes
from mlops_platform.local_service import STOP_TIMEOUT_SECONDS, delete_data, run_one_shot, start, stop
from mlops_platform.services import BY_NAME, SERVICES, Service, log_file, services_of
from mlops_platform.settings import Settings


def with_requirements(stack: str, settings: Settings | None = None) -> list[Service]:
    """The stack's services and what they need, in start order (SERVICES is ordered that way); with
    `settings`, a scaled service of which none is asked for (Airflow's workers without Celery) is left out."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for required in BY_NAME[name].requires:
                add(required)

    for service in services_of(stack):
        if settings is None or service.scaling is None or service.scaling.count(settings) > 0:
            add(service.name)
    return [service for service in SERVICES if service.name in wanted]


def up(stack: str, settings: Settings, asked_alone: bool) -> None:
    services = with_requirements(stack, settings)
    if not services:
        say(f"[{stack}] nothing to start yet")
        return
    runnable = [s for s in services if not s.docker_only]
    docker_only = [s.name for s in services if s.docker_only]
    if docker_only:
        message = f"[{stack}] {', '.join(docker_only)}: docker mode only (no Docker engine here)"
        if asked_alone and not runnable:
            raise PlatformError(f"{message}; run on a machine with Docker, or `bash run.sh {stack} up --mode docker`")
        say(message + ", skipped")
    if not runnable:
        return
    say(f"[{stack}] up")
    settings.home.mkdir(parents=True, exist_ok=True)
    for service in runnable:
        if service.stack != stack and main_pid(settings, service.name) is None and not service.one_shot:
            say(f"  {service.name}: needed by {stack}")
        if service.one_shot:
            run_one_shot(service, settings)
        else:
            start(service, settings)


def down(stack: str, settings: Settings, volumes: bool) -> None:
    services = [s for s in services_of(stack) if not s.docker_only]
    if not services:
        return
    say(f"[{stack}] down{' (and delete data)' if volumes else ''}")
    stopped_any = False
    for service in reversed(services):
        stopped_any |= stop(service, settings)
    stop_supervisor_if_idle(settings)
    if volumes:
        for service in instances.expand(services, settings):
            delete_data(service, settings)
    if not stopped_any and not volumes:
        say("  nothing was running")


def stop_supervisor_if_idle(settings: Settings) -> None:
    """With its last service gone, supervisord (and its event listener) stop too: nothing stays running."""
    if supervisor.daemon_pid(settings) is None or supervisor.programs(settings):
        return
    supervisor.shutdown(settings)
    process_tree.terminate(lambda: process_tree.home_members(settings.home), signal.SIGTERM, STOP_TIMEOUT_SECONDS)
    say("  supervisor: stopped (no service left to supervise)")


# ---------------------------------------------------------------------------------------------
# Status and logs
# ---------------------------------------------------------------------------------------------
@dataclass
class ServiceState:
    name: str
    word: str  # healthy, unhealthy, restarting, stopping, stopped, one-shot, n/a
    detail: str
    restarts: int | None = None

    @property
    def running(self) -> bool:
        return self.word in ("healthy", "unhealthy", "stopping")

    @property
    def healthy(self) -> bool:
        return self.word in ("healthy", "one-shot")


def state_of(service: Service, settings: Settings,
             programs: dict[str, supervisor.ProgramState] | None = None) -> ServiceState:
    """What status shows: supervisord's view of the service, then its health check for a live one.

    "healthy" needs a live main process (supervisord's pid) and, for a service with ports, every
    listener on them inside the service's own processes: an orphan of a dead run answering the health
    check does not count.
    """
    if service.docker_only:
        return ServiceState(service.name, "n/a", "docker mode only")
    if service.one_shot:
        return ServiceState(service.name, "one-shot", "one-shot, runs at `up`")
    if programs is None:
        programs = supervisor.programs(settings)
    program = programs.get(service.name)
    restarts = restart_count(settings, service.name)
    log = log_file(settings, service.name)
    up_command = f"`bash run.sh {service.stack} up`"
    if program is None or program.state == "STOPPED":
        orphans = unsupervised_processes(settings, service.name)
        if orphans:
            return ServiceState(service.name, "unhealthy",
                                f"running without supervision (pids {', '.join(map(str, orphans[:5]))}); "
                                f"`bash run.sh {service.stack} restart` puts it back under supervision", restarts)
        return ServiceState(service.name, "stopped", "stopped", restarts)
    if program.state == "BACKOFF":
        return ServiceState(service.name, "restarting", f"start failed, retrying with backoff; log: {log}", restarts)
    if program.state == "FATAL":
        return ServiceState(service.name, "restarting",
                            f"starts keep failing, next try within {supervisor.RETRY_AFTER_FATAL_SECONDS}s; "
                            f"log: {log}", restarts)
    if program.state == "EXITED":
        if program.exit_status == 0:
            return ServiceState(service.name, "stopped",
                                f"exited by itself with code 0 (a clean stop, not restarted); {up_command} starts it",
                                restarts)
        return ServiceState(service.name, "restarting", f"exited ({program.description}), restarting", restarts)
    pid = main_pid(settings, service.name)
    if pid is None:
        return ServiceState(service.name, "restarting", f"main process gone ({program.state})", restarts)
    if program.state == "STOPPING":
        return ServiceState(service.name, "stopping", f"stopping (pid {pid})", restarts)
    healthy, detail = instances.check(service, settings)
    if healthy:
        members = process_tree.instance_members(settings.home, service.name, pid)
        foreign = [port for port in ports_of(service, settings) if process_tree.foreign_listener(port, members)]
        if foreign:
            return ServiceState(service.name, "unhealthy",
                                f"port {foreign[0]} is held by a process outside this run of {service.name} "
                                f"(main pid {pid}): an orphan of an earlier run?", restarts)
    return ServiceState(service.name, "healthy" if healthy else "unhealthy", detail, restarts)


STATUS_HEADER = ("SERVICE", "STACK", "MODE", "URL", "RESTARTS", "HEALTH")


def status_rows(stacks: list[str], settings: Settings) -> list[tuple[str, str, str, str, str, str]]:
    programs = supervisor.programs(settings)
    rows = []
    for stack in stacks:
        for service in instances.expand(services_of(stack), settings):
            state = state_of(service, settings, programs)
            url = service.url(settings) if service.url else "-"
            restarts = "-" if state.restarts is None else str(state.restarts)
            detail = state.detail if state.detail != state.word else ""
            rows.append((service.name, stack, "local", url, restarts, f"{state.word}: {detail}".rstrip(": ")))
    return rows


def print_status(stacks: list[str], settings: Settings) -> bool:
    """The status table; False when a service is unhealthy or restarting."""
    rows = status_rows(stacks, settings)
    columns = len(STATUS_HEADER) - 1
    widths = [max(len(r[i]) for r in [STATUS_HEADER, *rows]) for i in range(columns)]
    for row in [STATUS_HEADER, *rows]:
        say("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:columns])) + "  " + row[columns])
    return all(not r[-1].startswith(("unhealthy", "restarting")) for r in rows)


def logs(stacks: list[str], settings: Settings, follow: bool) -> None:
    files = [log_file(settings, s.name) for stack in stacks
             for s in instances.expand(services_of(stack), settings) if not s.docker_only]
    existing = [str(f) for f in files if f.exists()]
    if not existing:
        say("no logs yet")
        return
    if follow:
        os.execvp("tail", ["tail", "-n", "20", "-F", *existing])
    for path in existing:
        say(f"==> {path} <==")
        say(tail(Path(path), 100))
