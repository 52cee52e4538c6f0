"""kafka-python's log records while a client closes: errors that lose nothing, logged as warnings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _ClosingKafkaClient(logging.Filter):
    """Turns kafka-python's ERROR records into WARNING ones, keeping the level it chose in `kafka_level`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.name == "kafka" or record.name.startswith("kafka.")) and record.levelno > logging.WARNING:
            record.kafka_level = record.levelname
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


@contextmanager
def kafka_errors_as_warnings() -> Iterator[None]:
    """While Kafka clients close, kafka-python's errors are warnings: nothing is committed on close, so
    none of them loses anything.

    A process starved past its session timeout is dropped from the group before its client notices;
    stopping it then sends a LeaveGroup that the broker refuses (UnknownMemberIdError), which
    kafka-python logs at ERROR, as it does requests cancelled by the close and a read racing the close
    of its socket.
    """
    demote = _ClosingKafkaClient()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(demote)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(demote)
