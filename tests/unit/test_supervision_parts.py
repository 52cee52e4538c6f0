"""The parts of local-mode supervision that need no supervisord: files it writes, the process finder,
and the event listener's handling of one event, on real processes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from mlops_platform import process_tree, supervisor
from mlops_platform.supervision_events import Listener
from tests.conftest import eventually

SECRET = "secret-value-that-must-stay-in-files"


@pytest.fixture
def settings(make_settings):
    return make_settings(POSTGRES_PASSWORD=SECRET, SERVING_API_TOKEN="x")


def test_program_files_are_private_and_its_command_line_holds_no_secret(settings):
    launch = supervisor.Launch(argv=["redis-server", "conf"], env={"POSTGRES_PASSWORD": SECRET}, cwd=settings.home,
                               log=settings.home / "logs" / "redis.log", pid_file=settings.home / "run" / "redis.pid")
    supervisor.write_program(settings, "redis", launch, "SIGTERM")

    conf = supervisor.program_config(settings, "redis")
    spec = supervisor.launch_file(settings, "redis")
    for path in (conf, spec):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert SECRET not in conf.read_text()
    assert json.loads(spec.read_text())["env"]["POSTGRES_PASSWORD"] == SECRET
    command = next(line for line in conf.read_text().splitlines() if line.startswith("command="))
    assert command.endswith(f"-m mlops_platform.supervised {spec}")
    assert "autorestart=unexpected" in conf.read_text() and "exitcodes=0" in conf.read_text()


def tagged_tree(settings, service: str, main_pid: int) -> subprocess.Popen:
    """A shell tagged as a run of `service`, with a child that left its process group and session."""
    env = {**os.environ, process_tree.TAG_VARIABLE: process_tree.instance_tag(settings.home, service, main_pid)}
    process = subprocess.Popen(["sh", "-c", "setsid sleep 300 & sleep 300"], env=env, start_new_session=True)
    eventually(lambda: len(process_tree.service_members(settings.home, service)) == 3, timeout=10,
               what="shell, its child and the detached child tagged")
    return process


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_is_its_group_and_every_process_carrying_its_tag(settings):
    main = dead_pid()
    tree = tagged_tree(settings, "mlflow", main)
    try:
        members = process_tree.service_members(settings.home, "mlflow")
        assert tree.pid in members
        assert set(process_tree.instance_members(settings.home, "mlflow", main)) == set(members)
        assert process_tree.service_members(settings.home, "redis") == []
        assert set(process_tree.home_members(settings.home)) == set(members)

        process_tree.kill(lambda: process_tree.service_members(settings.home, "mlflow"))

        assert process_tree.service_members(settings.home, "mlflow") == []
    finally:
        process_tree.kill(lambda: process_tree.service_members(settings.home, "mlflow"))
        tree.wait(timeout=10)


def test_a_port_held_outside_the_run_is_foreign():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not process_tree.foreign_listener(port, [os.getpid()])
        assert process_tree.foreign_listener(port, [])


@pytest.mark.parametrize(("expected", "counted"), [("0", 1), ("1", 0)])
def test_the_listener_kills_what_a_dead_main_process_left_and_counts_unexpected_exits(settings, expected, counted):
    main = dead_pid()
    tree = tagged_tree(settings, "prediction-logger", main)
    try:
        Listener(settings.home).handle("PROCESS_STATE_EXITED", {
            "processname": "prediction-logger", "groupname": "prediction-logger", "from_state": "RUNNING",
            "expected": expected, "pid": str(main)})
        assert process_tree.service_members(settings.home, "prediction-logger") == []
        assert supervisor.read_restarts(settings, "prediction-logger")["restarts"] == counted
    finally:
        process_tree.kill(lambda: process_tree.service_members(settings.home, "prediction-logger"))
        tree.wait(timeout=10)


def test_the_listener_spares_the_running_run(settings):
    tree = tagged_tree(settings, "serving", os.getpid())  # this test process stands for a live main process
    try:
        Listener(settings.home).handle("PROCESS_STATE_BACKOFF", {"processname": "serving", "tries": "1"})
        assert len(process_tree.service_members(settings.home, "serving")) == 3
    finally:
        process_tree.kill(lambda: process_tree.service_members(settings.home, "serving"))
        tree.wait(timeout=10)
