"""The Kafka consumer loop every streaming service of the platform is built on, as a base class with hooks.

Each loop polls a batch (up to MAX_POLL_RECORDS records or POLL_TIMEOUT_MS), validates every message,
sends the invalid ones to their dead-letter topic, writes the valid ones, and only then commits the
batch's offsets. Delivery is at least once; a consumer's writes must be idempotent, so that a crash at
any point loses nothing and duplicates nothing.

A failed write abandons the batch without committing it: the loop seeks back to the batch's first
offsets, reports not ready, and retries with a growing pause. On a signal, the batch in flight is
finished (or abandoned, uncommitted, if its writes fail), the group is left, and the process exits 0.

A watchdog replaces the Kafka client when it stops making progress: no partitions for
REJOIN_TIMEOUT_SECONDS after a rebalance, or a backlog that nothing was read from for
STALL_TIMEOUT_SECONDS. kafka-python 3.0 can hang in a rebalance (seen here right after a broker
restart); a fresh client rejoins, and at-least-once delivery makes the switch lossless.

While its clients close, kafka-python's errors are logged as warnings (mlops_platform.kafka_logging).

A consumer subclasses `KafkaLoop` and supplies what differs (see "hooks" below): its group and
topics, their creation, the validation of a batch, its writers and its metrics (a KafkaLoopMetrics).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from mlops_platform.kafka_logging import kafka_errors_as_warnings
from mlops_platform.kafka_loop_metrics import NO_ASSIGNMENT, STALLED, KafkaLoopMetrics
from mlops_platform.logs import configure_logging, stop_on_signals
from mlops_platform.messages import Rejection, dead_letter
from mlops_platform.settings import Settings, get_settings

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


class StageFailed(Exception):
    """A write of the batch failed; `stage` says which (a writer's stage, dead_letter or commit)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage} write failed: {type(cause).__name__}: {cause}")
        self.stage = stage


def rebalance_listener(owner: KafkaLoop):
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
            owner.log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in revoked)})

        def on_partitions_assigned(self, assigned):
            owner.joined.set()
            owner.last_progress = time.monotonic()
            owner.next_lag_update = 0.0
            owner.log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})

    return Listener()


