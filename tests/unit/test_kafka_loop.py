"""The Kafka loop's own behaviour, through the smallest consumer built on it: dead letters, the commit,
an abandoned batch, the watchdog and a quiet close (in-memory stand-ins for Kafka and the store)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime

import pytest
from kafka.errors import CommitFailedError, KafkaTimeoutError
from prometheus_client import CollectorRegistry, Counter

from mlops_platform import kafka_loop, messages
from mlops_platform.kafka_loop_metrics import KafkaLoopMetrics
from tests.conftest import build_settings
from tests.kafka_fakes import FakeKafka, FakeWriter, Record, run_until, script_kafka

TOPIC = "numbers"


class NumberLoop(kafka_loop.KafkaLoop):
    """Reads integers from one topic into a store; anything else goes to `<topic>.refused`."""

    service = "number-loop"
    group_id = "numbers"
    store = None

    def subscribed_topics(self):
        return [TOPIC]

    def create_topics(self):
        pass

    def dead_letter_topic(self, topic):
        return f"{topic}.refused"

    def split(self, records, now: datetime):
        valid, rejected = [], []
        for record in records:
            result = messages.checked(lambda value=record.value: messages.integer(
                messages.json_object(value, ("n",)), "n", 0, 9))
            if isinstance(result, messages.Rejection):
                rejected.append((record, result))
            else:
                valid.append(result)
        return valid, rejected

    def open_writers(self):
        pass

    def write(self, valid):
        return {"stored": self.stage("store", self.store.write, valid)}

    def count_written(self, valid, written):
        self.metrics.stored.inc(written["stored"])


class NumberMetrics(KafkaLoopMetrics):
    def __init__(self, registry):
        super().__init__("numbers_", registry, ("store", "dead_letter", "commit"), ("topic", "reason"), "ready")
        self.consumed = Counter("numbers_consumed", "Read.", registry=registry)
        self.stored = Counter("numbers_stored", "Stored.", registry=registry)


def number(n: int, offset: int, partition: int = 0) -> Record:
    return Record(TOPIC, partition, offset, None, b'{"n": %d}' % n)


def broken(offset: int) -> Record:
    return Record(TOPIC, 0, offset, None, b'{"n": ')


@pytest.fixture
def loop(monkeypatch):
    monkeypatch.setattr(kafka_loop, "RETRY_MIN_SECONDS", 0.01)
    instance = NumberLoop(build_settings(), NumberMetrics(CollectorRegistry()), threading.Event())
    instance.store = FakeWriter()
    script_kafka(monkeypatch, instance, TOPIC)
    return instance


def committed(loop):
    return loop.kafka_clients and loop.kafka_clients[0].commits


def test_valid_messages_are_written_refused_ones_dead_lettered_then_the_batch_committed(loop):
    loop.script = [[[number(3, 7), broken(8), number(12, 9)]]]
    run_until(loop, lambda: committed(loop), "a commit")

    assert loop.store.batches == [[3]]
    assert [(topic, record_key) for topic, record_key, _ in loop.dlq.sent] == [(f"{TOPIC}.refused", None)] * 2
    assert loop.kafka_clients[0].commits == [{0: 10}]
    rejected = loop.metrics.rejected
    assert rejected.labels(TOPIC, messages.UNPARSEABLE)._value.get() == 1
    assert rejected.labels(TOPIC, messages.OUT_OF_RANGE)._value.get() == 1
    assert (loop.metrics.consumed._value.get(), loop.metrics.stored._value.get()) == (3, 1)
    assert (loop.metrics.dlq_sends._value.get(), loop.metrics.batches._value.get()) == (2, 1)
    assert loop.metrics.ready._value.get() == 1


def test_a_failed_write_commits_nothing_rewinds_and_reads_the_batch_again(loop):
    loop.store.fail = True
    loop.script = [[[number(1, 5), number(2, 6)]]]
    run_until(loop, lambda: loop.kafka_clients and loop.kafka_clients[0].seeks, "a rewind")

    assert loop.kafka_clients[0].commits == [] and loop.kafka_clients[0].seeks[0] == (0, 5)
    assert loop.metrics.failures.labels("store")._value.get() >= 1
    assert loop.metrics.ready._value.get() == 0
    assert loop.metrics.batches._value.get() == 0


def test_a_commit_refused_after_a_rebalance_is_left_to_the_new_owner(loop, monkeypatch, caplog):
    attempts = []

    def refuse(self, offsets):
        attempts.append(offsets)
        raise CommitFailedError("the group rebalanced")

    monkeypatch.setattr(FakeKafka, "commit", refuse)
    loop.script = [[[number(1, 5)]]]
    run_until(loop, lambda: attempts, "a commit attempt")

    assert loop.kafka_clients[0].seeks == []  # not abandoned: the new owner reads it again
    assert any(r.message.startswith("commit refused after a rebalance") for r in caplog.records)
    assert loop.metrics.failures.labels("commit")._value.get() == 0
    assert loop.metrics.batches._value.get() == 0


def test_any_other_commit_error_abandons_the_batch(loop, monkeypatch):
    def time_out(self, offsets):
        raise KafkaTimeoutError("no answer from the coordinator")

    monkeypatch.setattr(FakeKafka, "commit", time_out)
    loop.script = [[[number(1, 5)]]]
    run_until(loop, lambda: loop.kafka_clients and loop.kafka_clients[0].seeks, "a rewind")

    assert loop.metrics.failures.labels("commit")._value.get() >= 1


def test_the_watchdog_replaces_a_client_that_never_gets_partitions(loop, monkeypatch):
    monkeypatch.setattr(kafka_loop, "REJOIN_TIMEOUT_SECONDS", 0.2)
    loop.joins = False
    run_until(loop, lambda: len(loop.kafka_clients) >= 2, "a second client")

    assert loop.kafka_clients[0].closed
    assert loop.metrics.restarts.labels("no_assignment")._value.get() >= 1


def test_kafka_errors_while_the_clients_close_are_warnings(loop, caplog):
    kafka_log = logging.getLogger("kafka.coordinator")

    class RefusedLeave(FakeKafka):
        def close(self, autocommit=True, timeout_ms=None):
            super().close(autocommit, timeout_ms)
            # as kafka-python's IO thread logs a LeaveGroup the broker refused (the member was dropped)
            io_thread = threading.Thread(target=kafka_log.error, args=("LeaveGroup failed: UnknownMemberIdError",))
            io_thread.start()
            io_thread.join()

    loop.consumer = RefusedLeave(TOPIC)
    loop.close()
    kafka_log.error("an error outside a close")

    during, after = [record for record in caplog.records if record.name == "kafka.coordinator"]
    assert (during.levelname, during.kafka_level) == ("WARNING", "ERROR")
    assert after.levelname == "ERROR"
