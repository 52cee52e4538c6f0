"""The event sender: a process of its own that moves the API's spooled records into Kafka, in order.

kafka-python spends about 60 µs of Python per message; inside an API worker that time would be taken
from requests, and its threads would hold the interpreter lock while requests wait. So each worker
appends its records to its spool folder (model_serving.event_spool) and starts one sender
(`python -m model_serving.event_sender --spool-dir DIR`) that reads them back. The sender sends a batch,
waits until the broker acknowledged all of it, and only then moves the folder's cursor; a batch that
fails is sent again from the cursor after a pause, so an outage delays events and never loses them, and
their order holds. It also claims the folders of workers that are gone (killed, or an earlier run of the
API) and delivers what they left. The sender exits when its worker does, or on SIGTERM, after sending
for up to DRAIN_SECONDS; whatever is left stays in the spool for the next one.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_serving.event_spool import SpoolReader, orphans
from model_serving.events import messages_from_wire

SERVICE = "serving-events"
DELIVERY_TIMEOUT_SECONDS = 10.0
RESET_AFTER_FAILURES = 2
REQUEST_TIMEOUT_MS = 5_000
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
POLL_SECONDS = 0.02
ORPHAN_SCAN_SECONDS = 5.0
DRAIN_SECONDS = 5.0
WARN_EVERY_SECONDS = 10.0
PARTITIONS_REFRESH_SECONDS = 60.0
UNKNOWN_TOPIC = "unknown"

log = logging.getLogger(SERVICE)


class DeliveryFailed(RuntimeError):
    """Kafka did not take or acknowledge a batch in time; it is sent again from the cursor."""


class KafkaDelivery:
    """Sends a batch of records and returns once the broker acknowledged every message of it."""

    def __init__(self, bootstrap_servers: str, producer_factory: Callable[[], Any] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._factory = producer_factory or self._kafka_producer
        self._producer: Any = None
        self._partitions: dict[str, tuple[float, list[int]]] = {}

    def _kafka_producer(self) -> Any:
        from kafka import KafkaProducer

        # One request in flight per connection: a retried request can never overtake a later one. No
        # idempotent producer (kafka-python's default): after a broker restart its producer id state wedged
        # the producer for good, and order and duplicates are handled here and by the consumers anyway.
        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers, client_id=f"serving-events-{os.getpid()}",
            acks="all", enable_idempotence=False, max_in_flight_requests_per_connection=1, linger_ms=5,
            batch_size=256 * 1024,
            max_block_ms=1_000, request_timeout_ms=REQUEST_TIMEOUT_MS,
            delivery_timeout_ms=int(DELIVERY_TIMEOUT_SECONDS * 1000), bootstrap_timeout_ms=5_000,
            reconnect_backoff_max_ms=2_000, metrics_enabled=False)

    def send(self, records: list[bytes]) -> dict[str, int]:
        """Events delivered per topic; DeliveryFailed when any message was not acknowledged."""
        if self._producer is None:
            try:
                self._producer = self._factory()
            except Exception as exc:  # NoBrokersAvailable, DNS, a timeout
                raise DeliveryFailed(f"no Kafka producer: {type(exc).__name__}: {exc}") from exc
            log.info("Kafka producer connected", extra={"bootstrap_servers": self.bootstrap_servers})
        futures: list[tuple[str, Any]] = []
        try:
            for record in records:
                messages = messages_from_wire(record)
                partition = self._partition(messages.topic, messages.key)
                for value in messages.values:
                    futures.append((messages.topic, self._producer.send(
                        messages.topic, value=value, key=messages.key, partition=partition)))
            self._producer.flush(timeout=DELIVERY_TIMEOUT_SECONDS)
        except ValueError:
            raise
        except Exception as exc:  # metadata or buffer space not available within max_block_ms, flush timeout
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        delivered: dict[str, int] = {}
        for topic, future in futures:
            if not future.is_done or future.failed():
                raise DeliveryFailed(f"not acknowledged: {future.exception if future.is_done else 'timed out'}")
            delivered[topic] = delivered.get(topic, 0) + 1
        return delivered

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

    def reset(self) -> None:
        """Drop the producer (its unsent records with it: the batch is sent again from the spool); the next
        batch creates a fresh one. A client that failed twice in a row is not trusted to heal itself."""
        self.close(timeout=0)

    def close(self, timeout: float = DRAIN_SECONDS) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except Exception as exc:
                log.warning("Kafka producer did not close cleanly", extra={"error": f"{type(exc).__name__}: {exc}"})
            self._producer = None


class SpoolForwarder:
    """Drains this worker's spool folder, and any a gone worker left, into Kafka."""

    def __init__(self, own_folder: Path, delivery: KafkaDelivery,
                 on_delivered: Callable[[str, int], None] = lambda topic, n: None,
                 on_dropped: Callable[[str, str, int], None] = lambda topic, reason, n: None) -> None:
        self.own_folder = own_folder
        self.root = own_folder.parent
        self.delivery = delivery
        self._on_delivered = on_delivered
        self._on_dropped = on_dropped
        self.readers: dict[Path, SpoolReader] = {}
        self._scanned_at = float("-inf")
        self._older_elsewhere = False
        self._failures = 0
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_SECONDS
        self._last_warning = float("-inf")

    def claim(self) -> None:
        """Take our own folder, and every folder whose writer is gone and that no other sender drains."""
        now = time.monotonic()
        if now - self._scanned_at < ORPHAN_SCAN_SECONDS and not self._older_elsewhere:
            return
        self._scanned_at = now
        unclaimed = []
        for folder in [self.own_folder, *orphans(self.root, skip=self.own_folder)]:
            if folder not in self.readers and folder.exists():
                reader = SpoolReader.claim(folder)
                if reader is None:
                    unclaimed.append(folder)
                    continue
                self.readers[folder] = reader
                if folder != self.own_folder:
                    log.info("delivering events a gone worker left", extra={
                        "folder": folder.name, "backlog_bytes": reader.backlog_bytes()})
        # A gone worker's folder that another sender is still draining (the worker's own sender, in its
        # last seconds): ours waits for it, so what an earlier run answered reaches Kafka first.
        self._older_elsewhere = any(f.name < self.own_folder.name for f in unclaimed if f != self.own_folder)

    def step(self) -> bool:
        """One pass over the claimed folders, oldest first; True when it moved anything (poll again at once)."""
        self.claim()
        if time.monotonic() < self._retry_at:
            return False
        moved = False
        for folder, reader in sorted(self.readers.items(), key=lambda item: item[0].name):
            if folder == self.own_folder and self._older_elsewhere:
                continue
            batch = reader.read()
            if batch.corrupt:
                self._on_dropped(UNKNOWN_TOPIC, "corrupt", batch.corrupt)
                log.error("torn or corrupt records skipped in the event spool",
                          extra={"folder": folder.name, "records": batch.corrupt})
            if batch.records:
                try:
                    delivered = self._send(batch.records)
                except DeliveryFailed as exc:
                    self._failures += 1
                    if self._failures >= RESET_AFTER_FAILURES:
                        self.delivery.reset()
                    self._retry_at = time.monotonic() + self._retry_delay
                    self._warn("events not delivered yet; kept in the spool", error=str(exc),
                               retry_in_s=self._retry_delay, backlog_bytes=self.backlog_bytes(),
                               failures_in_a_row=self._failures)
                    self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)
                    return moved
                self._failures = 0
                for topic, count in delivered.items():
                    self._on_delivered(topic, count)
                self._retry_delay = RETRY_MIN_SECONDS
                moved = True
            if batch.end != reader.position:
                reader.commit(batch.end)
            if batch.records:
                return moved  # an older folder is emptied before a younger one is read
            if folder != self.own_folder and reader.drained():
                reader.remove()
                del self.readers[folder]
                log.info("spool folder of a gone worker delivered", extra={"folder": folder.name})
        return moved

    def _send(self, records: list[bytes]) -> dict[str, int]:
        """Deliver a batch; a record that is not a record at all (it passed its checksum) is counted and skipped."""
        try:
            return self.delivery.send(records)
        except ValueError:
            good = []
            for record in records:
                try:
                    messages_from_wire(record)
                    good.append(record)
                except ValueError as exc:
                    self._on_dropped(UNKNOWN_TOPIC, "corrupt", 1)
                    log.error("spooled record not understood", extra={"error": str(exc)})
            return self.delivery.send(good) if good else {}

    def backlog_bytes(self) -> int:
        return sum(reader.backlog_bytes() for reader in self.readers.values())

    def run(self, stop: threading.Event, owner_alive: Callable[[], bool]) -> None:
        """Forward until the worker is gone or a stop is asked for, then drain for up to DRAIN_SECONDS."""
        while not stop.is_set() and owner_alive():
            if not self.step():
                stop.wait(POLL_SECONDS)
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and self.backlog_bytes() > 0:
            if not self.step():
                time.sleep(POLL_SECONDS)
        left = self.backlog_bytes()
        if left:
            log.warning("events left in the spool for the next sender", extra={"backlog_bytes": left})

    def _warn(self, message: str, **fields: Any) -> None:
        """At most one warning per WARN_EVERY_SECONDS: an outage must not flood the log; gauges show the backlog."""
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning(message, extra=fields)


