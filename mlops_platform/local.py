"""Local mode: the platform's services as supervised processes on this machine.

State, logs and pid files live under PLATFORM_HOME (default `.platform/`): `data/<service>/`,
`logs/<service>.log`, `run/<service>.pid` (the main process of the running service). The long-running
services are programs of one supervisord per PLATFORM_HOME (mlops_platform.supervisor), which restarts
a service that exits on its own; `up` adds them in dependency order and waits for each to be healthy,
`down` stops them, proves their ports are free, and stops supervisord with the last one. A service is
all the processes of its run (mlops_platform.process_tree): when its main process dies, the rest go too.

For tools that inject faults: `main_pid(settings, name)` is the pid of a service's main process (None
when it is not running) and `restart_count(settings, name)` how often it was restarted since `up`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from mlops_platform import health, process_tree, supervisor
from mlops_platform.errors import PlatformError
from mlops_platform.services import (
    BY_NAME,
    PROMETHEUS_CONFIG,
    SERVICES,
    Service,
    airflow_home,
    data_dir,
    java_command,
    kafka_cluster_id,
    kafka_properties,
    local_launch,
    log_file,
    merged_env,
    pid_file,
    postgres_bindir,
    postgres_data,
    postgres_user,
    redis_config,
    redis_config_text,
    services_of,
    write_private_file,
)
from mlops_platform.settings import REPO_ROOT, Settings

POLL_SECONDS = 0.25
STOP_TIMEOUT_SECONDS = 30.0
STRAY_TIMEOUT_SECONDS = 5.0
ONE_SHOT_TIMEOUT_SECONDS = 600.0


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes and ports
# ---------------------------------------------------------------------------------------------
LIVE_STATES = ("STARTING", "RUNNING", "STOPPING")


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


def _recorded_group(settings: Settings, name: str) -> list[int]:
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
        pids |= set(_recorded_group(settings, name))
    else:
        pids -= set(process_tree.instance_members(settings.home, name, current))
    return sorted(pids)


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


def _prepare_postgres(settings: Settings) -> None:
    data = postgres_data(settings)
    link = data_dir(settings, "postgres")
    if data != link and not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to(data)
    if (data / "PG_VERSION").exists():
        return
    user = postgres_user()
    data.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=data.parent, delete=False) as pwfile:
        pwfile.write(settings.postgres_password + "\n")
    try:
        if user is not None:
            os.chown(data, user.pw_uid, user.pw_gid)
            os.chown(pwfile.name, user.pw_uid, user.pw_gid)
        data.chmod(0o700)
        result = subprocess.run(
            [str(postgres_bindir() / "initdb"), "-D", str(data), "-U", settings.postgres_user,
             f"--pwfile={pwfile.name}", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"],
            capture_output=True, text=True, cwd=data.parent,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
    finally:
        os.unlink(pwfile.name)
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise PlatformError(f"initdb failed:\n{result.stdout}{result.stderr}")


def _create_databases(settings: Settings) -> None:
    import psycopg2

    conn = psycopg2.connect(settings.postgres_dsn("postgres"), connect_timeout=3)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("select datname from pg_database")
            existing = {row[0] for row in cur.fetchall()}
            for database in settings.databases:
                if database not in existing:
                    cur.execute(f'create database "{database}"')
                    say(f"  created database {database}")
    finally:
        conn.close()


def drop_database(settings: Settings, database: str) -> None:
    """Forget one stack's database (down --volumes of mlflow or airflow); no-op when PostgreSQL is down."""
    import psycopg2

    try:
        conn = psycopg2.connect(settings.postgres_dsn("postgres"), connect_timeout=3)
    except psycopg2.OperationalError:
        return
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'drop database if exists "{database}" with (force)')
        cur.execute(f'create database "{database}"')
    conn.close()
    say(f"  emptied database {database}")


def _prepare_kafka(settings: Settings) -> None:
    config = settings.home / "kafka" / "server.properties"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(kafka_properties(settings))
    if (data_dir(settings, "kafka") / "meta.properties").exists():
        return
    data_dir(settings, "kafka").mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        java_command(settings, "kafka.tools.StorageTool", "format", "-t", kafka_cluster_id(),
                     "-c", str(config), "--ignore-formatted"),
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise PlatformError(f"formatting Kafka's storage failed:\n{result.stdout}{result.stderr}")


