"""The prediction logger: online predictions and their outcomes from Kafka into PostgreSQL.

`python -m model_serving.prediction_logger` runs until SIGTERM or SIGINT, as consumer group
`prediction-logger` on the predictions and ground-truth topics. Each loop polls a batch, validates
every message (model_serving.prediction_messages), sends the invalid ones with their reason to
`<topic>_dlq`, inserts the valid ones into `prediction_log` and `ground_truth` in one transaction
(ON CONFLICT DO NOTHING), and only then commits the batch's offsets. Delivery is at least once and
the inserts are idempotent, so a crash loses nothing and a redelivery adds nothing. An outcome that
arrives before its prediction is stored all the same; `labeled_predictions` joins them once both exist.

The loop itself (retries with a growing pause, rewinding an abandoned batch, the watchdog that
replaces a stuck Kafka client, lag, a clean stop on a signal) is the stream consumer's
(data_pipeline.stream_consumer.StreamConsumer); this module supplies what differs: topics,
validation, the store and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from data_pipeline import stream_topics
from data_pipeline.stream_consumer import (
    StageFailed,
    StreamConsumer,
    run_as_service,
)
from data_pipeline.stream_messages import Rejection, dead_letter
from data_pipeline.stream_writers import PostgresBatchWriter
from mlops_platform.health import require_ready, scrape_metrics
from mlops_platform.settings import Settings, get_settings
from model_serving.prediction_logger_metrics import CONSUMED, LAG, READY, LoggerMetrics
from model_serving.prediction_messages import (
    GroundTruth,
    Prediction,
    dlq_topic,
    validate_ground_truth,
    validate_prediction,
)
from model_serving.prediction_store import (
    GROUND_TRUTH_TABLE,
    PREDICTIONS_TABLE,
    ensure_schema,
    insert_ground_truth,
    insert_predictions,
)

SERVICE = "prediction-logger"
GROUP_ID = "prediction-logger"

log = logging.getLogger(SERVICE)


def topics(settings: Settings) -> tuple[str, str]:
    """The topics the logger reads: predictions, then ground truth."""
    return settings.predictions_topic, settings.ground_truth_topic


def ensure_topics(settings: Settings) -> dict[str, int]:
    """Both topics and their dead-letter topics, with the stream pipeline's partition counts (3 and 1)."""
    found: dict[str, int] = {}
    for topic in topics(settings):
        found.update(stream_topics.ensure_topics(
            replace(settings, driver_stats_topic=topic, driver_stats_dlq_topic=dlq_topic(topic))))
    return found


@dataclass
class ValidBatch:
    """The valid messages of one polled batch, by kind."""

    predictions: list[Prediction] = field(default_factory=list)
    ground_truth: list[GroundTruth] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predictions) + len(self.ground_truth)


def split(records: Sequence[Any], settings: Settings,
          now: datetime | None = None) -> tuple[ValidBatch, list[tuple[Any, Rejection]]]:
    """Validate each record by its topic: (the valid messages, the refused records with their reason)."""
    now = now or datetime.now(UTC)
    valid = ValidBatch()
    rejected: list[tuple[Any, Rejection]] = []
    for record in records:
        if record.topic == settings.predictions_topic:
            result: Any = validate_prediction(record.value, now)
        elif record.topic == settings.ground_truth_topic:
            result = validate_ground_truth(record.value, now)
        else:
            raise ValueError(f"expected a record of {topics(settings)}, got one of topic {record.topic!r}")
        if isinstance(result, Rejection):
            rejected.append((record, result))
        elif isinstance(result, Prediction):
            valid.predictions.append(result)
        else:
            valid.ground_truth.append(result)
    return valid, rejected


class StoreWriter(PostgresBatchWriter):
    """Inserts a batch's predictions and outcomes in one transaction; returns the new rows per table
    (a redelivered message adds none)."""

    application_name = SERVICE

    def ensure_tables(self) -> None:
        ensure_schema(self.settings)

    def insert(self, cur, batch: ValidBatch) -> dict[str, int]:
        return {
            PREDICTIONS_TABLE: insert_predictions(cur, [p.row() for p in batch.predictions]),
            GROUND_TRUTH_TABLE: insert_ground_truth(cur, [g.row() for g in batch.ground_truth]),
        }

    def nothing_new(self) -> dict[str, int]:
        return {PREDICTIONS_TABLE: 0, GROUND_TRUTH_TABLE: 0}


