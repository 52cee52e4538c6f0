"""supervisord's event listener for local mode: `python -m mlops_platform.supervision_events <home>`.

supervisord restarts a program's main process but knows nothing of the processes it forked, and gives
up on a program whose starts keep failing. On each process state event this listener
- kills what is left of a run whose main process exited, stopped or failed to start (its group and
  every process tagged with its instance, mlops_platform.process_tree), so no orphan keeps serving;
- counts restarts: an unexpected exit of a running service (supervisord restarts it at once) and a
  failed start that supervisord retries;
- starts a FATAL program again after RETRY_AFTER_FATAL_SECONDS, until it runs or `down` removes it.
Its own log (JSON lines on stderr) goes to `logs/supervision.log`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import xmlrpc.client
from datetime import UTC, datetime
from pathlib import Path

from supervisor import childutils

from mlops_platform import process_tree
from mlops_platform.supervisor import LISTENER, RETRY_AFTER_FATAL_SECONDS, read_restarts_of, write_restarts

_counts_lock = threading.Lock()


def log(message: str, **fields) -> None:
    event = {"timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "INFO",
             "service": LISTENER, "logger": __name__, "message": message, **fields}
    print(json.dumps(event, default=str), file=sys.stderr, flush=True)


class Listener:
    def __init__(self, home: Path) -> None:
        self.home = home

    def rpc(self):
        return childutils.getRPCInterface(os.environ).supervisor

    def count_restart(self, name: str, reason: str) -> int:
        with _counts_lock:
            record = read_restarts_of(self.home, name)
            record["restarts"] = int(record.get("restarts", 0)) + 1
            record["last_restart"] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "reason": reason}
            write_restarts(self.home, name, record)
        return record["restarts"]

    def clear_dead_runs(self, name: str, main_pid: int | None) -> None:
        """Kill the processes of every run of `name` whose main process is gone (the current one is spared)."""
        def leftovers() -> list[int]:
            pids = set(process_tree.group_members(main_pid)) if main_pid else set()
            prefix = process_tree.service_tag_prefix(self.home, name)
            for process in process_tree.processes():
                if process.tag and process.tag.startswith(prefix):
                    run_main = int(process.tag.rsplit("/", 1)[1])
                    if not process_tree.alive(run_main) or run_main == main_pid:
                        pids.add(process.pid)
            return sorted(pids)

        killed = process_tree.kill(leftovers)
        if killed:
            log("killed the processes a dead main process left", program=name, main_pid=main_pid, pids=killed)
        pid_file = self.home / "run" / f"{name}.pid"
        try:
            if main_pid and int(pid_file.read_text().strip()) == main_pid:
                pid_file.unlink()
        except (OSError, ValueError):
            pass

    def handle(self, event: str, headers: dict[str, str]) -> None:
        name = headers.get("processname", "")
        if name == LISTENER or not name:
            return
        pid = int(headers.get("pid", "0")) or None
        if event == "PROCESS_STATE_EXITED":
            self.clear_dead_runs(name, pid)
            if headers.get("expected") == "0":
                count = self.count_restart(name, "exited unexpectedly while running")
                log("restarting", program=name, main_pid=pid, restarts=count)
            else:
                log("exited cleanly (exit code 0): not restarted", program=name, main_pid=pid)
        elif event == "PROCESS_STATE_STOPPED":
            self.clear_dead_runs(name, pid)
        elif event == "PROCESS_STATE_BACKOFF":
            self.clear_dead_runs(name, None)
            from mlops_platform.supervisor import STARTRETRIES

            if int(headers.get("tries", "0")) <= STARTRETRIES:
                count = self.count_restart(name, f"start failed (try {headers.get('tries')})")
                log("start failed, retrying", program=name, tries=headers.get("tries"), restarts=count)
        elif event == "PROCESS_STATE_FATAL":
            self.clear_dead_runs(name, None)
            log(f"start keeps failing: next try in {RETRY_AFTER_FATAL_SECONDS}s", program=name)
            timer = threading.Timer(RETRY_AFTER_FATAL_SECONDS, self.retry, args=(name,))
            timer.daemon = True
            timer.start()

    def retry(self, name: str) -> None:
        """Start a FATAL program again, unless `down` removed it or someone started it meanwhile."""
        try:
            info = self.rpc().getProcessInfo(name)
            if info["statename"] != "FATAL":
                return
            count = self.count_restart(name, "retry after repeated start failures")
            log("starting again after repeated start failures", program=name, restarts=count)
            self.rpc().startProcess(name, False)
        except (OSError, xmlrpc.client.Error) as exc:
            log("no retry", program=name, reason=str(exc))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mlops_platform.supervision_events <PLATFORM_HOME>", file=sys.stderr)
        return 2
    listener = Listener(Path(argv[0]))
    log("listening", home=argv[0])
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            listener.handle(headers["eventname"], childutils.get_headers(payload.split("\n", 1)[0]))
        except Exception as exc:  # a bad event must not stop the supervision of every other service
            log("event not handled", event=headers.get("eventname"), error=repr(exc))
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
