"""The event sender: a process of its own that turns the API's records into Kafka messages.

kafka-python spends about 60 µs of Python per message; inside an API worker that time would be taken
from requests, and its threads would hold the interpreter lock while requests wait. So each worker
starts one sender (`python -m model_serving.event_sender --fd N`) and hands it records over a local
socket (model_serving.event_channel). Here, one thread receives records into a bounded queue (full:
dropped and counted) and another sends them with a producer it creates lazily, retrying until a
broker answers; messages the broker does not acknowledge within DELIVERY_TIMEOUT_MS are counted as
dropped. The sender exits when its worker closes the socket (or dies), after sending what is queued.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from model_serving.events import Messages, messages_from_wire

SERVICE = "serving-events"
QUEUE_CAPACITY_EVENTS = 50_000
MAX_RECORD_BYTES = 4 * 1024 * 1024
DELIVERY_TIMEOUT_MS = 15_000
REQUEST_TIMEOUT_MS = 5_000
CONNECT_RETRY_MIN_SECONDS = 1.0
CONNECT_RETRY_MAX_SECONDS = 30.0
DRAIN_SECONDS = 5.0
WARN_EVERY_SECONDS = 10.0
PARTITIONS_REFRESH_SECONDS = 60.0

log = logging.getLogger(SERVICE)


class EventQueue(queue.Queue):
    """A queue whose size, and so its bound, counts events rather than records."""

    def _init(self, maxsize: int) -> None:
        self.queue: deque[Messages] = deque()
        self.events = 0

    def _qsize(self) -> int:
        return self.events

    def _put(self, item: Messages) -> None:
        self.queue.append(item)
        self.events += item.count

    def _get(self) -> Messages:
        item = self.queue.popleft()
        self.events -= item.count
        return item


class KafkaSender:
    """A bounded queue drained by one thread into one lazily created Kafka producer."""

    def __init__(self, bootstrap_servers: str, capacity: int = QUEUE_CAPACITY_EVENTS,
                 on_delivered: Callable[[str, int], None] = lambda topic, n: None,
                 on_dropped: Callable[[str, str, int], None] = lambda topic, reason, n: None,
                 producer_factory: Callable[[], Any] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.queue = EventQueue(capacity)
        self._on_delivered = on_delivered
        self._on_dropped = on_dropped
        self._factory = producer_factory or self._kafka_producer
        self._producer: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0
        self._partitions: dict[str, tuple[float, list[int]]] = {}
        self.connected = threading.Event()

    def put(self, messages: Messages) -> bool:
        """Queue without blocking; False (and counted as dropped) when the queue is full."""
        try:
            self.queue.put_nowait(messages)
        except queue.Full:
            self._on_dropped(messages.topic, "queue_full", messages.count)
            self._warn("event queue full, events dropped", topic=messages.topic, events=messages.count)
            return False
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kafka-sender", daemon=True)
            self._thread.start()

    def _kafka_producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers, client_id=f"serving-events-{os.getpid()}",
            acks=1, enable_idempotence=False, linger_ms=20, batch_size=256 * 1024,
            max_block_ms=1_000, request_timeout_ms=REQUEST_TIMEOUT_MS, delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
            bootstrap_timeout_ms=5_000, reconnect_backoff_max_ms=5_000, metrics_enabled=False)

    def _connect(self) -> bool:
        """Create the producer, retrying with a growing pause; False when asked to stop first."""
        delay = CONNECT_RETRY_MIN_SECONDS
        while not self._stop.is_set():
            try:
                self._producer = self._factory()
                self.connected.set()
                log.info("Kafka producer connected", extra={"bootstrap_servers": self.bootstrap_servers})
                return True
            except Exception as exc:  # NoBrokersAvailable, a timeout, DNS: events wait in the queue meanwhile
                log.warning("Kafka producer not connected yet", extra={
                    "bootstrap_servers": self.bootstrap_servers, "error": f"{type(exc).__name__}: {exc}",
                    "retry_in_s": delay, "events_queued": self.queue.qsize()})
                self._stop.wait(delay)
                delay = min(delay * 2, CONNECT_RETRY_MAX_SECONDS)
        return False

    def _run(self) -> None:
        if not self._connect():
            return
        while not self._stop.is_set() or self.queue.qsize():
            try:
                messages = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._send(messages)

    def _partition(self, topic: str, key: bytes) -> int:
        """The partition Kafka's default partitioner picks for `key`, hashed once per record, not per event
        (the pure-Python murmur2 was a fifth of the sender's time). Partition lists are re-read every minute."""
        from kafka.partitioner.default import murmur2

        cached = self._partitions.get(topic)
        if cached is None or time.monotonic() - cached[0] > PARTITIONS_REFRESH_SECONDS:
            cached = (time.monotonic(), sorted(self._producer.partitions_for(topic)))
            self._partitions[topic] = cached
        partitions = cached[1]
        return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]

    def _send(self, messages: Messages) -> None:
        topic, key = messages.topic, messages.key
        delivered = self._delivered_callback(topic)
        failed = self._failed_callback(topic)
        try:
            partition = self._partition(topic, key)
        except Exception as exc:  # metadata unavailable within max_block_ms
            self._on_dropped(topic, "send_failed", messages.count)
            self._warn("events not handed to Kafka", topic=topic, events=messages.count,
                       error=f"{type(exc).__name__}: {exc}")
            return
        for n, value in enumerate(messages.values):
            try:
                future = self._producer.send(topic, value=value, key=key, partition=partition)
            except Exception as exc:  # buffer full for max_block_ms
                self._on_dropped(topic, "send_failed", messages.count - n)
                self._warn("events not handed to Kafka", topic=topic, events=messages.count - n,
                           error=f"{type(exc).__name__}: {exc}")
                return
            future.add_callback(delivered)
            future.add_errback(failed)

    def _delivered_callback(self, topic: str) -> Callable[[Any], None]:
        def delivered(_metadata: Any) -> None:
            self._on_delivered(topic, 1)
        return delivered

    def _failed_callback(self, topic: str) -> Callable[[Exception], None]:
        def failed(exc: Exception) -> None:
            self._on_dropped(topic, "send_failed", 1)
            self._warn("events not acknowledged by Kafka", topic=topic, error=f"{type(exc).__name__}: {exc}")
        return failed

    def _warn(self, message: str, **fields: Any) -> None:
        """At most one warning per WARN_EVERY_SECONDS: an outage must not flood the log; counters count."""
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning(message, extra=fields)

    def stop(self, timeout: float = DRAIN_SECONDS) -> None:
        """Send what is queued (for up to `timeout` seconds), then close the producer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        left = self.queue.qsize()
        if left:
            log.warning("events still queued at shutdown are lost", extra={"events": left})
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except Exception as exc:
                log.warning("Kafka producer did not close cleanly", extra={"error": f"{type(exc).__name__}: {exc}"})
            self._producer = None


def receive(sock: socket.socket, sender: KafkaSender, stop: threading.Event,
            on_bad_record: Callable[[], None] = lambda: None) -> None:
    """Move records from the worker's socket into the sender's queue until EOF or a stop request."""
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            data = sock.recv(MAX_RECORD_BYTES)
        except TimeoutError:
            continue
        except OSError as exc:
            log.warning("event socket failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        if not data:
            return  # the worker closed its end or exited
        try:
            messages = messages_from_wire(data)
        except ValueError as exc:
            on_bad_record()
            log.error("record not understood", extra={"error": str(exc)})
            continue
        sender.put(messages)


def main(argv: list[str] | None = None) -> int:
    from mlops_platform.logs import configure_logging, stop_on_signals
    from mlops_platform.settings import get_settings
    from model_serving.metrics import EventMetrics

    parser = argparse.ArgumentParser(description="Send the API's events to Kafka (started by each API worker).")
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of the worker's socket")
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.getLogger("kafka").setLevel(logging.ERROR)
    stop = stop_on_signals(configure_logging(SERVICE, settings.log_level))

    metrics = EventMetrics()
    sender = KafkaSender(settings.kafka_bootstrap_servers,
                         on_delivered=lambda topic, n: metrics.delivered.labels(topic).inc(n),
                         on_dropped=lambda topic, reason, n: metrics.dropped.labels(topic, reason).inc(n))
    sender.start()
    sock = socket.socket(fileno=args.fd)
    watcher = threading.Thread(target=_report_queue, args=(sender, metrics, stop), daemon=True)
    watcher.start()
    try:
        receive(sock, sender, stop)
    finally:
        stop.set()
        sock.close()
        sender.stop()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid())
    return 0


def _report_queue(sender: KafkaSender, metrics: Any, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        metrics.queued.set(sender.queue.qsize())


if __name__ == "__main__":
    raise SystemExit(main())
