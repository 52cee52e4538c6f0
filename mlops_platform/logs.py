"""Structured logs: one JSON object per line on stdout, so Filebeat can ship them to Elasticsearch as is.

Every line has `timestamp`, `level`, `service`, `logger` and `message`; context passed with
`extra={...}` (request_id, run_id, model_version, latency_ms, counts) becomes top-level fields.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 3


def configure_logging(service: str, level: str = "INFO") -> logging.Logger:
    """Route every logger of this process to stdout as JSON lines; returns the service's logger.

    Local mode already writes each service's stdout to `<PLATFORM_HOME>/logs/<service>.log`. In docker
    mode the same lines also go to that file on the shared log volume (rotated), where Filebeat reads them.
    """
    formatter = JsonFormatter(service)
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(formatter)
    handlers: list[logging.Handler] = [stdout]
    if os.environ.get("PLATFORM_MODE") == "docker":
        from mlops_platform.settings import get_settings

        folder = get_settings().home / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        file = RotatingFileHandler(folder / f"{service}.log", maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS)
        file.setFormatter(formatter)
        handlers.append(file)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    return logging.getLogger(service)


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An event set by SIGTERM or SIGINT, so a service's loop can finish its batch and exit cleanly."""
    stop = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        # Not stop.set() here: the handler runs on the main thread between two of its steps, maybe
        # inside stop.wait() holding the event's lock, and would wait for that lock forever.
        threading.Thread(target=stop.set, name="stop-requested", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
