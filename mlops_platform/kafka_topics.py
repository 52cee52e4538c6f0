"""Kafka topics created with the partition counts their readers rely on.

The broker would auto-create a topic on first use, but with its default partition count. A stream
topic usually wants several partitions (one consumer each at most), a dead-letter topic one, so that
its records read back in the order they were refused.
"""

from __future__ import annotations

import logging

TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code

log = logging.getLogger(__name__)


def ensure_topics(bootstrap_servers: str, wanted: dict[str, int], client_id: str,
                  timeout_ms: int = 10_000) -> dict[str, int]:
    """Create the missing topics of `wanted` (name -> partitions); returns each topic's partition count as
    the broker reports it, and warns about one that differs from what was wanted."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms,
                             client_id=client_id)
    try:
        brokers = len(admin.describe_cluster()["brokers"])
        missing = {name: count for name, count in wanted.items() if name not in set(admin.list_topics())}
        if missing:
            replication = min(3, brokers)
            response = admin.create_topics(
                {name: {"num_partitions": count, "replication_factor": replication} for name, count in missing.items()},
                timeout_ms=timeout_ms, raise_errors=False, wait_for_metadata=True)
            for topic in response["topics"]:
                if topic["error_code"] not in (0, TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(f"creating topic {topic['name']!r} failed: expected error code 0, "
                                       f"got {topic['error_code']} ({topic.get('error_message')})")
            log.info("topics created", extra={"topics": sorted(missing), "replication_factor": replication})
        found = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))}
    finally:
        admin.close()
    for name, count in wanted.items():
        if found.get(name) != count:
            log.warning("topic has an unexpected partition count",
                        extra={"topic": name, "expected_partitions": count, "partitions": found.get(name)})
    return found