def main(argv: list[str] | None = None) -> int:
    from mlops_platform.logs import configure_logging, stop_on_signals
    from mlops_platform.settings import get_settings
    from model_serving.metrics import EventMetrics

    parser = argparse.ArgumentParser(description="Send the API's spooled events to Kafka (started by each API worker).")
    parser.add_argument("--spool-dir", type=Path, required=True, help="the worker's own spool folder")
    args = parser.parse_args(argv)
    settings = get_settings()
    # kafka-python logs every refused connection as an ERROR; during an outage ours say it once per
    # WARN_EVERY_SECONDS, and the spool gauge shows the backlog.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    stop = stop_on_signals(configure_logging(SERVICE, settings.log_level))
    owner = os.getppid()

    metrics = EventMetrics()
    forwarder = SpoolForwarder(args.spool_dir, KafkaDelivery(settings.kafka_bootstrap_servers),
                               on_delivered=lambda topic, n: metrics.delivered.labels(topic).inc(n),
                               on_dropped=lambda topic, reason, n: metrics.dropped.labels(topic, reason).inc(n))
    watcher = threading.Thread(target=_report_backlog, args=(forwarder, metrics, stop), daemon=True)
    watcher.start()
    try:
        forwarder.run(stop, owner_alive=lambda: os.getppid() == owner)
    finally:
        stop.set()
        forwarder.delivery.close()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid())
    return 0


def _report_backlog(forwarder: SpoolForwarder, metrics: Any, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            metrics.spool_bytes.set(forwarder.backlog_bytes())
        except (OSError, RuntimeError):  # a folder removed while it was measured
            continue


if __name__ == "__main__":
    raise SystemExit(main())
