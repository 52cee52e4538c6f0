"""A worker's side of the event path: one non-blocking socket to its own event sender process.

`publish` costs a request one `json.dumps` of a compact record and one non-blocking send of a
datagram. The socket's buffer is the first bounded queue: when it is full (the sender fell behind)
the record is dropped and counted, never waited for. A watchdog thread restarts the sender if it
exits; records sent meanwhile are counted as dropped (sender_down).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from typing import Protocol

from mlops_platform.settings import REPO_ROOT
from model_serving.metrics import EventMetrics

log = logging.getLogger("serving.events")

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
WATCH_SECONDS = 1.0
STOP_SECONDS = 10.0


class Record(Protocol):
    topic: str

    @property
    def count(self) -> int: ...

    def to_wire(self) -> bytes: ...


class EventChannel:
    """Starts, feeds and supervises one event sender process."""

    def __init__(self, metrics: EventMetrics) -> None:
        self.metrics = metrics
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    # ---- request path --------------------------------------------------------------------------
    def publish(self, record: Record) -> bool:
        """Hand a record to the sender without ever blocking; False (counted as dropped) when it cannot."""
        if record.count == 0:
            return True
        sock = self._sock
        if sock is None:
            self.metrics.dropped.labels(record.topic, "sender_down").inc(record.count)
            return False
        try:
            sock.send(record.to_wire())
        except BlockingIOError:
            self.metrics.dropped.labels(record.topic, "queue_full").inc(record.count)
            return False
        except OSError:  # the sender exited; the watchdog starts another
            self.metrics.dropped.labels(record.topic, "sender_down").inc(record.count)
            return False
        return True

    # ---- the sender process ----------------------------------------------------------------------
    def start(self) -> None:
        self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="event-sender-watchdog", daemon=True)
        self._watchdog.start()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        ours.setblocking(False)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(
            [sys.executable, "-m", "model_serving.event_sender", "--fd", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        with self._lock:
            old, self._sock, self._process = self._sock, ours, process
        if old is not None:
            old.close()
        log.info("event sender started", extra={"pid": process.pid})

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            process = self._process
            if process is not None and process.poll() is not None and not self._stop.is_set():
                log.error("event sender exited; starting another", extra={"pid": process.pid,
                                                                           "exit_code": process.returncode})
                self.restarts += 1
                self._spawn()

    def stop(self) -> None:
        """Close the socket (the sender sends what it holds, then exits) and wait for it."""
        self._stop.set()
        with self._lock:
            sock, process, self._sock = self._sock, self._process, None
        if sock is not None:
            sock.close()
        if process is not None:
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("event sender did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.wait(5)