class KafkaLoop:
    """One member of a consumer group, with its dead-letter producer, writers and metrics."""

    # ---- hooks: what a consumer sets or overrides ----------------------------------------------
    service = "kafka-loop"  # the logger's name
    group_id = ""
    connected_to = "Kafka"  # said once connected

    def subscribed_topics(self) -> list[str]:
        raise NotImplementedError

    def create_topics(self) -> None:
        """The topics and their dead-letter topics, with the partition counts the consumer relies on."""
        raise NotImplementedError

    def dead_letter_topic(self, topic: str) -> str:
        """Where a refused message read from `topic` goes."""
        raise NotImplementedError

    def split(self, records: Sequence[Any], now: datetime) -> tuple[Any, list[tuple[Any, Rejection]]]:
        """Validate the batch: (its valid messages, which `len` counts; the refused records with their reason)."""
        raise NotImplementedError

    def open_writers(self) -> None:
        """Create the writers not created yet and check them; raises when a store does not answer."""
        raise NotImplementedError

    def write(self, valid: Any) -> dict[str, Any]:
        """Write the valid messages, each store through `self.stage(...)`; returns what to log and count."""
        raise NotImplementedError

    def close_writers(self) -> None:
        """Release the writers' connections."""

    def count_consumed(self, records: Sequence[Any]) -> None:
        self.metrics.consumed.inc(len(records))

    def count_written(self, valid: Any, written: dict[str, Any]) -> None:
        """Count a committed batch's writes (`written` is what `write` returned)."""

    # ---- the loop ------------------------------------------------------------------------------
    def __init__(self, settings: Settings, metrics: KafkaLoopMetrics, stop: threading.Event) -> None:
        self.settings = settings
        self.metrics: Any = metrics
        self.stop = stop
        self.log = logging.getLogger(self.service)
        self.consumer: Any = None
        self.dlq: Any = None
        self.joined = threading.Event()
        self.failing = False
        self.unassigned_since = self.last_progress = time.monotonic()
        self.next_lag_update = 0.0

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
                    self.abandon(records, failure, delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
            self.update_lag()

    def abandon(self, records: Sequence[Any], failure: StageFailed, delay: float) -> None:
        """A batch whose write failed: not ready, rewound, retried after `delay`."""
        self.failing = True
        self.metrics.failures.labels(failure.stage).inc()
        self.metrics.ready.set(0)
        self.log.error("batch abandoned, it will be read again",
                       extra={"stage": failure.stage, "error": str(failure), "records": len(records),
                              "retry_in_s": delay})
        self.rewind(records)
        self.stop.wait(delay)

    def process(self, records: Sequence[Any]) -> None:
        """Validate, write and dead-letter the batch, then commit it; raises StageFailed."""
        started = time.perf_counter()
        self.count_consumed(records)
        now = datetime.now(UTC)
        valid, rejected = self.split(records, now)
        futures = self.send_dead_letters(rejected, now)
        written = self.write(valid)
        self.stage("dead_letter", self.await_dead_letters, futures)
        if not self.commit(records):
            return

        elapsed = time.perf_counter() - started
        self.metrics.batch_write.labels("total").observe(elapsed)
        self.count_written(valid, written)
        self.metrics.batches.inc()
        self.metrics.last_success.set_to_current_time()
        self.metrics.ready.set(1)
        self.log.debug("batch committed", extra={"records": len(records), "valid": len(valid),
                                                 "rejected": len(rejected), **written,
                                                 "latency_ms": round(elapsed * 1000, 1)})

    def stage(self, stage: str, function, argument):
        """`function(argument)`, timed as `stage`; any error becomes StageFailed(stage)."""
        started = time.perf_counter()
        try:
            result = function(argument)
        except Exception as exc:
            raise StageFailed(stage, exc) from exc
        self.metrics.batch_write.labels(stage).observe(time.perf_counter() - started)
        return result

    def commit(self, records: Sequence[Any]) -> bool:
        """Commit past the batch; False when a rebalance moved its partitions (the new owner re-reads it,
        and the writes are idempotent)."""
        from kafka.errors import CommitFailedError, RebalanceInProgressError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets: dict[Any, Any] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in offsets or offsets[tp].offset <= record.offset:
                offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        try:
            self.stage("commit", self.consumer.commit, offsets)
        except StageFailed as failure:
            if not isinstance(failure.__cause__, CommitFailedError | RebalanceInProgressError):
                raise
            self.log.warning("commit refused after a rebalance; the batch will be read again by the new owner",
                             extra={"records": len(records), "error": str(failure)})
            return False
        return True

    def send_dead_letters(self, rejected: list[tuple[Any, Rejection]], now: datetime) -> list[Any]:
        """Send each refused record, with its reason, to its dead-letter topic; the sends are awaited later."""
        futures = []
        by_reason: dict[str, int] = {}
        for record, rejection in rejected:
            self.metrics.count_rejection(record.topic, rejection.reason_class)
            by_reason[rejection.reason_class] = by_reason.get(rejection.reason_class, 0) + 1
            payload = dead_letter(record.value, record.key, rejection, record.topic, record.partition, record.offset,
                                  now)
            try:
                futures.append(self.dlq.send(self.dead_letter_topic(record.topic), value=payload, key=record.key))
            except Exception as exc:
                raise StageFailed("dead_letter", exc) from exc
        if rejected:  # one line per batch; each message's reason is in its dead-letter record
            record, rejection = rejected[0]
            self.log.info("messages rejected", extra={
                "rejected": len(rejected), "by_reason": by_reason, "first_reason": rejection.reason,
                "first_topic": record.topic, "first_partition": record.partition, "first_offset": record.offset})
        return futures

    def await_dead_letters(self, futures: list[Any]) -> int:
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
        if now < self.next_lag_update:
            return
        self.next_lag_update = now + LAG_INTERVAL_SECONDS
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
            self.log.warning("consumer lag not updated", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        if total == 0:
            self.last_progress = now
        elif now - self.last_progress > STALL_TIMEOUT_SECONDS:
            self.replace_kafka_consumer(STALLED)

    # ---- connections ---------------------------------------------------------------------------
    def connect(self) -> None:
        """Topics, the writers and the group membership; raises on the first that does not answer."""
        from kafka import KafkaProducer

        self.create_topics()
        self.open_writers()
        if self.dlq is None:
            self.dlq = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all",
                                     linger_ms=5, client_id=f"{self.group_id}-dlq", bootstrap_timeout_ms=10_000)
        if self.consumer is None:
            self.consumer = self.kafka_consumer()

    def kafka_consumer(self):
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
        consumer.subscribe(self.subscribed_topics(), listener=rebalance_listener(self))
        # A metadata refresh after subscribing lets the first join see the topic's partitions; without
        # it kafka-python assigns from an empty snapshot and rebalances again straight away.
        consumer.topics()
        return consumer

    def replace_kafka_consumer(self, reason: str) -> None:
        """Drop a Kafka client that stopped making progress (nothing is committed) and join afresh."""
        self.log.error("Kafka consumer replaced", extra={"reason": reason})
        self.metrics.restarts.labels(reason).inc()
        self.metrics.ready.set(0)
        old, self.consumer = self.consumer, None
        try:
            with kafka_errors_as_warnings():
                old.close(autocommit=False, timeout_ms=5000)
        except Exception as exc:  # a stuck client may not close cleanly; it is abandoned either way
            self.log.warning("old Kafka consumer did not close cleanly",
                             extra={"error": f"{type(exc).__name__}: {exc}"})
        self.connect_until_ready()

    def connect_until_ready(self) -> bool:
        """Retry `connect` with a growing pause until it works or a stop is asked for."""
        delay = RETRY_MIN_SECONDS
        while not self.stop.is_set():
            try:
                self.connect()
                self.log.info(f"connected to {self.connected_to}",
                              extra={"bootstrap_servers": self.settings.kafka_bootstrap_servers,
                                     "topics": self.subscribed_topics(), "group_id": self.group_id})
                return True
            except Exception as exc:  # any client library's error: report it and try again
                self.log.warning("not connected yet", extra={"error": f"{type(exc).__name__}: {exc}",
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
        self.close_writers()


def run_as_service(loop_class: type[KafkaLoop], metrics: KafkaLoopMetrics, port: int, metrics_url: str) -> int:
    """A consumer built on this loop as a service: JSON logs, /metrics on `port`, the loop until a
    signal, then a clean stop (the batch in flight is abandoned uncommitted, the group left)."""
    from prometheus_client import start_http_server

    settings = get_settings()
    service_log = logging.getLogger(loop_class.service)
    configure_logging(loop_class.service, settings.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    stop = stop_on_signals(service_log)
    server, _thread = start_http_server(port, addr=settings.listen_address)
    service_log.info("metrics served", extra={"url": metrics_url})
    loop = loop_class(settings, metrics, stop)
    try:
        loop.run()
    finally:
        loop.close()
        server.shutdown()
    service_log.info("stopped cleanly", extra={"exit_code": 0})
    return 0
