"""The stream consumer: driver statistics from Kafka into Feast's online store and the offline table.

`python -m data_pipeline.stream_consumer` runs until SIGTERM or SIGINT, as consumer group
`driver-stats-feature-writer` on the stats topic. Each loop polls a batch, validates every message
(data_pipeline.stream_messages), sends the invalid ones to the dead-letter topic, pushes the newest
statistics per driver online, inserts every valid one offline, and only then commits the batch's
offsets. Delivery is at least once and both writes are idempotent (see stream_writers), so a crash at
any point loses nothing and duplicates nothing.

The loop itself (retries with a growing pause, rewinding an abandoned batch, the watchdog that
replaces a stuck Kafka client, lag, a clean stop on a signal) is the platform's
(mlops_platform.kafka_loop.KafkaLoop); this module supplies what differs: topics, validation, the two
stores and the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from data_pipeline.stream_messages import DriverStats, validate
from data_pipeline.stream_metrics import ConsumerMetrics
from data_pipeline.stream_topics import ensure_topics
from data_pipeline.stream_writers import OfflineWriter, OnlineWriter
from mlops_platform.kafka_loop import KafkaLoop, run_as_service
from mlops_platform.messages import Rejection
from mlops_platform.settings import get_settings

SERVICE = "stream-consumer"
GROUP_ID = "driver-stats-feature-writer"


class StreamConsumer(KafkaLoop):
    """One member of group `driver-stats-feature-writer`: the Kafka loop with both feature stores."""

    service = SERVICE
    group_id = GROUP_ID
    connected_to = "Kafka, PostgreSQL and Redis"
    online: OnlineWriter | None = None
    offline: OfflineWriter | None = None

    def subscribed_topics(self) -> list[str]:
        return [self.settings.driver_stats_topic]

    def create_topics(self) -> None:
        ensure_topics(self.settings)

    def dead_letter_topic(self, topic: str) -> str:
        return self.settings.driver_stats_dlq_topic

    def split(self, records: Sequence[Any], now: datetime) -> tuple[list[DriverStats], list[tuple[Any, Rejection]]]:
        valid: list[DriverStats] = []
        rejected: list[tuple[Any, Rejection]] = []
        for record in records:
            result = validate(record.value, record.key, now)
            if isinstance(result, Rejection):
                rejected.append((record, result))
            else:
                valid.append(result)
        return valid, rejected

    def open_writers(self) -> None:
        """Both stores; raises when one does not answer."""
        if self.offline is None:
            self.offline = OfflineWriter(self.settings)
        self.offline.check()
        if self.online is None:
            self.online = OnlineWriter(self.settings)
        self.online.check()

    def write(self, valid: list[DriverStats]) -> dict[str, Any]:
        """Online first (the newest per driver), then offline; freshness is measured when the push returns."""
        pushed = self.stage("online", self.online.write, valid)
        visible = time.time()
        for message in valid:
            self.metrics.freshness.observe(max(0.0, visible - message.produced_at.timestamp()))
        inserted = self.stage("offline", self.offline.write, valid)
        return {"pushed": pushed, "inserted": inserted}

    def count_written(self, valid: list[DriverStats], written: dict[str, Any]) -> None:
        self.metrics.pushed.inc(written["pushed"])
        self.metrics.offline_rows.inc(written["inserted"])

    def close_writers(self) -> None:
        if self.offline is not None:
            self.offline.close()


def main() -> int:
    settings = get_settings()
    return run_as_service(StreamConsumer, ConsumerMetrics(), settings.stream_consumer_port,
                          f"{settings.stream_consumer_url}/metrics")


if __name__ == "__main__":
    raise SystemExit(main())
