"""The prediction logger's Prometheus metrics: what it read, stored, refused, and how far behind it is.

All names start with `prediction_logger_`. The attribute names match the stream consumer's metrics
(data_pipeline.stream_metrics), whose consumer loop the logger reuses.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from data_pipeline.stream_messages import REASON_CLASSES
from data_pipeline.stream_metrics import LATENCY_BUCKETS, RESTART_REASONS
from model_serving.prediction_store import GROUND_TRUTH_TABLE, PREDICTIONS_TABLE

PREFIX = "prediction_logger_"
READY = PREFIX + "ready"
CONSUMED = PREFIX + "messages_consumed_total"
LAG = PREFIX + "lag"
WRITE_STAGES = ("store", "dead_letter", "commit")
TABLES = (PREDICTIONS_TABLE, GROUND_TRUTH_TABLE)


class LoggerMetrics:
    """One set of the logger's metrics, registered in `registry` (the process default unless given);
    label values known in advance (stages, tables, the `topics` read, reasons) are exported at 0."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, topics: tuple[str, ...] = ()) -> None:
        self.consumed = Counter(PREFIX + "messages_consumed", "Messages read, by topic.", ["topic"],
                                registry=registry)
        self.stored = Counter(PREFIX + "rows_stored", "New rows written, by table.", ["table"], registry=registry)
        self.duplicates = Counter(PREFIX + "duplicates", "Valid messages whose row was already stored (redelivered "
                                  "or sent twice), by table.", ["table"], registry=registry)
        self.rejected = Counter(PREFIX + "messages_rejected", "Messages that broke the contract, by topic and "
                                "reason class.", ["topic", "reason"], registry=registry)
        self.dlq_sends = Counter(PREFIX + "dlq_sends", "Records sent to the dead-letter topics.", registry=registry)
        self.batches = Counter(PREFIX + "batches_committed", "Batches written and committed.", registry=registry)
        self.restarts = Counter(PREFIX + "kafka_client_restarts", "Kafka clients replaced by the watchdog, by reason.",
                                ["reason"], registry=registry)
        self.failures = Counter(PREFIX + "batch_failures", "Batches abandoned by a failed write, by stage; they "
                                "are read again.", ["stage"], registry=registry)
        self.batch_write = Histogram(PREFIX + "batch_write_seconds", "Time to write one batch, by stage.",
                                     ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.lag = Gauge(LAG, "Records behind the end of the partition (end offset minus position).",
                         ["topic", "partition"], registry=registry)
        self.last_success = Gauge(PREFIX + "last_success_timestamp_seconds", "Unix time of the last committed batch.",
                                  registry=registry)
        self.ready = Gauge(READY, "1 once connected to Kafka and PostgreSQL and the last batch succeeded.",
                           registry=registry)
        for stage in WRITE_STAGES:
            self.batch_write.labels(stage)
            self.failures.labels(stage)
        self.batch_write.labels("total")
        for table in TABLES:
            self.stored.labels(table)
            self.duplicates.labels(table)
        for topic in topics:
            self.consumed.labels(topic)
            for reason in REASON_CLASSES:
                self.rejected.labels(topic, reason)
        for reason in RESTART_REASONS:
            self.restarts.labels(reason)