class PredictionLogger(StreamConsumer):
    """One member of group `prediction-logger`: the stream consumer's loop with this service's parts.

    Built with LoggerMetrics (same attribute names as the consumer's). The store writer sits where the
    stream consumer keeps its offline writer, so closing is shared too.
    """

    group_id = GROUP_ID
    connected_to = "Kafka and PostgreSQL"

    def subscribed_topics(self) -> list[str]:
        return list(topics(self.settings))

    def create_topics(self) -> None:
        ensure_topics(self.settings)  # ours: the two topics and their dead-letter topics

    def open_writers(self) -> None:
        """The prediction store; raises when PostgreSQL does not answer."""
        if self.offline is None:
            self.offline = StoreWriter(self.settings)
        self.offline.check()

    def process(self, records: Sequence[Any]) -> None:
        """Validate, store and dead-letter the batch, then commit it; raises StageFailed."""
        started = time.perf_counter()
        for record in records:
            self.metrics.consumed.labels(record.topic).inc()
        now = datetime.now(UTC)
        valid, rejected = split(records, self.settings, now)

        futures = self._send_dead_letters(rejected, now)
        inserted = self._stage("store", self.offline.write, valid)
        self._stage("dead_letter", self._await_dead_letters, futures)
        if not self._commit(records):
            return

        elapsed = time.perf_counter() - started
        self.metrics.batch_write.labels("total").observe(elapsed)
        offered = {PREDICTIONS_TABLE: len(valid.predictions), GROUND_TRUTH_TABLE: len(valid.ground_truth)}
        for table, count in inserted.items():
            self.metrics.stored.labels(table).inc(count)
            self.metrics.duplicates.labels(table).inc(offered[table] - count)
        self.metrics.batches.inc()
        self.metrics.last_success.set_to_current_time()
        self.metrics.ready.set(1)
        log.debug("batch committed", extra={"records": len(records), "valid": len(valid), "rejected": len(rejected),
                                            "inserted": inserted, "latency_ms": round(elapsed * 1000, 1)})

    def _commit(self, records: Sequence[Any]) -> bool:
        """Commit past the batch; False when a rebalance moved its partitions (the new owner re-reads it)."""
        from kafka.errors import CommitFailedError, RebalanceInProgressError
        from kafka.structs import OffsetAndMetadata, TopicPartition

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
            log.warning("commit refused after a rebalance; the batch will be read again by the new owner",
                        extra={"records": len(records), "error": str(failure)})
            return False
        return True

    def _send_dead_letters(self, rejected: list[tuple[Any, Rejection]], now: datetime) -> list[Any]:
        futures = []
        by_reason: dict[str, int] = {}
        for record, rejection in rejected:
            self.metrics.rejected.labels(record.topic, rejection.reason_class).inc()
            by_reason[rejection.reason_class] = by_reason.get(rejection.reason_class, 0) + 1
            payload = dead_letter(record.value, record.key, rejection, record.topic, record.partition, record.offset,
                                  now)
            try:
                futures.append(self.dlq.send(dlq_topic(record.topic), value=payload, key=record.key))
            except Exception as exc:
                raise StageFailed("dead_letter", exc) from exc
        if rejected:  # one line per batch; each message's reason is in its dead-letter record
            record, rejection = rejected[0]
            log.info("messages rejected", extra={"rejected": len(rejected), "by_reason": by_reason,
                                                 "first_reason": rejection.reason, "first_topic": record.topic,
                                                 "first_partition": record.partition, "first_offset": record.offset})
        return futures


def logger_health(settings: Settings) -> str:
    """Healthy when the logger's metrics say it is connected and its last batch went through."""
    url = f"{settings.prediction_logger_url}/metrics"
    values = scrape_metrics(url)
    require_ready(values, READY, url, "prediction logger",
                  "not connected to Kafka and PostgreSQL yet, or the last batch failed (see its log)")
    return f"ready, {values.get(CONSUMED, 0.0):.0f} messages consumed, lag {values.get(LAG, 0.0):.0f}"


def main() -> int:
    settings = get_settings()
    return run_as_service(SERVICE, PredictionLogger,
                          LoggerMetrics(topics=(settings.predictions_topic, settings.ground_truth_topic)),
                          settings.prediction_logger_port, f"{settings.prediction_logger_url}/metrics", log)


if __name__ == "__main__":
    raise SystemExit(main())
