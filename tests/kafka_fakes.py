"""In-memory stand-ins for a Kafka consumer, a dead-letter producer and a store writer, for the unit tests
of the Kafka loop (mlops_platform.kafka_loop) and the consumers built on it. The real ones are exercised
by tests/services/test_streaming.py and test_prediction_logger.py."""

from __future__ import annotations

import threading
import time
from collections import namedtuple

from kafka.structs import TopicPartition

from tests.conftest import eventually

Record = namedtuple("Record", "topic partition offset key value")


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
    """Keeps each batch it is given (after `transform`), or fails every write when `fail`."""

    def __init__(self, transform=list, fail: bool = False, result=len):
        self.transform, self.fail, self.result, self.batches = transform, fail, result, []

    def check(self):
        pass

    def write(self, messages):
        if self.fail:
            raise ConnectionError("store down")
        rows = self.transform(messages)
        self.batches.append(rows)
        return self.result(rows)

    def close(self):
        pass


class FakeKafka:
    """Polls return the scripted batches, then nothing; partitions are assigned on the first poll if `joins`."""

    def __init__(self, topic: str, batches=(), joins=True, listener=None):
        self.topic, self.batches, self.joins, self.listener = topic, list(batches), joins, listener
        self.assigned: set = set()
        self.commits, self.seeks, self.closed = [], [], False

    def poll(self, timeout_ms=0, max_records=None):
        if self.joins and not self.assigned:
            self.assigned = {TopicPartition(self.topic, p) for p in range(3)}
            self.listener.on_partitions_assigned(self.assigned)
        if self.batches:
            records = self.batches.pop(0)
            return {TopicPartition(self.topic, 0): records}
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


def script_kafka(monkeypatch, loop, topic: str) -> None:
    """Give `loop` fake Kafka clients: each new one polls the next batches of `loop.script` (a list of
    lists of batches); `loop.joins` says whether it gets partitions; `loop.kafka_clients` lists them."""
    from mlops_platform.kafka_loop import rebalance_listener

    loop.kafka_clients, loop.script, loop.joins = [], [], True
    loop.dlq = FakeDlq()

    def fake_kafka_consumer():
        client = FakeKafka(topic, loop.script.pop(0) if loop.script else [], joins=loop.joins,
                           listener=rebalance_listener(loop))
        loop.kafka_clients.append(client)
        return client

    monkeypatch.setattr(loop, "kafka_consumer", fake_kafka_consumer)


def run_until(loop, condition, what: str, timeout: float = 5.0):
    """Run the loop in a thread until `condition()` holds, then stop it."""
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        eventually(condition, timeout=timeout, interval=0.01, what=what)
    finally:
        loop.stop.set()
        thread.join(timeout=5)
