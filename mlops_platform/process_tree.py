"""A local-mode service's processes, found through /proc: its process group and its instance tag.

A service's main process leads its own process group, so the group holds what it forks. Some children
leave the group (Airflow runs each task in a group of its own; anything may call setsid), and once the
main process dies its orphans are re-parented and the tree's shape is lost. So every service also
starts with an instance tag in its environment, `PLATFORM_SERVICE_INSTANCE=<home key>/<service>/<main pid>`,
which every descendant inherits whatever group or parent it ends up with. Group and tag together are
"the service's processes"; killing them all is what a container runtime does when a container's main
process dies. This module imports nothing heavy: the exec wrapper and the event listener use it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

TAG_VARIABLE = "PLATFORM_SERVICE_INSTANCE"
_TAG_PREFIX = TAG_VARIABLE.encode() + b"="
PROC = Path("/proc")


def home_key(home: Path | str) -> str:
    """A short, stable key for one PLATFORM_HOME (several platforms may run on one machine)."""
    return hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:12]


def service_tag_prefix(home: Path | str, service: str) -> str:
    return f"{home_key(home)}/{service}/"


def instance_tag(home: Path | str, service: str, main_pid: int) -> str:
    return f"{service_tag_prefix(home, service)}{main_pid}"


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    pgid: int
    state: str
    tag: str | None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of `pid`, None when it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2])


def _tag(pid: int) -> str | None:
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except OSError:  # gone, or another user's process we may not read
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(_TAG_PREFIX):
            return entry[len(_TAG_PREFIX):].decode(errors="replace")
    return None


def processes() -> list[ProcessInfo]:
    """Every live (non-zombie) process on this machine with its group and instance tag."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        found.append(ProcessInfo(pid, stat[1], stat[0], _tag(pid)))
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    return [p.pid for p in processes() if p.pgid == pgid]


def instance_members(home: Path | str, service: str, main_pid: int) -> list[int]:
    """The processes of one run of a service: its main process's group and everything tagged with it."""
    tag = instance_tag(home, service, main_pid)
    return [p.pid for p in processes() if p.pgid == main_pid or p.tag == tag]


def service_members(home: Path | str, service: str, except_instance: int | None = None) -> list[int]:
    """Every process tagged as any run of `service` under `home`, optionally sparing one run."""
    prefix = service_tag_prefix(home, service)
    spared = f"{prefix}{except_instance}" if except_instance is not None else None
    return [p.pid for p in processes()
            if p.tag is not None and p.tag.startswith(prefix) and p.tag != spared and p.pid != os.getpid()]


def home_members(home: Path | str) -> list[int]:
    """Every process tagged as a service of the platform under `home`."""
    prefix = f"{home_key(home)}/"
    return [p.pid for p in processes() if p.tag is not None and p.tag.startswith(prefix)]


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def kill(find, timeout: float = 10.0) -> list[int]:
    """SIGKILL what `find()` returns until it returns nothing (new forks included); the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = [pid for pid in find() if pid != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return killed
        signal_all(pids, signal.SIGKILL)
        killed += [pid for pid in pids if pid not in killed]
        time.sleep(0.05)


def terminate(find, signum: int, timeout: float) -> list[int]:
    """`signum` to what `find()` returns, SIGKILL to whatever is left after `timeout`; the pids signalled."""
    pids = [pid for pid in find() if pid != os.getpid()]
    if not pids:
        return []
    signal_all(pids, signum)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and find():
        time.sleep(0.1)
    return sorted(set(pids) | set(kill(find)))


# ---------------------------------------------------------------------------------------------
# Who holds a listening port
# ---------------------------------------------------------------------------------------------
def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def foreign_listener(port: int, members: list[int]) -> bool:
    """True when something outside `members` listens on `port` (an orphan of an earlier run, say)."""
    listening = _listening_inodes(port)
    if not listening:
        return False
    owned: set[str] = set()
    for pid in members:
        owned |= _socket_inodes(pid)
    return not listening <= owned
