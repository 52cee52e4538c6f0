"""The driver-stats topics, created with the partition counts the stream pipeline relies on.

The stats topic has 3 partitions (one consumer each at most); its dead-letter topic 1, so that its
records read back in the order they were refused.
"""

from __future__ import annotations

from mlops_platform.kafka_topics import ensure_topics as ensure_kafka_topics
from mlops_platform.settings import Settings

STATS_PARTITIONS = 3
DLQ_PARTITIONS = 1


def wanted_topics(settings: Settings) -> dict[str, int]:
    return {settings.driver_stats_topic: STATS_PARTITIONS, settings.driver_stats_dlq_topic: DLQ_PARTITIONS}


def ensure_topics(settings: Settings, timeout_ms: int = 10_000) -> dict[str, int]:
    """Create the missing topics; returns each topic's partition count as the broker reports it."""
    return ensure_kafka_topics(settings.kafka_bootstrap_servers, wanted_topics(settings), "driver-stats-topics",
                               timeout_ms)
