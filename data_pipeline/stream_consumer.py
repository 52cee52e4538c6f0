"""The stream consumer: driver statistics from Kafka into Feast's online store and the offline table.

`python -m data_pipeline.stream_consumer` runs until SIGTERM or SIGINT. Each loop polls a batch
(up to MAX_POLL_RECORDS records or POLL_TIMEOUT_MS), validates every message, sends the invalid ones
to the dead-letter topic, pushes the newest statistics per driver online, inserts every valid one
offline, and only then commits the batch's offsets. Delivery is at least once and both writes are
idempotent (see stream_writers), so a crash at any point loses nothing and duplicates nothing.

A failed write abandons the batch without committing it: the consumer seeks back to the batch's
first offsets, reports not ready, and retries with a growing pause. On a signal, the batch in flight
is finished (or abandoned, uncommitted, if its writes fail), the group is left, and the process exits 0.

A watchdog replaces the Kafka client when it stops making progress: no partitions for
REJOIN_TIMEOUT_SECONDS after a rebalance, or a backlog that nothing was read from for
STALL_TIMEOUT_SECONDS. kafka-python 3.0 can hang in a rebalance (seen here right after a broker
restart); a fresh client rejoins, and at-least-once delivery makes the switch lossless.

While its clients close, kafka-python's errors are logged as warnings (`kafka_errors_as_warnings`).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from data_pipeline.stream_messages import DriverStats, Rejection, dead_letter, validate
from data_pipeline.stream_metrics import NO_ASSIGNMENT, READY, STALLED, ConsumerMetrics
from data_pipeline.stream_topics import ensure_topics
from data_pipeline.stream_writers import OfflineWriter, OnlineWriter
from mlops_platform.health import require_ready, scrape_metrics
from mlops_platform.logs import configure_logging, stop_on_signals
from mlops_platform.settings import Settings, get_settings

SERVICE = "stream-consumer"
GROUP_ID = "driver-stats-feature-writer"
POLL_TIMEOUT_MS = 100
MAX_POLL_RECORDS = 500
# A restarted consumer gets its partitions back once the dead member's session expires.
SESSION_TIMEOUT_MS = 10_000
LAG_INTERVAL_SECONDS = 2.0
DLQ_TIMEOUT_SECONDS = 10.0
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
REJOIN_TIMEOUT_SECONDS = 60.0
STALL_TIMEOUT_SECONDS = 60.0

log = logging.getLogger(SERVICE)


class StageFailed(Exception):
    """A write of the batch failed; `stage` says which (online, offline, dead_letter, commit)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage} write failed: {type(cause).__name__}: {cause}")
        self.stage = stage


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


def _rebalance_listener(owner: StreamConsumer):
    """Tracks group membership for readiness and the watchdog (runs on kafka-python's IO thread)."""
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            owner.joined.clear()
            owner.unassigned_since = time.monotonic()
            with warnings.catch_warnings():  # Feast's import sets PROMETHEUS_MULTIPROC_DIR; we are one process
                warnings.simplefilter("ignore", UserWarning)
                for tp in revoked:
                    owner.metrics.lag.remove(tp.topic, str(tp.partition))
            log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in revoked)})

        def on_partitions_assigned(self, assigned):
            owner.joined.set()
            owner.last_progress = time.monotonic()
            owner._next_lag_update = 0.0
            log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})

    return Listener()


