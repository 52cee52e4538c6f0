"""The stream consumer's Prometheus metrics: what it read, wrote, refused, how late and how far behind.

All names start with `driver_stats_consumer_`: the Kafka loop's own (mlops_platform.kafka_loop_metrics)
and the consumer's below. Every label value known in advance is exported at 0 from the start, so dashboards
and alerts see "none" rather than "no data". Freshness is measured from the producer's
`produced_at` to the moment the online push returned, i.e. when a reader of Redis can see the value.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from mlops_platform.kafka_loop_metrics import KafkaLoopMetrics
from mlops_platform.messages import REASON_CLASSES

PREFIX = "driver_stats_consumer_"
READY = PREFIX + "ready"

FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
WRITE_STAGES = ("online", "offline", "dead_letter", "commit")


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
