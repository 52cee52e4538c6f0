"""Start, stop and forget one service of local mode.

`start` hands the service to supervisord and waits until its health check passes (a start of ours that
fails is reported at once, with the last lines of its log); `stop` stops every process of it, forgets it
in supervisord and proves its ports are free; `run_one_shot` runs a one-shot job in the foreground.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import xmlrpc.client
from pathlib import Path

from mlops_platform import haproxy, instances, mlflow_server, process_tree, supervisor
from mlops_platform.errors import PlatformError
from mlops_platform.local import (
    POLL_SECONDS,
    main_pid,
    port_in_use,
    ports_of,
    recorded_group,
    say,
    tail,
    unsupervised_processes,
    wait_until,
)
from mlops_platform.local_prepare import (
    AFTER_START,
    PREPARE,
    drop_database,
    postgres_server_answers,
    scrape_targets_file,
    write_scrape_targets,
)
from mlops_platform.services import (
    BY_NAME,
    Service,
    airflow_home,
    data_dir,
    local_launch,
    log_file,
    merged_env,
    pid_file,
    postgres_data,
    postgres_user,
)
from mlops_platform.settings import REPO_ROOT, Settings

STOP_TIMEOUT_SECONDS = 30.0
STRAY_TIMEOUT_SECONDS = 5.0
ONE_SHOT_TIMEOUT_SECONDS = 600.0


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
    recorded = recorded_group(settings, service.name)
    if recorded:
        say(f"  {service.name}: stopping a run that is not supervised (pids {', '.join(map(str, pids[:5]))})")
        signum, timeout = getattr(signal, service.stop_signal), STOP_TIMEOUT_SECONDS
    else:
        say(f"  {service.name}: stopping processes its stopped run left (pids {', '.join(map(str, pids[:5]))})")
        signum, timeout = signal.SIGTERM, STRAY_TIMEOUT_SECONDS
    process_tree.terminate(lambda: unsupervised_processes(settings, service.name), signum, timeout)
    return True


def start(service: Service, settings: Settings) -> None:
    """Start the service (a scaled one: its instances, then its balancer) unless it runs; wait until healthy."""
    if service.scaling is not None:
        _start_scaled(service, settings)
        return
    started_now = main_pid(settings, service.name) is None
    if not started_now and service.name in RECONFIGURE:
        RECONFIGURE[service.name](settings, main_pid(settings, service.name))
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
        if service.name in RECONFIGURE:
            RECONFIGURE[service.name](settings, None)
        pid = _supervise(service, settings)
        say(f"  {service.name}: started (pid {pid}), waiting until healthy ...")
    started = time.monotonic()
    _wait_healthy(service, settings, started_now)
    if service.name in AFTER_START:
        AFTER_START[service.name](settings)
        _wait_healthy(service, settings, started_now)
    say(f"  {service.name}: healthy after {time.monotonic() - started:.1f}s")


def _start_scaled(service: Service, settings: Settings) -> None:
    """Every instance the count asks for, then the balancer (told the new set), then the instances too many."""
    for one in instances.planned(service, settings):
        start(one, settings)
    front = instances.front_of(service)
    if front is not None:
        start(front, settings)
    for extra in instances.surplus(service, settings):
        stop(extra, settings)
    if scrape_targets_file(settings, service.name).exists():  # Prometheus scrapes each instance
        write_scrape_targets(settings, service)


def _haproxy_config(settings: Settings, running_pid: int | None) -> None:
    """HAProxy's file for the replicas the count asks for; a running HAProxy reloads a changed one."""
    replicas = {one.name: one.port(settings) for one in instances.planned(BY_NAME["serving"], settings)}
    if haproxy.write_config(settings, replicas) and running_pid is not None:
        haproxy.reload(running_pid)
        say(f"  serving-lb: reloaded for {len(replicas)} replica(s)")


# What a service's configuration is made from can change while it runs: written before a start, and
# handed to the running service (with its main pid) at an `up` that finds it running.
RECONFIGURE = {"serving-lb": _haproxy_config}


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
            ok, detail = (instances.check(service, settings) if service.name != "postgres"
                          else postgres_server_answers(settings))
            if ok:
                return
        time.sleep(POLL_SECONDS)
    stop(service, settings)
    raise PlatformError(
        f"{service.name} was not healthy within {settings.health_timeout:.0f}s ({detail}); stopped it. "
        f"Log: {log_file(settings, service.name)}\n{tail(log_file(settings, service.name))}"
    )


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
    True when something was running. A scaled service: every instance of it, whatever count started them."""
    if service.scaling is not None:
        stopped_any = False
        for one in reversed(instances.every(service, settings)):
            stopped_any |= stop(one, settings, quiet)
        return stopped_any
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
        for folder in mlflow_server.state_folders(settings):
            shutil.rmtree(folder, ignore_errors=True)
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