class StreamConsumer:
    """One member of the consumer group, with its writers, dead-letter producer and metrics."""

    def __init__(self, settings: Settings, metrics: ConsumerMetrics, stop: threading.Event) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.consumer: Any = None
        self.dlq: Any = None
        self.online: OnlineWriter | None = None
        self.offline: OfflineWriter | None = None
        self.joined = threading.Event()
        self.failing = False
        self.unassigned_since = self.last_progress = time.monotonic()
        self._next_lag_update = 0.0

    # ---- connections --------------------------------------------------------------------------
    # What a consumer built on this loop (the prediction logger) sets or overrides: its group, its
    # topics (and their creation, with the partition counts it relies on), its writers, and what it
    # says once connected.
    group_id = GROUP_ID
    connected_to = "Kafka, PostgreSQL and Redis"

    def subscribed_topics(self) -> list[str]:
        return [self.settings.driver_stats_topic]

    def create_topics(self) -> None:
        ensure_topics(self.settings)

    def open_writers(self) -> None:
        """Both stores; raises when one does not answer."""
        if self.offline is None:
            self.offline = OfflineWriter(self.settings)
        self.offline.check()
        if self.online is None:
            self.online = OnlineWriter(self.settings)
        self.online.check()

    def connect(self) -> None:
        """Topics, the writers and the group membership; raises on the first that does not answer."""
        from kafka import KafkaProducer

        self.create_topics()
        self.open_writers()
        if self.dlq is None:
            self.dlq = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all",
                                     linger_ms=5, client_id=f"{self.group_id}-dlq", bootstrap_timeout_ms=10_000)
        if self.consumer is None:
            self.consumer = self._kafka_consumer()

    def _kafka_consumer(self):
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=self.group_id,
            client_id=f"{self.group_id}-{threading.get_native_id()}",
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS, fetch_max_wait_ms=POLL_TIMEOUT_MS,
            session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=SESSION_TIMEOUT_MS // 4,
            bootstrap_timeout_ms=10_000,
        )
        self.joined.clear()
        self.unassigned_since = time.monotonic()
        consumer.subscribe(self.subscribed_topics(), listener=_rebalance_listener(self))
        # A metadata refresh after subscribing lets the first join see the topic's partitions; without
        # it kafka-python assigns from an empty snapshot and rebalances again straight away.
        consumer.topics()
        return consumer

    def replace_kafka_consumer(self, reason: str) -> None:
        """Drop a Kafka client that stopped making progress (nothing is committed) and join afresh."""
        log.error("Kafka consumer replaced", extra={"reason": reason})
        self.metrics.restarts.labels(reason).inc()
        self.metrics.ready.set(0)
        old, self.consumer = self.consumer, None
        try:
            with kafka_errors_as_warnings():
                old.close(autocommit=False, timeout_ms=5000)
        except Exception as exc:  # a stuck client may not close cleanly; it is abandoned either way
            log.warning("old Kafka consumer did not close cleanly", extra={"error": f"{type(exc).__name__}: {exc}"})
        self.connect_until_ready()

    def connect_until_ready(self) -> bool:
        """Retry `connect` with a growing pause until it works or a stop is asked for."""
        delay = RETRY_MIN_SECONDS
        while not self.stop.is_set():
            try:
                self.connect()
                log.info(f"connected to {self.connected_to}",
                         extra={"bootstrap_servers": self.settings.kafka_bootstrap_servers,
                                "topics": self.subscribed_topics(), "group_id": self.group_id})
                return True
            except Exception as exc:  # any client library's error: report it and try again
                log.warning("not connected yet", extra={"error": f"{type(exc).__name__}: {exc}",
                                                        "retry_in_s": delay})
                self.stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        return False

    def close(self) -> None:
        """Leave the group without committing anything further, then close the writers."""
        self.metrics.ready.set(0)
        with kafka_errors_as_warnings():
            if self.consumer is not None:
                self.consumer.close(autocommit=False)
            if self.dlq is not None:
                self.dlq.close(timeout=DLQ_TIMEOUT_SECONDS)
        if self.offline is not None:
            self.offline.close()

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        if not self.connect_until_ready():
            return
        delay = RETRY_MIN_SECONDS
        while not self.stop.is_set():
            polled = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_POLL_RECORDS)
            self.metrics.ready.set(1 if self.joined.is_set() and not self.failing else 0)
            if self.stop.is_set():
                break  # abandon what was just polled: uncommitted, it is read again after a restart
            records = [record for batch in polled.values() for record in batch]
            if not self.joined.is_set() and time.monotonic() - self.unassigned_since > REJOIN_TIMEOUT_SECONDS:
                self.replace_kafka_consumer(NO_ASSIGNMENT)
                continue
            if records:
                self.last_progress = time.monotonic()
                try:
                    self.process(records)
                    self.failing, delay = False, RETRY_MIN_SECONDS
                except StageFailed as failure:
                    self.failing = True
                    self.metrics.failures.labels(failure.stage).inc()
                    self.metrics.ready.set(0)
                    log.error("batch abandoned, it will be read again",
                              extra={"stage": failure.stage, "error": str(failure), "records": len(records),
                                     "retry_in_s": delay})
                    self.rewind(records)
                    self.stop.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
            self.update_lag()

    def process(self, records: Sequence[Any]) -> None:
        """Validate, write both stores and the dead letters, then commit; raises StageFailed."""
        from kafka.errors import CommitFailedError, RebalanceInProgressError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        started = time.perf_counter()
        self.metrics.consumed.inc(len(records))
        now = datetime.now(UTC)
        valid: list[DriverStats] = []
        rejected: list[tuple[Any, Rejection]] = []
        for record in records:
            result = validate(record.value, record.key, now)
            if isinstance(result, Rejection):
                rejected.append((record, result))
            else:
                valid.append(result)

        futures = self._send_dead_letters(rejected, now)
        pushed = self._stage("online", self.online.write, valid)
        visible = time.time()
        for message in valid:
            self.metrics.freshness.observe(max(0.0, visible - message.produced_at.timestamp()))
        inserted = self._stage("offline", self.offline.write, valid)
        self._stage("dead_letter", self._await_dead_letters, futures)

        offsets: dict[Any, Any] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in offsets or offsets[tp].offset <= record.offset:
                offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        try:
            self._stage("commit", self.consumer.commit, offsets)
        except StageFailed as failure:
            if not isinstance(failure.__cause__, CommitFailedError | RebalanceInProgressError):
                raise
            # The partitions moved to another member, which reads the batch again; writes are idempotent.
            log.warning("commit refused after a rebalance; the batch will be read again by the new owner",
                        extra={"records": len(records), "error": str(failure)})
            return

        elapsed = time.perf_counter() - started
        self.metrics.batch_write.labels("total").observe(elapsed)
        self.metrics.pushed.inc(pushed)
        self.metrics.offline_rows.inc(inserted)
        self.metrics.batches.inc()
        self.metrics.last_success.set_to_current_time()
        self.metrics.ready.set(1)
        log.debug("batch committed", extra={"records": len(records), "valid": len(valid), "rejected": len(rejected),
                                            "pushed": pushed, "inserted": inserted,
                                            "latency_ms": round(elapsed * 1000, 1)})

    def _stage(self, stage: str, function, argument):
        started = time.perf_counter()
        try:
            result = function(argument)
        except Exception as exc:
            raise StageFailed(stage, exc) from exc
        self.metrics.batch_write.labels(stage).observe(time.perf_counter() - started)
        return result

    def _send_dead_letters(self, rejected: list[tuple[Any, Rejection]], now: datetime) -> list[Any]:
        futures = []
        by_reason: dict[str, int] = {}
        for record, rejection in rejected:
            self.metrics.rejected.labels(rejection.reason_class).inc()
            by_reason[rejection.reason_class] = by_reason.get(rejection.reason_class, 0) + 1
            payload = dead_letter(record.value, record.key, rejection, record.topic, record.partition, record.offset,
                                  now)
            try:
                futures.append(self.dlq.send(self.settings.driver_stats_dlq_topic, value=payload, key=record.key))
            except Exception as exc:
                raise StageFailed("dead_letter", exc) from exc
        if rejected:  # one line per batch; each message's reason is in its dead-letter record
            first = rejected[0]
            log.info("messages rejected", extra={"rejected": len(rejected), "by_reason": by_reason,
                                                 "first_reason": first[1].reason, "first_partition": first[0].partition,
                                                 "first_offset": first[0].offset})
        return futures

    def _await_dead_letters(self, futures: list[Any]) -> int:
        if futures:
            self.dlq.flush(timeout=DLQ_TIMEOUT_SECONDS)
            for future in futures:
                future.get(timeout=DLQ_TIMEOUT_SECONDS)
            self.metrics.dlq_sends.inc(len(futures))
        return len(futures)

    def rewind(self, records: Sequence[Any]) -> None:
        """Seek each partition of an abandoned batch back to its first record, so nothing is skipped."""
        from kafka.structs import TopicPartition

        first: dict[Any, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    def update_lag(self) -> None:
        """Consumer lag per partition, from the broker's end offsets, at most every LAG_INTERVAL_SECONDS."""
        now = time.monotonic()
        if now < self._next_lag_update:
            return
        self._next_lag_update = now + LAG_INTERVAL_SECONDS
        try:
            assigned = list(self.consumer.assignment())
            if not assigned:
                return
            ends = self.consumer.end_offsets(assigned, timeout_ms=2000)
            total = 0
            for tp in assigned:
                lag = max(0, ends[tp] - self.consumer.position(tp, timeout_ms=2000))
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
                total += lag
        except Exception as exc:  # lag is informative only; never stop the loop for it
            log.warning("consumer lag not updated", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        if total == 0:
            self.last_progress = now
        elif now - self.last_progress > STALL_TIMEOUT_SECONDS:
            self.replace_kafka_consumer(STALLED)


def consumer_health(settings: Settings) -> str:
    """Healthy when the consumer's metrics say it is connected and its last batch went through."""
    url = f"{settings.stream_consumer_url}/metrics"
    values = scrape_metrics(url)
    require_ready(values, READY, url, "stream consumer",
                  "not connected to Kafka and the stores yet, or the last batch failed (see its log)")
    consumed = values.get("driver_stats_consumer_messages_consumed_total", 0.0)
    return f"ready, {consumed:.0f} messages consumed, lag {values.get('driver_stats_consumer_lag', 0.0):.0f}"


def run_as_service(service: str, consumer_class: type[StreamConsumer], metrics, port: int, metrics_url: str,
                   service_log: logging.Logger) -> int:
    """A consumer built on this loop as a service: JSON logs, /metrics on `port`, the loop until a
    signal, then a clean stop (the batch in flight is abandoned uncommitted, the group left)."""
    from prometheus_client import start_http_server

    settings = get_settings()
    configure_logging(service, settings.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    stop = stop_on_signals(service_log)
    server, _thread = start_http_server(port, addr=settings.listen_address)
    service_log.info("metrics served", extra={"url": metrics_url})
    consumer = consumer_class(settings, metrics, stop)
    try:
        consumer.run()
    finally:
        consumer.close()
        server.shutdown()
    service_log.info("stopped cleanly", extra={"exit_code": 0})
    return 0


def main() -> int:
    settings = get_settings()
    return run_as_service(SERVICE, StreamConsumer, ConsumerMetrics(), settings.stream_consumer_port,
                          f"{settings.stream_consumer_url}/metrics", log)


if __name__ == "__main__":
    raise SystemExit(main())
