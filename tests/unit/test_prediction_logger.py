"""The prediction logger's parts of the Kafka loop: its split of a polled batch by topic, its dead-letter
topics, and what it counts (in-memory stand-ins for Kafka and the store; the real ones:
tests/services/test_prediction_logger.py)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from mlops_platform import kafka_loop
from model_serving import prediction_logger as pl
from model_serving.prediction_logger_metrics import LoggerMetrics
from model_serving.prediction_store import GROUND_TRUTH_TABLE, PREDICTIONS_TABLE
from tests.conftest import build_settings
from tests.kafka_fakes import FakeWriter, Record, run_until, script_kafka
from tests.unit.test_prediction_messages import outcome, prediction

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_a_batch_is_split_by_topic_into_valid_messages_and_rejections():
    settings = build_settings(SERVING_AUTH="off")
    records = [
        Record("predictions", 0, 1, b"req-1", json.dumps(prediction()).encode()),
        Record("ground_truth", 0, 1, b"req-1", json.dumps(outcome()).encode()),
        Record("predictions", 1, 7, b"req-2", json.dumps(outcome()).encode()),  # an outcome on the wrong topic
        Record("ground_truth", 2, 3, None, b"garbage"),
    ]
    valid, rejected = pl.split(records, settings, NOW)
    assert [p.request_id for p in valid.predictions] == ["req-1"]
    assert [g.trip_completed for g in valid.ground_truth] == [1]
    assert len(valid) == 2
    assert [(r.topic, r.offset, why.reason_class) for r, why in rejected] == [
        ("predictions", 7, "missing_field"), ("ground_truth", 3, "unparseable_json")]
    with pytest.raises(ValueError, match="got one of topic 'other'"):
        pl.split([Record("other", 0, 0, None, b"{}")], settings, NOW)


def test_a_batch_is_stored_its_refusals_go_to_their_topics_dead_letters_and_duplicates_are_counted(monkeypatch):
    monkeypatch.setattr(kafka_loop, "RETRY_MIN_SECONDS", 0.01)
    settings = build_settings()
    logger = pl.PredictionLogger(settings, LoggerMetrics(CollectorRegistry(), pl.topics(settings)),
                                 threading.Event())
    # The store already held the outcome: one new prediction row, no new outcome row.
    logger.store = FakeWriter(transform=lambda batch: batch,
                              result=lambda batch: {PREDICTIONS_TABLE: 1, GROUND_TRUTH_TABLE: 0})
    script_kafka(monkeypatch, logger, settings.predictions_topic)
    monkeypatch.setattr(pl, "ensure_topics", lambda settings: {})
    logger.script = [[[
        Record(settings.predictions_topic, 0, 4, b"req-1", json.dumps(prediction()).encode()),
        Record(settings.ground_truth_topic, 0, 8, b"req-1", json.dumps(outcome()).encode()),
        Record(settings.ground_truth_topic, 0, 9, b"req-2", b"garbage"),
    ]]]
    run_until(logger, lambda: logger.kafka_clients and logger.kafka_clients[0].commits, "a commit")

    (stored,) = logger.store.batches
    assert (len(stored.predictions), len(stored.ground_truth)) == (1, 1)
    assert [(topic, key) for topic, key, _ in logger.dlq.sent] == [(f"{settings.ground_truth_topic}_dlq", b"req-2")]
    metrics = logger.metrics
    assert metrics.rejected.labels(settings.ground_truth_topic, "unparseable_json")._value.get() == 1
    assert metrics.consumed.labels(settings.ground_truth_topic)._value.get() == 2
    assert metrics.stored.labels(PREDICTIONS_TABLE)._value.get() == 1
    assert metrics.duplicates.labels(GROUND_TRUTH_TABLE)._value.get() == 1
    assert metrics.duplicates.labels(PREDICTIONS_TABLE)._value.get() == 0
