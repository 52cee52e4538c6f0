"""The stream consumer's batch: both stores, then the dead letters, then the commit, against in-memory
stand-ins for Kafka and the stores (the loop itself: tests/unit/test_kafka_loop.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from data_pipeline import stream_consumer as sc
from data_pipeline import stream_messages as sm
from data_pipeline.stream_metrics import ConsumerMetrics
from data_pipeline.stream_writers import newest_per_driver
from mlops_platform import messages
from tests.conftest import build_settings
from tests.kafka_fakes import FakeWriter, Record, run_until, script_kafka

TOPIC = "driver_stats"


def valid(driver_id: int, offset: int, partition: int = 0, seconds: int = 0, conv: float = 0.5) -> Record:
    at = datetime.now(UTC) - timedelta(minutes=5) + timedelta(seconds=seconds)
    stats = sm.DriverStats(driver_id, at, at, conv, 0.5, 3, datetime.now(UTC))
    return Record(TOPIC, partition, offset, sm.message_key(driver_id), sm.encode(stats))


def broken(driver_id: int, offset: int, partition: int = 0) -> Record:
    return Record(TOPIC, partition, offset, sm.message_key(driver_id), b'{"driver_id": ')


@pytest.fixture
def consumer(monkeypatch):
    instance = sc.StreamConsumer(build_settings(STREAM_CONSUMER_PORT="1"), ConsumerMetrics(CollectorRegistry()),
                                 threading.Event())
    instance.online, instance.offline = FakeWriter(newest_per_driver), FakeWriter()
    script_kafka(monkeypatch, instance, TOPIC)
    monkeypatch.setattr(sc, "ensure_topics", lambda settings: {})
    return instance


def test_a_batch_goes_to_both_stores_and_the_dead_letters_before_its_offsets_are_committed(consumer):
    batch = [valid(1001, 10, seconds=2, conv=0.25), valid(1001, 11, seconds=1, conv=0.75), broken(1002, 12),
             valid(1003, 13)]
    consumer.script = [[batch]]
    run_until(consumer, lambda: consumer.kafka_clients and consumer.kafka_clients[0].commits, "a commit")

    (online,) = consumer.online.batches
    assert sorted((m.driver_id, m.conv_rate) for m in online) == [(1001, 0.25), (1003, 0.5)]  # newest, not last
    assert len(consumer.offline.batches[0]) == 3
    (dead,) = consumer.dlq.sent
    assert dead[0] == consumer.settings.driver_stats_dlq_topic and b'"offset": 12' in dead[2]
    assert consumer.kafka_clients[0].commits == [{0: 14}]
    assert consumer.metrics.consumed._value.get() == 4
    assert consumer.metrics.rejected.labels(messages.UNPARSEABLE)._value.get() == 1
    assert consumer.metrics.freshness._sum.get() > 0
    assert consumer.metrics.pushed._value.get() == 2
    assert consumer.metrics.offline_rows._value.get() == 3


def test_a_failed_write_commits_nothing_and_rewinds_the_batch(consumer, monkeypatch):
    monkeypatch.setattr("mlops_platform.kafka_loop.RETRY_MIN_SECONDS", 0.01)
    consumer.offline.fail = True
    consumer.script = [[[valid(1001, 5), valid(1002, 6)]]]
    run_until(consumer, lambda: consumer.kafka_clients and consumer.kafka_clients[0].seeks, "a rewind")

    client = consumer.kafka_clients[0]
    assert client.commits == [] and client.seeks == [(0, 5)]
    assert consumer.metrics.failures.labels("offline")._value.get() == 1
    assert consumer.metrics.ready._value.get() == 0
