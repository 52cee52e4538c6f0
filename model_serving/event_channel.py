"""A worker's side of the event path: its spool folder, and the event sender process that drains it.

`publish` costs a request one `json.dumps` of a compact record and one append to the worker's spool
folder (a `write` to the page cache, no waiting on Kafka): the record then survives the death of the
worker, of its sender and of the broker. `publish_durably` also flushes it to disk, for feedback, which
the API acknowledges only once it is durable. Past EVENT_SPOOL_MAX_BYTES, or when the disk refuses, a
record is dropped and counted. A watchdog thread restarts the sender if it exits; the spool keeps what
arrives meanwhile.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

from mlops_platform.settings import REPO_ROOT
from model_serving.event_spool import SpoolFull, SpoolWriter
from model_serving.metrics import EventMetrics

log = logging.getLogger("serving.events")

WATCH_SECONDS = 1.0
STOP_SECONDS = 10.0


class Record(Protocol):
    topic: str

    @property
    def count(self) -> int: ...

    def to_wire(self) -> bytes: ...


class EventChannel:
    """Spools records, and starts and supervises the sender process that delivers them."""

    def __init__(self, metrics: EventMetrics, spool_dir: Path, max_bytes: int) -> None:
        self.metrics = metrics
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self._writer: SpoolWriter | None = None
        self._process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.restarts = 0
        self.problem = ""

    # ---- request path --------------------------------------------------------------------------
    def publish(self, record: Record) -> bool:
        """Spool a record without waiting for the disk; False (counted as dropped) when it cannot."""
        return self._append(record, sync=False)

    def publish_durably(self, record: Record) -> bool:
        """Spool a record and flush it to disk (blocks for the flush: call it from a thread)."""
        return self._append(record, sync=True)

    def _append(self, record: Record, sync: bool) -> bool:
        if record.count == 0:
            return True
        writer = self._writer
        if writer is None:
            self.problem = "the event spool is not open (the API is starting or stopping)"
            self.metrics.dropped.labels(record.topic, "spool_error").inc(record.count)
            return False
        try:
            writer.append(record.to_wire(), sync=sync)
        except SpoolFull as exc:
            self.problem = str(exc)
            self.metrics.dropped.labels(record.topic, "spool_full").inc(record.count)
            return False
        except OSError as exc:  # a full or failing disk
            self.problem = f"the event spool cannot be written: {exc}"
            self.metrics.dropped.labels(record.topic, "spool_error").inc(record.count)
            return False
        self.metrics.spooled.labels(record.topic).inc(record.count)
        return True

    # ---- the sender process ----------------------------------------------------------------------
    def start(self) -> None:
        self._writer = SpoolWriter(self.spool_dir, self.max_bytes)
        self.metrics.spool_limit.set(self.max_bytes)
        self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="event-sender-watchdog", daemon=True)
        self._watchdog.start()

    def _spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "model_serving.event_sender", "--spool-dir", str(self._writer.folder)],
            env=env, stdin=subprocess.DEVNULL)
        log.info("event sender started", extra={"pid": self._process.pid, "spool": str(self._writer.folder)})

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            process = self._process
            if process is not None and process.poll() is not None and not self._stop.is_set():
                log.error("event sender exited; starting another", extra={"pid": process.pid,
                                                                           "exit_code": process.returncode})
                self.restarts += 1
                self._spawn()

    def stop(self) -> None:
        """Close the spool folder, then let the sender deliver what it holds (up to its drain time) and exit."""
        self._stop.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("event sender did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.wait(5)