DOCKER_ONLY_BEGIN = re.compile(r"(?m)^[ \t]*# docker-only begin\b")
DOCKER_ONLY_END = re.compile(r"(?m)^[ \t]*# docker-only end\b")
DOCKER_ONLY_BLOCK = re.compile(r"(?ms)^[ \t]*# docker-only begin\b.*?^[ \t]*# docker-only end\b[^\n]*(?:\n|\Z)")


def drop_docker_only_blocks(text: str) -> str:
    """`text` without its `# docker-only begin` ... `# docker-only end` blocks (whole lines)."""
    kept = DOCKER_ONLY_BLOCK.sub("", text)
    if DOCKER_ONLY_BEGIN.search(kept) or DOCKER_ONLY_END.search(kept):
        raise PlatformError(f"{PROMETHEUS_CONFIG}: unbalanced `# docker-only begin` / `# docker-only end` markers")
    return kept


def render_prometheus_config(settings: Settings) -> str:
    """docker-compose targets (service:port) rewritten to this machine's host and ports.

    Blocks between `# docker-only begin` and `# docker-only end` (scrape jobs of containers that local
    mode does not run, such as node-exporter) are left out.
    """
    local_targets = {
        "prometheus:9090": f"127.0.0.1:{settings.prometheus_port}",
        "mlflow:5000": f"127.0.0.1:{settings.mlflow_port}",
        "serving:8000": f"127.0.0.1:{settings.serving_port}",
        "stream-consumer:9108": f"127.0.0.1:{settings.stream_consumer_port}",
        "prediction-logger:9109": f"127.0.0.1:{settings.prediction_logger_port}",
        "monitoring-service:9110": f"127.0.0.1:{settings.monitoring_service_port}",
    }
    text = drop_docker_only_blocks(PROMETHEUS_CONFIG.read_text())
    return re.sub(r"\b[a-z][a-z0-9-]*:\d+\b", lambda m: local_targets.get(m.group(0), m.group(0)), text)


def _prepare_prometheus(settings: Settings) -> None:
    target = settings.home / "prometheus" / "prometheus.yml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_prometheus_config(settings))
    rules = PROMETHEUS_CONFIG.parent / "rules"
    if rules.is_dir():
        shutil.copytree(rules, target.parent / "rules", dirs_exist_ok=True)


def _prepare_redis(settings: Settings) -> None:
    """redis.conf with the password, readable by its owner only: redis-server reads it at start."""
    write_private_file(redis_config(settings), redis_config_text(settings))


PREPARE = {
    "postgres": _prepare_postgres,
    "redis": _prepare_redis,
    "kafka": _prepare_kafka,
    "prometheus": _prepare_prometheus,
}
AFTER_START = {"postgres": _create_databases}


# ---------------------------------------------------------------------------------------------
# Start, stop, inspect one service
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
    healthy, detail = health.check(service.name, settings)
    if healthy:
        members = process_tree.instance_members(settings.home, service.name, pid)
        foreign = [port for port in ports_of(service, settings) if process_tree.foreign_listener(port, members)]
        if foreign:
            return ServiceState(service.name, "unhealthy",
                                f"port {foreign[0]} is held by a process outside this run of {service.name} "
                                f"(main pid {pid}): an orphan of an earlier run?", restarts)
    return ServiceState(service.name, "healthy" if healthy else "unhealthy", detail, restarts)


def _launch(service: Service, settings: Settings) -> supervisor.Launch:
    command = local_launch(service, settings)
    user = postgres_user() if service.name == "postgres" else None
    return supervisor.Launch(
        argv=command.argv, env=merged_env(command.env),
        cwd=postgres_data(settings) if user else settings.home,
        log=log_file(settings, service.name), pid_file=pid_file(settings, service.name),
        user=(user.pw_uid, user.pw_gid) if user else None,
    )


def _supervise(service: Service, settings: Settings) -> int:
    """Hand the service to supervisord and start it; the main process's pid."""
    log_file(settings, service.name).parent.mkdir(parents=True, exist_ok=True)
    pid_file(settings, service.name).parent.mkdir(parents=True, exist_ok=True)
    try:
        if supervisor.ensure_running(settings):
            say(f"  supervisor: started (pid {supervisor.daemon_pid(settings)}, log "
                f"{settings.home / 'logs' / 'supervisord.log'})")
        if service.name in supervisor.programs(settings):
            supervisor.stop_and_remove(settings, service.name)  # EXITED, FATAL or BACKOFF: start afresh
        supervisor.write_program(settings, service.name, _launch(service, settings), service.stop_signal)
        supervisor.reset_restarts(settings, service.name)
        supervisor.add(settings, service.name)
        supervisor.start(settings, service.name)
    except (OSError, xmlrpc.client.Error) as exc:
        raise PlatformError(f"supervisord could not start {service.name}: {exc}. "
                            f"See {settings.home / 'logs' / 'supervisord.log'}") from None
    program = supervisor.programs(settings).get(service.name)
    return program.pid if program else 0


