"""The prediction logger's Prometheus metrics: what it read, stored, refused, and how far behind it is.

All names start with `prediction_logger_`: the Kafka loop's own (mlops_platform.kafka_loop_metrics) and
the logger's below.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from mlops_platform.kafka_loop_metrics import KafkaLoopMetrics
from mlops_platform.messages import REASON_CLASSES
from model_serving.prediction_store import (
    GROUND_TRUTH_TABLE,
    MODEL_GROUND_TRUTH_TABLE,
    MODEL_PREDICTIONS_TABLE,
    PREDICTIONS_TABLE,
)

PREFIX = "prediction_logger_"
READY = PREFIX + "ready"
WRITE_STAGES = ("store", "dead_letter", "commit")
TABLES = (PREDICTIONS_TABLE, GROUND_TRUTH_TABLE, MODEL_PREDICTIONS_TABLE, MODEL_GROUND_TRUTH_TABLE)


class LoggerMetrics(KafkaLoopMetrics):
    """One set of the logger's metrics, registered in `registry` (the process default unless given);
    label values known in advance (stages, tables, the `topics` read, reasons) are exported at 0."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, topics: tuple[str, ...] = ()) -> None:
        super().__init__(PREFIX, registry, WRITE_STAGES, ("topic", "reason"),
                         "1 once connected to Kafka and PostgreSQL and the last batch succeeded.")
        self.consumed = Counter(PREFIX + "messages_consumed", "Messages read, by topic.", ["topic"],
                                registry=registry)
        self.stored = Counter(PREFIX + "rows_stored", "New rows written, by table.", ["table"], registry=registry)
        self.duplicates = Counter(PREFIX + "duplicates", "Valid messages whose row was already stored (redelivered "
                                  "or sent twice), by table.", ["table"], registry=registry)
        for table in TABLES:
            self.stored.labels(table)
            self.duplicates.labels(table)
        for topic in topics:
            self.consumed.labels(topic)
            for reason in REASON_CLASSES:
                self.rejected.labels(topic, reason)
