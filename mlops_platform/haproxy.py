"""HAProxy in front of the serving API's replicas (service `serving-lb`): its configuration, for both modes.

Clients keep one URL (SERVING_PORT) however many replicas run. HAProxy checks each replica's `/health`
every CHECK_INTERVAL, takes a replica out after FALL failed checks (or at once, on the first refused
connection of real traffic: `observe layer4`) and puts it back after RISE good ones. A request whose
connection to a replica fails is sent again to another replica (`retry-on conn-failure empty-response` with
`option redispatch`), so a dead replica costs only the requests it was answering when it died.
Every answer names its replica in `X-Served-By`.

Local mode lists the replicas' ports (mlops_platform.instances); docker mode finds the containers of the
scaled `serving` service through Docker's DNS (`server-template` with `resolvers docker`). Docker mode's
file, platform/haproxy/haproxy.cfg, is this module's rendering, kept in sync by a unit test.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mlops_platform.settings import Settings

BACKEND = "serving_replicas"
CHECK_INTERVAL = "500ms"
FALL = 2
RISE = 1
RETRIES = 3
MAX_DOCKER_REPLICAS = 10  # slots of server-template; a replica beyond them gets no traffic
DOCKER_CONFIG = Path(__file__).resolve().parent.parent / "platform" / "haproxy" / "haproxy.cfg"


def _global(stats_socket: str) -> list[str]:
    return [
        "global",
        "    log stdout format raw daemon info",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        "    option dontlog-normal",
        "    option httplog",
        "    timeout connect 1s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout queue 10s",
        "    timeout http-keep-alive 10s",
        f"    retries {RETRIES}",
        # Every retry may pick another replica. Retried: a failed connection, and a request a replica closed
        # without a byte of answer (it died with the request on a kept-alive connection; an answer started
        # is never sent twice).
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        "",
    ]


def _frontend_backend(bind: str) -> list[str]:
    return [
        "frontend serving",
        f"    bind {bind}",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        "    http-response set-header X-Served-By %[srv_name]",
        f"    default-server inter {CHECK_INTERVAL} fastinter 250ms downinter {CHECK_INTERVAL} fall {FALL} "
        f"rise {RISE} observe layer4 error-limit 1 on-error mark-down",
    ]


def local_config(settings: Settings, replicas: dict[str, int]) -> str:
    """Local mode: HAProxy on LISTEN_ADDRESS:SERVING_PORT, one `server` line per replica (name -> port)."""
    if not replicas:
        raise ValueError("HAProxy needs at least one serving replica, got none: set SERVING_REPLICAS to 1 or more")
    servers = [f"    server {name} 127.0.0.1:{port} check" for name, port in replicas.items()]
    return "\n".join(["# Written by mlops_platform/haproxy.py at every `serving up`; edits are lost.",
                      *_global(str(stats_socket(settings))),
                      *_frontend_backend(f"{settings.listen_address}:{settings.serving_port}"), *servers, ""])


def docker_config() -> str:
    """Docker mode: the `serving` containers found through Docker's DNS, however many `--scale` made."""
    return "\n".join([
        "# Docker mode's HAProxy: rendered by mlops_platform/haproxy.py (tests/unit/test_haproxy.py keeps it in",
        "# sync). Replicas are the containers of the compose service `serving`, found through Docker's DNS.",
        *_global("/var/run/haproxy/admin.sock"),
        "resolvers docker",
        "    nameserver dns 127.0.0.11:53",
        "    resolve_retries 3",
        "    timeout resolve 1s",
        "    timeout retry 1s",
        "    hold valid 5s",
        "    hold obsolete 5s",
        "    accepted_payload_size 8192",
        "",
        *_frontend_backend("0.0.0.0:8000"),
        f"    server-template serving- {MAX_DOCKER_REPLICAS} serving:8000 check resolvers docker "
        "init-addr libc,none",
        "",
    ])


# ---------------------------------------------------------------------------------------------
# Local mode's files and commands
# ---------------------------------------------------------------------------------------------
def folder(settings: Settings) -> Path:
    return settings.home / "haproxy"


def config_file(settings: Settings) -> Path:
    return folder(settings) / "haproxy.cfg"


def stats_socket(settings: Settings) -> Path:
    return settings.home / "run" / "haproxy.sock"


def binary() -> str:
    """Debian installs it in /usr/sbin, which a normal user's PATH may lack."""
    for candidate in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(candidate, os.X_OK):
            return candidate
    return "haproxy"


def command(settings: Settings) -> list[str]:
    """Master-worker mode in the foreground: the master is the supervised process, SIGUSR2 reloads it."""
    return [binary(), "-W", "-db", "-f", str(config_file(settings))]


def write_config(settings: Settings, replicas: dict[str, int]) -> bool:
    """Write the configuration for these replicas (name -> port); True when it changed."""
    text = local_config(settings, replicas)
    path = config_file(settings)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    stats_socket(settings).parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def reload(main_pid: int) -> None:
    """The master re-reads its file and starts new workers; old ones finish their requests first."""
    os.kill(main_pid, signal.SIGUSR2)


# ---------------------------------------------------------------------------------------------
# The stats socket: what HAProxy thinks of each replica
# ---------------------------------------------------------------------------------------------
def server_states(socket_path: Path, timeout: float = 3.0) -> dict[str, dict[str, str]]:
    """`show stat` of the replicas' backend: server name -> its row (status UP/DOWN/..., check_status, ...)."""
    import csv
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode().lstrip("# ").splitlines()
    rows = csv.DictReader(line for line in lines if line)
    return {row["svname"]: row for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("BACKEND", "FRONTEND")}
