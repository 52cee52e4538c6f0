"""The stream consumer's batch logic and watchdog, against in-memory stand-ins for Kafka and the stores."""

from __future__ import annotations

import logging
import threading
import time
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import pytest
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from data_pipeline import stream_consumer as sc
from data_pipeline import stream_messages as sm
from data_pipeline.stream_metrics import ConsumerMetrics
from data_pipeline.stream_writers import newest_per_driver
from mlops_platform.settings import load_settings

Record = namedtuple("Record", "topic partition offset key value")
TOPIC = "driver_stats"


def valid(driver_id: int, offset: int, partition: int = 0, seconds: int = 0, conv: float = 0.5) -> Record:
    at = datetime.now(UTC) - timedelta(minutes=5) + timedelta(seconds=seconds)
    stats = sm.DriverStats(driver_id, at, at, conv, 0.5, 3, datetime.now(UTC))
    return Record(TOPIC, partition, offset, sm.message_key(driver_id), sm.encode(stats))


def broken(driver_id: int, offset: int, partition: int = 0) -> Record:
    return Record(TOPIC, partition, offset, sm.message_key(driver_id), b'{"driver_id": ')


class Done:
    def get(self, timeout=None):
        return None


class FakeDlq:
    def __init__(self):
        self.sent = []

    def send(self, topic, value, key):
        self.sent.append((topic, key, value))
        return Done()

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


class FakeWriter:
    def __init__(self, newest_only: bool, fail: bool = False):
        self.newest_only, self.fail, self.batches = newest_only, fail, []

    def check(self):
        pass

    def write(self, messages):
        if self.fail:
            raise ConnectionError("store down")
        rows = newest_per_driver(messages) if self.newest_only else list(messages)
        self.batches.append(rows)
        return len(rows)

    def close(self):
        pass


class FakeKafka:
    """Polls return the scripted batches, then nothing; partitions are assigned on the first poll if `joins`."""

    def __init__(self, batches=(), joins=True, listener=None):
        self.batches, self.joins, self.listener = list(batches), joins, listener
        self.assigned: set = set()
        self.commits, self.seeks, self.closed = [], [], False

    def poll(self, timeout_ms=0, max_records=None):
        if self.joins and not self.assigned:
            self.assigned = {TopicPartition(TOPIC, p) for p in range(3)}
            self.listener.on_partitions_assigned(self.assigned)
        if self.batches:
            records = self.batches.pop(0)
            return {TopicPartition(TOPIC, 0): records}
        time.sleep(timeout_ms / 1000)
        return {}

    def commit(self, offsets):
        self.commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})

    def assignment(self):
        return set(self.assigned)

    def seek(self, tp, offset):
        self.seeks.append((tp.partition, offset))

    def end_offsets(self, partitions, timeout_ms=None):
        return dict.fromkeys(partitions, 0)

    def position(self, tp, timeout_ms=None):
        return 0

    def close(self, autocommit=True, timeout_ms=None):
        self.closed = True


@pytest.fixture
def consumer(monkeypatch):
    settings = load_settings({"STREAM_CONSUMER_PORT": "1", "POSTGRES_PASSWORD": "x", "REDIS_PASSWORD": "x",
                              "AIRFLOW_ADMIN_PASSWORD": "x", "AIRFLOW_FERNET_KEY": "x", "AIRFLOW_SECRET_KEY": "x"})
    metrics = ConsumerMetrics(CollectorRegistry())
    instance = sc.StreamConsumer(settings, metrics, threading.Event())
    instance.online, instance.offline, instance.dlq = FakeWriter(True), FakeWriter(False), FakeDlq()
    instance.kafka_clients = []

    def fake_kafka_consumer():
        client = FakeKafka(instance.script.pop(0) if instance.script else [], joins=instance.joins,
                           listener=sc._rebalance_listener(instance))
        instance.kafka_clients.append(client)
        return client

    instance.script, instance.joins = [], True
    monkeypatch.setattr(instance, "_kafka_consumer", fake_kafka_consumer)
    monkeypatch.setattr(sc, "ensure_topics", lambda settings: {})
    return instance


def run_until(instance, condition, timeout=5.0):
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.01)
    instance.stop.set()
    thread.join(timeout=5)
    assert condition()


def test_a_batch_goes_to_both_stores_and_the_dead_letters_before_its_offsets_are_committed(consumer):
    batch = [valid(1001, 10, seconds=2, conv=0.25), valid(1001, 11, seconds=1, conv=0.75), broken(1002, 12),
             valid(1003, 13)]
    consumer.script = [[batch]]
    run_until(consumer, lambda: consumer.kafka_clients and consumer.kafka_clients[0].commits)

    (online,) = consumer.online.batches
    assert sorted((m.driver_id, m.conv_rate) for m in online) == [(1001, 0.25), (1003, 0.5)]  # newest, not last
    assert len(consumer.offline.batches[0]) == 3
    (dead,) = consumer.dlq.sent
    assert dead[0] == consumer.settings.driver_stats_dlq_topic and b'"offset": 12' in dead[2]
    assert consumer.kafka_clients[0].commits == [{0: 14}]
    assert consumer.metrics.consumed._value.get() == 4
    assert consumer.metrics.rejected.labels(sm.UNPARSEABLE)._value.get() == 1
    assert consumer.metrics.freshness._sum.get() > 0


def test_a_failed_write_commits_nothing_and_rewinds_the_batch(consumer, monkeypatch):
    monkeypatch.setattr(sc, "RETRY_MIN_SECONDS", 0.01)
    consumer.offline.fail = True
    consumer.script = [[[valid(1001, 5), valid(1002, 6)]]]
    run_until(consumer, lambda: consumer.kafka_clients and consumer.kafka_clients[0].seeks)

    client = consumer.kafka_clients[0]
    assert client.commits == [] and client.seeks == [(0, 5)]
    assert consumer.metrics.failures.labels("offline")._value.get() == 1
    assert consumer.metrics.ready._value.get() == 0


def test_the_watchdog_replaces_a_client_that_never_gets_partitions(consumer, monkeypatch):
    monkeypatch.setattr(sc, "REJOIN_TIMEOUT_SECONDS", 0.2)
    consumer.joins = False
    run_until(consumer, lambda: len(consumer.kafka_clients) >= 2)

    assert consumer.kafka_clients[0].closed
    assert consumer.metrics.restarts.labels("no_assignment")._value.get() >= 1


def test_kafka_errors_while_the_clients_close_are_warnings(consumer, caplog):
    kafka_log = logging.getLogger("kafka.coordinator")

    class RefusedLeave(FakeKafka):
        def close(self, autocommit=True, timeout_ms=None):
            super().close(autocommit, timeout_ms)
            # as kafka-python's IO thread logs a LeaveGroup the broker refused (the member was dropped)
            io_thread = threading.Thread(target=kafka_log.error, args=("LeaveGroup failed: UnknownMemberIdError",))
            io_thread.start()
            io_thread.join()

    consumer.consumer = RefusedLeave()
    consumer.close()
    kafka_log.error("an error outside a close")

    during, after = [record for record in caplog.records if record.name == "kafka.coordinator"]
    assert (during.levelname, during.kafka_level) == ("WARNING", "ERROR")
    assert after.levelname == "ERROR"
