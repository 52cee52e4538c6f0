"""supervisord for local mode: one daemon per PLATFORM_HOME keeps the long-running services running.

Files, all under `<PLATFORM_HOME>/run/supervisor/` and readable by their owner only:
`supervisord.conf`, `programs/<service>.conf` (one program each, added by `up`, removed by `down`) and
`programs/<service>.json` (what mlops_platform.supervised execs, with the service's environment).
`restarts/<service>.json` counts the restarts the event listener saw. supervisord logs to
`logs/supervisord.log`, its event listener (mlops_platform.supervision_events) to `logs/supervision.log`.

Restart policy (docs/local-mode.md explains it for users):
- Exit code 0 is a service stopping itself cleanly, which ours do only when told to (SIGTERM): not
  restarted. Any other exit, a signal included (SIGKILL, the OOM killer), is restarted.
- A crash after the service ran for STARTSECS is restarted at once. A start that fails sooner is retried
  after 1, 2, ... STARTRETRIES seconds; after that the listener tries again every RETRY_AFTER_FATAL_SECONDS,
  for as long as the service is up, so a service whose dependency was down comes back once it returns.
- Every run starts by killing what an earlier run left (mlops_platform.supervised), and the listener
  kills the rest of a run's processes as soon as its main process exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from mlops_platform import process_tree
from mlops_platform.errors import PlatformError
from mlops_platform.services import write_private_file
from mlops_platform.settings import REPO_ROOT, Settings

STARTSECS = 10
STARTRETRIES = 5
RETRY_AFTER_FATAL_SECONDS = 30
STOP_WAIT_SECONDS = 30
START_TIMEOUT_SECONDS = 30.0
SHUTDOWN_TIMEOUT_SECONDS = 60.0
LISTENER = "supervision"
SOCKET_PATH_LIMIT = 100  # sun_path holds 108 bytes


class SupervisorError(PlatformError):
    """supervisord did not start, answer or stop; the message says where to look."""


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------
def folder(settings: Settings) -> Path:
    return settings.home / "run" / "supervisor"


def config_file(settings: Settings) -> Path:
    return folder(settings) / "supervisord.conf"


def pid_file(settings: Settings) -> Path:
    return folder(settings) / "supervisord.pid"


def program_config(settings: Settings, name: str) -> Path:
    return folder(settings) / "programs" / f"{name}.conf"


def launch_file(settings: Settings, name: str) -> Path:
    return folder(settings) / "programs" / f"{name}.json"


def restarts_file(settings: Settings, name: str) -> Path:
    return restarts_file_of(settings.home, name)


def restarts_file_of(home: Path, name: str) -> Path:
    """The same file for the event listener, which knows the home folder but reads no settings."""
    return home / "run" / "supervisor" / "restarts" / f"{name}.json"


def socket_path(settings: Settings) -> Path:
    """The control socket; in the temp folder when the state folder's path is too long for a socket."""
    path = folder(settings) / "supervisor.sock"
    if len(str(path)) <= SOCKET_PATH_LIMIT:
        return path
    key = hashlib.sha1(str(settings.home.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ride-mlops-supervisor-{key}.sock"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
def _config_text(settings: Settings) -> str:
    logs = settings.home / "logs"
    return "\n".join([
        "; Written by mlops_platform/supervisor.py at every `up`; edits are lost.",
        "[unix_http_server]",
        f"file={socket_path(settings)}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={logs / 'supervisord.log'}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        f"pidfile={pid_file(settings)}",
        f"childlogdir={logs}",
        f"directory={settings.home}",
        "umask=022",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{socket_path(settings)}",
        "",
        f"[eventlistener:{LISTENER}]",
        f"command={sys.executable} -m mlops_platform.supervision_events {settings.home}",
        "events=PROCESS_STATE",
        "buffer_size=1000",
        "autorestart=true",
        f"environment=PYTHONPATH=\"{REPO_ROOT}\"",
        f"stderr_logfile={logs / 'supervision.log'}",
        "stderr_logfile_maxbytes=10MB",
        "stderr_logfile_backups=2",
        "",
        "[include]",
        f"files={folder(settings) / 'programs'}/*.conf",
        "",
    ])


def _program_text(settings: Settings, name: str, stop_signal: str) -> str:
    return "\n".join([
        f"[program:{name}]",
        f"command={sys.executable} -m mlops_platform.supervised {launch_file(settings, name)}",
        f"environment=PYTHONPATH=\"{REPO_ROOT}\"",
        "autostart=false",
        "autorestart=unexpected",
        "exitcodes=0",
        f"startsecs={STARTSECS}",
        f"startretries={STARTRETRIES}",
        f"stopsignal={stop_signal.removeprefix('SIG')}",
        f"stopwaitsecs={STOP_WAIT_SECONDS}",
        "stopasgroup=true",
        "killasgroup=true",
        # The wrapper writes the service's output to logs/<service>.log itself.
        "stdout_logfile=NONE",
        "redirect_stderr=true",
        "",
    ])


@dataclass(frozen=True)
class Launch:
    """What one program runs: the wrapper reads it at every start, restarts included."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    pid_file: Path
    user: tuple[int, int] | None = None


def write_program(settings: Settings, name: str, launch: Launch, stop_signal: str) -> None:
    spec = {
        "service": name, "home": str(settings.home), "argv": launch.argv, "env": launch.env,
        "cwd": str(launch.cwd), "log": str(launch.log), "pid_file": str(launch.pid_file),
        "user": {"uid": launch.user[0], "gid": launch.user[1]} if launch.user else None,
    }
    write_private_file(launch_file(settings, name), json.dumps(spec, indent=1) + "\n")
    write_private_file(program_config(settings, name), _program_text(settings, name, stop_signal))


def forget_program(settings: Settings, name: str) -> None:
    program_config(settings, name).unlink(missing_ok=True)
    launch_file(settings, name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------
class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__()
        self.path, self.timeout = str(path), timeout

    def make_connection(self, host):
        import http.client
        import socket

        path, timeout = self.path, self.timeout

        class Connection(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)

        return Connection("localhost")


def client(settings: Settings, timeout: float = 120.0):
    """An XML-RPC proxy to this home's supervisord (calls raise OSError when it is not running)."""
    return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(socket_path(settings), timeout))


def daemon_pid(settings: Settings) -> int | None:
    try:
        pid = int(pid_file(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_tree.alive(pid) else None


def running(settings: Settings) -> bool:
    if daemon_pid(settings) is None:
        return False
    try:
        return client(settings, timeout=10).supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def ensure_running(settings: Settings) -> bool:
    """Start this home's supervisord unless it runs; True when it was started now."""
    import fcntl

    if running(settings):
        return False
    folder(settings).mkdir(parents=True, exist_ok=True)
    with open(folder(settings) / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `up`s at once start one daemon
        return _start_daemon(settings)


def _start_daemon(settings: Settings) -> bool:
    if running(settings):
        return False
    if daemon_pid(settings) is not None:
        raise SupervisorError(
            f"supervisord (pid {daemon_pid(settings)}) runs but does not answer on {socket_path(settings)}. "
            f"See {settings.home / 'logs' / 'supervisord.log'}; stop it with `kill {daemon_pid(settings)}`.")
    (settings.home / "logs").mkdir(parents=True, exist_ok=True)
    folder(settings).chmod(0o700)  # launch files hold secrets; the control socket starts any program
    (folder(settings) / "programs").mkdir(parents=True, exist_ok=True)
    (folder(settings) / "restarts").mkdir(parents=True, exist_ok=True)
    write_private_file(config_file(settings), _config_text(settings))
    socket_path(settings).unlink(missing_ok=True)
    from mlops_platform.services import merged_env

    result = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(config_file(settings))],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=settings.home,
        env=merged_env({"PYTHONPATH": str(REPO_ROOT)}), timeout=START_TIMEOUT_SECONDS,
    )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if running(settings):
            return True
        time.sleep(0.2)
    raise SupervisorError(
        f"supervisord did not answer on {socket_path(settings)} within {START_TIMEOUT_SECONDS:.0f}s "
        f"(exit {result.returncode}): {(result.stdout + result.stderr).strip()[-1000:]}\n"
        f"See {settings.home / 'logs' / 'supervisord.log'}.")


def shutdown(settings: Settings) -> bool:
    """Stop supervisord (and its event listener); True when it was running."""
    pid = daemon_pid(settings)
    if pid is None:
        return False
    try:
        client(settings, timeout=10).supervisor.shutdown()
    except (OSError, xmlrpc.client.Error):
        os.kill(pid, 15)
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process_tree.alive(pid):
        time.sleep(0.1)
    if process_tree.alive(pid):
        raise SupervisorError(f"supervisord (pid {pid}) still runs {SHUTDOWN_TIMEOUT_SECONDS:.0f}s after shutdown; "
                              f"see {settings.home / 'logs' / 'supervisord.log'}")
    socket_path(settings).unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgramState:
    name: str
    state: str  # supervisord's: STOPPED STARTING RUNNING BACKOFF STOPPING EXITED FATAL UNKNOWN
    pid: int
    exit_status: int
    description: str


def programs(settings: Settings) -> dict[str, ProgramState]:
    """The services supervisord knows (none when it is not running); the event listener left out."""
    if daemon_pid(settings) is None:
        return {}
    try:
        infos = client(settings, timeout=10).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return {}
    return {info["name"]: ProgramState(info["name"], info["statename"], info["pid"], info["exitstatus"],
                                       info["description"])
            for info in infos if info["group"] != LISTENER}


def add(settings: Settings, name: str) -> None:
    """Make supervisord (re)read the program's configuration; it must not be running."""
    proxy = client(settings).supervisor
    if name in programs(settings):
        proxy.removeProcessGroup(name)
    proxy.reloadConfig()
    proxy.addProcessGroup(name)


def start(settings: Settings, name: str) -> None:
    client(settings).supervisor.startProcess(name, False)


def stop_and_remove(settings: Settings, name: str) -> bool:
    """Stop the program (its whole group, SIGKILL after STOP_WAIT_SECONDS) and forget it; True if it ran."""
    proxy = client(settings, timeout=STOP_WAIT_SECONDS + 60).supervisor
    was_running = False
    for _ in range(5):  # the listener may start a FATAL program again between our two calls
        state = programs(settings).get(name)
        if state is None:
            return was_running
        if state.state in ("STARTING", "RUNNING", "BACKOFF", "STOPPING"):
            was_running = was_running or state.state != "BACKOFF"
            try:
                proxy.stopProcess(name, True)
            except xmlrpc.client.Fault as fault:
                if "NOT_RUNNING" not in fault.faultString:
                    raise
        try:
            proxy.removeProcessGroup(name)
            return was_running
        except xmlrpc.client.Fault as fault:
            if "STILL_RUNNING" not in fault.faultString and "BAD_NAME" not in fault.faultString:
                raise
    raise SupervisorError(f"supervisord keeps {name} running after 5 stops; see {settings.home / 'logs'}")


# ---------------------------------------------------------------------------------------------
# Restart counts (written by the event listener)
# ---------------------------------------------------------------------------------------------
def read_restarts(settings: Settings, name: str) -> dict:
    return read_restarts_of(settings.home, name)


def read_restarts_of(home: Path, name: str) -> dict:
    try:
        return json.loads(restarts_file_of(home, name).read_text())
    except (OSError, ValueError):
        return {"restarts": 0}


def write_restarts(home: Path, name: str, record: dict) -> None:
    """Atomically: a reader never sees half a file."""
    path = restarts_file_of(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record) + "\n")
    temporary.replace(path)


def reset_restarts(settings: Settings, name: str) -> None:
    restarts_file(settings, name).unlink(missing_ok=True)
