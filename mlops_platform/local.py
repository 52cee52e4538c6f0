"""Local mode's services as processes: which of them run, their pids, restarts and ports.

Local mode runs the platform's services as supervised processes on this machine. State, logs and pid
files live under PLATFORM_HOME (default `.platform/`): `data/<service>/`, `logs/<service>.log`,
`run/<service>.pid` (the main process of the running service). The long-running services are programs
of one supervisord per PLATFORM_HOME (mlops_platform.supervisor), which restarts a service that exits on
its own. A service is all the processes of its run (mlops_platform.process_tree): when its main process
dies, the rest go too. The stack verbs are in mlops_platform.local_stacks, starting and stopping one
service in mlops_platform.local_service, the files and databases a service needs in
mlops_platform.local_prepare.

For tools that inject faults: `main_pid(settings, name)` is the pid of a service's main process (None
when it is not running), `restart_count(settings, name)` how often it was restarted since `up`, and
`group_alive(pgid)` whether any process of a (former) main process's group is left.
"""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

from mlops_platform import instances, process_tree, supervisor
from mlops_platform.services import SERVICES, Service, pid_file
from mlops_platform.settings import Settings

POLL_SECONDS = 0.25
LIVE_STATES = ("STARTING", "RUNNING", "STOPPING")


def say(message: str) -> None:
    print(message, flush=True)


def main_pid(settings: Settings, name: str) -> int | None:
    """The pid of the service's main process while supervisord runs it, else None.

    The main process leads its own process group (its pgid is this pid), and `run/<name>.pid` holds the
    same number. Killing it makes supervisord restart the service: see mlops_platform.supervisor.
    """
    try:
        program = supervisor.programs(settings).get(name)
    except supervisor.SupervisorError:
        return None
    if program is None or program.state not in LIVE_STATES or program.pid <= 0:
        return None
    return program.pid if process_tree.alive(program.pid) else None


read_pid = main_pid  # the name tests and tools used before supervision


def restart_count(settings: Settings, name: str) -> int:
    """How often supervision restarted the service (or retried its start) since `up` started it."""
    return int(supervisor.read_restarts(settings, name).get("restarts", 0))


def group_alive(pgid: int) -> bool:
    """True while any process of the process group `pgid` is alive (zombies excluded)."""
    return bool(process_tree.group_members(pgid))


def _is_zombie(pid: int) -> bool:
    return not process_tree.alive(pid)


def recorded_group(settings: Settings, name: str) -> list[int]:
    """The live processes of the group recorded in `run/<name>.pid` (a run supervision no longer watches)."""
    try:
        pid = int(pid_file(settings, name).read_text().strip())
    except (OSError, ValueError):
        return []
    return process_tree.group_members(pid)


def unsupervised_processes(settings: Settings, name: str) -> list[int]:
    """Processes of `name` that no supervised run owns: left by a supervisord that died, or by a
    version of this platform that started services without one."""
    current = main_pid(settings, name)
    pids = set(process_tree.service_members(settings.home, name, except_instance=current))
    if current is None:
        pids |= set(recorded_group(settings, name))
    else:
        pids -= set(process_tree.instance_members(settings.home, name, current))
    return sorted(pids)


def running_services(settings: Settings) -> list[str]:
    """Services (each instance of a scaled one) with a live main process or any process left, and
    supervisord itself while it runs."""
    candidates: list[str] = []
    for service in SERVICES:
        if not service.docker_only and not service.one_shot:
            names_of = [one.name for one in instances.every(service, settings)]
            candidates += [name for name in [service.name, *names_of] if name not in candidates]
    names = [name for name in candidates
             if main_pid(settings, name) is not None or unsupervised_processes(settings, name)]
    if supervisor.daemon_pid(settings) is not None:
        names.append("supervisord")
    return names


def ports_of(service: Service, settings: Settings) -> list[int]:
    if service.port is None:
        return []
    return [service.port(settings), *service.extra_ports(settings)]


def port_in_use(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_SECONDS)
    return predicate()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log yet)"