def _stop_unsupervised(service: Service, settings: Settings) -> bool:
    """Stop processes of the service that no supervised run owns; True when there were any.

    A main process among them (a run whose supervisord is gone) gets the service's own stop signal and
    time for a clean shutdown; strays that outlived their main process get SIGTERM and little time.
    """
    pids = unsupervised_processes(settings, service.name)
    if not pids:
        return False
    recorded = _recorded_group(settings, service.name)
    if recorded:
        say(f"  {service.name}: stopping a run that is not supervised (pids {', '.join(map(str, pids[:5]))})")
        signum, timeout = getattr(signal, service.stop_signal), STOP_TIMEOUT_SECONDS
    else:
        say(f"  {service.name}: stopping processes its stopped run left (pids {', '.join(map(str, pids[:5]))})")
        signum, timeout = signal.SIGTERM, STRAY_TIMEOUT_SECONDS
    process_tree.terminate(lambda: unsupervised_processes(settings, service.name), signum, timeout)
    return True


def start(service: Service, settings: Settings) -> None:
    started_now = main_pid(settings, service.name) is None
    if started_now:
        _stop_unsupervised(service, settings)
        for port in ports_of(service, settings):
            if port_in_use(settings.listen_address, port):
                raise PlatformError(
                    f"{service.name} cannot start: port {port} on {settings.listen_address} is already in use "
                    f"by another process. Stop that process or choose another port in .env."
                )
        data_dir(settings, service.name).mkdir(parents=True, exist_ok=True)
        if service.name in PREPARE:
            PREPARE[service.name](settings)
        pid = _supervise(service, settings)
        say(f"  {service.name}: started (pid {pid}), waiting until healthy ...")
    started = time.monotonic()
    _wait_healthy(service, settings, started_now)
    if service.name in AFTER_START:
        AFTER_START[service.name](settings)
        _wait_healthy(service, settings, started_now)
    say(f"  {service.name}: healthy after {time.monotonic() - started:.1f}s")


def _wait_healthy(service: Service, settings: Settings, started_now: bool = True) -> None:
    """Until the health check passes. A start of ours that fails is reported at once; a service that
    supervision is already restarting gets the whole health timeout to come back."""
    deadline = time.monotonic() + settings.health_timeout
    detail = ""
    while time.monotonic() < deadline:
        program = supervisor.programs(settings).get(service.name)
        restarting = program is not None and program.state in ("BACKOFF", "EXITED", "FATAL") and not started_now
        if restarting:
            detail = f"supervision is restarting it ({program.state})"
        elif program is None or program.state not in ("STARTING", "RUNNING"):
            described = f"{program.state}: {program.description}" if program else "not supervised"
            stop(service, settings, quiet=True)
            raise PlatformError(
                f"{service.name} exited during start-up ({described}); stopped it. "
                f"Last lines of {log_file(settings, service.name)}:\n{tail(log_file(settings, service.name))}"
            )
        else:
            # PostgreSQL's databases are created right after the server answers.
            ok, detail = (health.check(service.name, settings) if service.name != "postgres"
                          else _postgres_server_answers(settings))
            if ok:
                return
        time.sleep(POLL_SECONDS)
    stop(service, settings)
    raise PlatformError(
        f"{service.name} was not healthy within {settings.health_timeout:.0f}s ({detail}); stopped it. "
        f"Log: {log_file(settings, service.name)}\n{tail(log_file(settings, service.name))}"
    )


