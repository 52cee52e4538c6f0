"""Reading a dead-letter topic back (one partition, so records read in the order they were refused)."""

from __future__ import annotations

import json


def end_offset(settings, dlq_topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    client = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        tp = TopicPartition(dlq_topic, 0)
        return client.end_offsets([tp])[tp]
    finally:
        client.close()


def dead_letters(settings, dlq_topic: str, since: int, keys: set[str]) -> list[dict]:
    """Dead-letter records of `dlq_topic` from offset `since` whose key is one of `keys`."""
    from kafka import KafkaConsumer, TopicPartition

    client = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    try:
        tp = TopicPartition(dlq_topic, 0)
        client.assign([tp])
        client.seek(tp, since)
        end = client.end_offsets([tp])[tp]
        found = []
        while client.position(tp) < end:
            for record in client.poll(timeout_ms=1000).get(tp, []):
                entry = json.loads(record.value)
                if entry["key"] in keys:
                    found.append(entry)
        return found
    finally:
        client.close()
