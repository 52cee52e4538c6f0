"""The Prometheus metrics every consumer built on the Kafka loop (mlops_platform.kafka_loop) exports.

Each consumer exports them under its own prefix and adds its own (what it read and wrote). Every label
value known in advance is exported at 0 from the start, so dashboards and alerts see "none" rather than
"no data".
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Why the watchdog replaces a Kafka client: never assigned partitions, or assigned but not moving.
NO_ASSIGNMENT, STALLED = "no_assignment", "stalled"
RESTART_REASONS = (NO_ASSIGNMENT, STALLED)


class KafkaLoopMetrics:
    """Refusals, dead letters, batches, watchdog restarts, write failures and times, lag, last success and
    readiness, named `<prefix><metric>`; `stages` are the consumer's write stages, `rejected_labels` the
    labels of its refusals (a subset of "topic" and "reason")."""

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
        self.rejected_labels = rejected_labels
        for stage in stages:
            self.batch_write.labels(stage)
            self.failures.labels(stage)
        self.batch_write.labels("total")
        for reason in RESTART_REASONS:
            self.restarts.labels(reason)

    def count_rejection(self, topic: str, reason_class: str) -> None:
        """One refused message, labelled by what this consumer's refusals are labelled by."""
        values = {"topic": topic, "reason": reason_class}
        self.rejected.labels(*(values[label] for label in self.rejected_labels)).inc()
