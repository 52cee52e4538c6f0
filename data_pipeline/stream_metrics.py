"""The stream consumer's Prometheus metrics: what it read, wrote, refused, how late and how far behind.

All names start with `driver_stats_consumer_`. Every label value known in advance is exported at 0 from
the start, so dashboards and alerts see "none" rather than "no data". Freshness is measured from the producer's
`produced_at` to the moment the online push returned, i.e. when a reader of Redis can see the value.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from data_pipeline.stream_messages import REASON_CLASSES

PREFIX = "driver_stats_consumer_"
READY = PREFIX + "ready"

FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WRITE_STAGES = ("online", "offline", "dead_letter", "commit")
# Why the watchdog replaces a Kafka client: never assigned partitions, or assigned but not moving.
NO_ASSIGNMENT, STALLED = "no_assignment", "stalled"
RESTART_REASONS = (NO_ASSIGNMENT, STALLED)


class KafkaLoopMetrics:
    """What every consumer built on the stream consumer's loop exports under its own prefix: refusals,
    dead letters, batches, watchdog restarts, write failures and times, lag, last success, readiness."""

    def __init__(self, prefix: str, registry: CollectorRegistry, stages: tuple[str, ...],
                 rejected_labels: tuple[str, ...], ready_help: str) -> None:
        by = " and ".join("reason class" if label == "reason" else label for label in rejected_labels)
        self.rejected = Counter(prefix + "messages_rejected", f"Messages that broke the contract, by {by}.",
                                list(rejected_labels), registry=registry)
        self.dlq_sends = Counter(prefix + "dlq_sends", "Records sent to dead-letter topics.", registry=registry)
        self.batches = Counter(prefix + "batches_committed", "Batches written and committed.", registry=registry)
        self.restarts = Counter(prefix + "kafka_client_restarts", "Kafka clients replaced by the watchdog, by "
                                "reason.", ["reason"], registry=registry)
        self.failures = Counter(prefix + "batch_failures", "Batches abandoned by a failed write, by stage; they "
                                "are read again.", ["stage"], registry=registry)
        self.batch_write = Histogram(prefix + "batch_write_seconds", "Time to write one batch, by stage.",
                                     ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.lag = Gauge(prefix + "lag", "Records behind the end of the partition (end offset minus position).",
                         ["topic", "partition"], registry=registry)
        self.last_success = Gauge(prefix + "last_success_timestamp_seconds", "Unix time of the last committed "
                                  "batch.", registry=registry)
        self.ready = Gauge(prefix + "ready", ready_help, registry=registry)
        for stage in stages:
            self.batch_write.labels(stage)
            self.failures.labels(stage)
        self.batch_write.labels("total")
        for reason in RESTART_REASONS:
            self.restarts.labels(reason)


class ConsumerMetrics(KafkaLoopMetrics):
    """One set of the consumer's metrics, registered in `registry` (the process default unless given)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(PREFIX, registry, WRITE_STAGES, ("reason",),
                         "1 once connected to Kafka and both stores and the last batch succeeded.")
        self.consumed = Counter(PREFIX + "messages_consumed", "Messages read from the stats topic.",
                                registry=registry)
        self.pushed = Counter(PREFIX + "messages_pushed", "Rows pushed to the online store (newest per driver "
                              "of each batch).", registry=registry)
        self.offline_rows = Counter(PREFIX + "offline_rows_inserted", "New rows in the offline table "
                                    "(replays insert nothing).", registry=registry)
        self.freshness = Histogram(PREFIX + "freshness_seconds", "From produced_at to visible in the online store.",
                                   buckets=FRESHNESS_BUCKETS, registry=registry)
        for reason in REASON_CLASSES:
            self.rejected.labels(reason)
