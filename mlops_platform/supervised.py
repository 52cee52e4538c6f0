"""How supervisord starts a local-mode service: `python -m mlops_platform.supervised <launch file>`.

The launch file (JSON, mode 600: it holds the service's environment, secrets included) says what to run.
Before the service starts, whatever an earlier run of it left behind is killed: a main process that died
may have left children serving its port, and a restart must neither share the port with them nor leave
them running. Then this process records its pid, tags its environment with its instance
(mlops_platform.process_tree), sends its output to the service's log, drops to the service's user and
replaces itself with the service (exec), so the pid supervisord watches is the service's main process.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from mlops_platform import process_tree


def _previous_main_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def clear_earlier_runs(home: str, service: str, pid_file: Path) -> list[int]:
    """SIGKILL every process of an earlier run of `service`: tagged ones and the recorded main's group."""
    me = os.getpid()
    previous = _previous_main_pid(pid_file)

    def leftovers() -> list[int]:
        pids = set(process_tree.service_members(home, service, except_instance=me))
        if previous is not None and previous != me:
            pids |= set(process_tree.group_members(previous))
        pids.discard(me)
        return sorted(pids)

    return process_tree.kill(leftovers)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mlops_platform.supervised <launch file>", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    service, home, pid_file = spec["service"], spec["home"], Path(spec["pid_file"])
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    killed = clear_earlier_runs(home, service, pid_file)
    if killed:
        print(json.dumps({"timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "WARNING",
                          "service": service, "logger": "mlops_platform.supervised",
                          "message": "killed processes left by an earlier run", "pids": killed}), flush=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    env = dict(spec["env"])
    env[process_tree.TAG_VARIABLE] = process_tree.instance_tag(home, service, os.getpid())
    os.chdir(spec["cwd"])
    user = spec.get("user")
    if user is not None:
        os.setgroups([])
        os.setgid(user["gid"])
        os.setuid(user["uid"])
    argv = spec["argv"]
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