def _postgres_server_answers(settings: Settings) -> tuple[bool, str]:
    import psycopg2

    try:
        psycopg2.connect(settings.postgres_dsn("postgres"), connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        return False, str(exc).strip().splitlines()[0]
    return True, "server answers"


def run_one_shot(service: Service, settings: Settings) -> None:
    log = log_file(settings, service.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = local_launch(service, settings)
    say(f"  {service.name}: running ...")
    started = time.monotonic()
    with open(log, "ab") as out:
        result = subprocess.run(command.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=merged_env(command.env), cwd=settings.home,
                                timeout=ONE_SHOT_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise PlatformError(f"{service.name} failed (exit {result.returncode}). Last lines of {log}:\n{tail(log)}")
    say(f"  {service.name}: done in {time.monotonic() - started:.1f}s")


def stop(service: Service, settings: Settings, quiet: bool = False) -> bool:
    """Stop the service and every process of it, and forget it in supervisord (so nothing restarts it);
    True when something was running."""
    stopped = False
    if supervisor.daemon_pid(settings) is not None:
        try:
            stopped = supervisor.stop_and_remove(settings, service.name)
        except (OSError, xmlrpc.client.Error) as exc:
            raise PlatformError(f"supervisord could not stop {service.name}: {exc}. "
                                f"See {settings.home / 'logs' / 'supervisord.log'}") from None
    supervisor.forget_program(settings, service.name)
    stopped |= _stop_unsupervised(service, settings)
    supervisor.reset_restarts(settings, service.name)
    pid_file(settings, service.name).unlink(missing_ok=True)
    if not stopped:
        return False
    for port in ports_of(service, settings):
        if not wait_until(lambda port=port: not port_in_use(settings.listen_address, port), 10):
            raise PlatformError(f"{service.name} stopped but port {port} is still in use")
    if not quiet:
        say(f"  {service.name}: stopped")
    return True


def delete_data(service: Service, settings: Settings) -> None:
    if service.name == "postgres":
        shutil.rmtree(postgres_data(settings), ignore_errors=True)
        link = data_dir(settings, "postgres")
        if link.is_symlink():
            link.unlink()
    elif service.name == "mlflow":
        drop_database(settings, settings.mlflow_db)
        shutil.rmtree(data_dir(settings, "mlflow-artifacts"), ignore_errors=True)
        shutil.rmtree(data_dir(settings, "mlflow-metrics"), ignore_errors=True)
    elif service.name == "airflow-init":
        drop_database(settings, settings.airflow_db)
        shutil.rmtree(airflow_home(settings), ignore_errors=True)
    elif service.name == "kafka":
        shutil.rmtree(settings.home / "kafka", ignore_errors=True)
    shutil.rmtree(data_dir(settings, service.name), ignore_errors=True)
    log_file(settings, service.name).unlink(missing_ok=True)


def delete_home(settings: Settings) -> None:
    """`all down --volumes`: everything local mode kept (landing files, training sets, exports too)."""
    home = settings.home.resolve()
    if home in {Path("/"), Path.home().resolve(), REPO_ROOT.resolve()} or not home.exists():
        return
    shutil.rmtree(home)
    say(f"  deleted {home}")


# ---------------------------------------------------------------------------------------------
# Stacks
# ---------------------------------------------------------------------------------------------
def with_requirements(stack: str) -> list[Service]:
    """The stack's services and what they need, in start order (SERVICES is ordered that way)."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for required in BY_NAME[name].requires:
                add(required)

    for service in services_of(stack):
        add(service.name)
    return [service for service in SERVICES if service.name in wanted]


def up(stack: str, settings: Settings, asked_alone: bool) -> None:
    services = with_requirements(stack)
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
        for service in services:
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


STATUS_HEADER = ("SERVICE", "STACK", "MODE", "URL", "RESTARTS", "HEALTH")


def status_rows(stacks: list[str], settings: Settings) -> list[tuple[str, str, str, str, str, str]]:
    programs = supervisor.programs(settings)
    rows = []
    for stack in stacks:
        for service in services_of(stack):
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
    files = [log_file(settings, s.name) for stack in stacks for s in services_of(stack) if not s.docker_only]
    existing = [str(f) for f in files if f.exists()]
    if not existing:
        say("no logs yet")
        return
    if follow:
        os.execvp("tail", ["tail", "-n", "20", "-F", *existing])
    for path in existing:
        say(f"==> {path} <==")
        say(tail(Path(path), 100))


def running_services(settings: Settings) -> list[str]:
    """Services with a live main process or any process left, and supervisord itself while it runs."""
    names = [s.name for s in SERVICES if not s.docker_only and not s.one_shot
             and (main_pid(settings, s.name) is not None or unsupervised_processes(settings, s.name))]
    if supervisor.daemon_pid(settings) is not None:
        names.append("supervisord")
    return names
