"""The prediction logger: online predictions and their outcomes from Kafka into PostgreSQL.

`python -m model_serving.prediction_logger` runs until SIGTERM or SIGINT, as consumer group
`prediction-logger` on the predictions and ground-truth topics, and on the projects' topics
(MODEL_PREDICTIONS_TOPIC, MODEL_GROUND_TRUTH_TOPIC -> `model_prediction_log`, `model_ground_truth`, validated
by model_serving.model_messages). Each loop polls a batch, validates
every message (model_serving.prediction_messages), sends the invalid ones with their reason to
`<topic>_dlq`, inserts the valid ones into `prediction_log` and `ground_truth` in one transaction
(ON CONFLICT DO NOTHING), and only then commits the batch's offsets. Delivery is at least once and
the inserts are idempotent, so a crash loses nothing and a redelivery adds nothing. An outcome that
arrives before its prediction is stored all the same; `labeled_predictions` joins them once both exist.

The loop itself (retries with a growing pause, rewinding an abandoned batch, the watchdog that
replaces a stuck Kafka client, lag, a clean stop on a signal) is the platform's
(mlops_platform.kafka_loop.KafkaLoop); this module supplies what differs: topics, validation, the
store and the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlops_platform.kafka_loop import KafkaLoop, run_as_service
from mlops_platform.kafka_topics import ensure_topics as ensure_kafka_topics
from mlops_platform.messages import Rejection
from mlops_platform.postgres import PostgresBatchWriter
from mlops_platform.settings import Settings, get_settings
from model_serving.model_messages import (
    ModelGroundTruth,
    ModelPrediction,
    validate_model_ground_truth,
    validate_model_prediction,
)
from model_serving.prediction_logger_metrics import LoggerMetrics
from model_serving.prediction_messages import (
    GroundTruth,
    Prediction,
    dlq_topic,
    validate_ground_truth,
    validate_prediction,
)
from model_serving.prediction_store import (
    GROUND_TRUTH_TABLE,
    MODEL_GROUND_TRUTH_TABLE,
    MODEL_PREDICTIONS_TABLE,
    PREDICTIONS_TABLE,
    ensure_schema,
    insert_ground_truth,
    insert_model_ground_truth,
    insert_model_predictions,
    insert_predictions,
)

SERVICE = "prediction-logger"
GROUP_ID = "prediction-logger"
# As the stream pipeline's: one consumer per partition at most; one dead-letter partition keeps refusals in order.
TOPIC_PARTITIONS = 3
DLQ_PARTITIONS = 1


def topics(settings: Settings) -> tuple[str, str, str, str]:
    """The topics the logger reads: the driver predictions and ground truth, then the projects' ones."""
    return (settings.predictions_topic, settings.ground_truth_topic, settings.model_predictions_topic,
            settings.model_ground_truth_topic)


def ensure_topics(settings: Settings) -> dict[str, int]:
    """Both topics and their dead-letter topics; returns each one's partition count as the broker reports it."""
    wanted: dict[str, int] = {}
    for topic in topics(settings):
        wanted.update({topic: TOPIC_PARTITIONS, dlq_topic(topic): DLQ_PARTITIONS})
    return ensure_kafka_topics(settings.kafka_bootstrap_servers, wanted, f"{GROUP_ID}-topics")


@dataclass
class ValidBatch:
    """The valid messages of one polled batch, by kind."""

    predictions: list[Prediction] = field(default_factory=list)
    ground_truth: list[GroundTruth] = field(default_factory=list)
    model_predictions: list[ModelPrediction] = field(default_factory=list)
    model_ground_truth: list[ModelGroundTruth] = field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.predictions) + len(self.ground_truth) + len(self.model_predictions)
                + len(self.model_ground_truth))

    def offered(self) -> dict[str, int]:
        """How many rows each table was offered."""
        return {PREDICTIONS_TABLE: len(self.predictions), GROUND_TRUTH_TABLE: len(self.ground_truth),
                MODEL_PREDICTIONS_TABLE: len(self.model_predictions),
                MODEL_GROUND_TRUTH_TABLE: len(self.model_ground_truth)}


def split(records: Sequence[Any], settings: Settings,
          now: datetime | None = None) -> tuple[ValidBatch, list[tuple[Any, Rejection]]]:
    """Validate each record by its topic: (the valid messages, the refused records with their reason)."""
    now = now or datetime.now(UTC)
    valid = ValidBatch()
    rejected: list[tuple[Any, Rejection]] = []
    by_topic = {settings.predictions_topic: (validate_prediction, valid.predictions),
                settings.ground_truth_topic: (validate_ground_truth, valid.ground_truth),
                settings.model_predictions_topic: (validate_model_prediction, valid.model_predictions),
                settings.model_ground_truth_topic: (validate_model_ground_truth, valid.model_ground_truth)}
    for record in records:
        if record.topic not in by_topic:
            raise ValueError(f"expected a record of {topics(settings)}, got one of topic {record.topic!r}")
        validate, kept = by_topic[record.topic]
        result: Any = validate(record.value, now)
        if isinstance(result, Rejection):
            rejected.append((record, result))
        else:
            kept.append(result)
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
            MODEL_PREDICTIONS_TABLE: insert_model_predictions(cur, [p.row() for p in batch.model_predictions]),
            MODEL_GROUND_TRUTH_TABLE: insert_model_ground_truth(cur, [g.row() for g in batch.model_ground_truth]),
        }

    def nothing_new(self) -> dict[str, int]:
        return dict.fromkeys(ValidBatch().offered(), 0)


class PredictionLogger(KafkaLoop):
    """One member of group `prediction-logger`: the Kafka loop with the prediction store."""

    service = SERVICE
    group_id = GROUP_ID
    connected_to = "Kafka and PostgreSQL"
    store: StoreWriter | None = None

    def subscribed_topics(self) -> list[str]:
        return list(topics(self.settings))

    def create_topics(self) -> None:
        ensure_topics(self.settings)

    def dead_letter_topic(self, topic: str) -> str:
        return dlq_topic(topic)

    def split(self, records: Sequence[Any], now: datetime) -> tuple[ValidBatch, list[tuple[Any, Rejection]]]:
        return split(records, self.settings, now)

    def open_writers(self) -> None:
        """The prediction store; raises when PostgreSQL does not answer."""
        if self.store is None:
            self.store = StoreWriter(self.settings)
        self.store.check()

    def write(self, valid: ValidBatch) -> dict[str, Any]:
        return {"inserted": self.stage("store", self.store.write, valid)}

    def count_consumed(self, records: Sequence[Any]) -> None:
        for record in records:
            self.metrics.consumed.labels(record.topic).inc()

    def count_written(self, valid: ValidBatch, written: dict[str, Any]) -> None:
        offered = valid.offered()
        for table, count in written["inserted"].items():
            self.metrics.stored.labels(table).inc(count)
            self.metrics.duplicates.labels(table).inc(offered[table] - count)

    def close_writers(self) -> None:
        if self.store is not None:
            self.store.close()


def main() -> int:
    settings = get_settings()
    return run_as_service(PredictionLogger, LoggerMetrics(topics=topics(settings)),
                          settings.prediction_logger_port, f"{settings.prediction_logger_url}/metrics")


if __name__ == "__main__":
    raise SystemExit(main())
