"""The prediction logger against a real broker and PostgreSQL: stored, joined, idempotent, dead letters, SIGTERM.

The logger under test is the platform's `prediction-logger` service. It belongs to the `serving`
stack; while the online API is not in the tree that stack cannot start, so the logger alone is started
the way `up` starts a service. Every test uses request ids of its own, so tests neither see nor
disturb each other's rows; every wait polls against a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import urllib.request
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mlops_platform import local, local_service
from mlops_platform.health import CHECKS, Unhealthy
from mlops_platform.services import BY_NAME, log_file
from model_serving.prediction_logger import GROUP_ID
from model_serving.prediction_messages import (
    GroundTruth,
    Prediction,
    dlq_topic,
    encode_ground_truth,
    encode_prediction,
)
from model_serving.prediction_store import GROUND_TRUTH_TABLE, LABELED_VIEW, PREDICTIONS_TABLE
from tests.conftest import REPO_ROOT, eventually, stack_up
from tests.services.dead_letters import dead_letters, end_offset

SERVICE = "prediction-logger"
API_IN_TREE = (REPO_ROOT / "model_serving" / "api.py").is_file()


def start_logger(settings) -> None:
    """Running and healthy afterwards; a no-op when it already is."""
    if API_IN_TREE:
        stack_up("serving")  # `up` starts only what is not running
    else:
        local_service.start(BY_NAME[SERVICE], settings)
    eventually(lambda: CHECKS[SERVICE](settings), timeout=120, what="prediction logger healthy")


@pytest.fixture(scope="module")
def logger(kafka_up, settings):
    start_logger(settings)
    yield settings
    start_logger(settings)  # the session's other tests expect the service as `up` left it


# ---------------------------------------------------------------------------------------------
# Producing, and reading back the tables and the dead-letter topics
# ---------------------------------------------------------------------------------------------
def prediction(request_id: str, driver_id: int, rng: random.Random, predicted_at: datetime | None = None) -> Prediction:
    features = {"conv_rate": rng.randrange(1025) / 1024, "acc_rate": rng.randrange(1025) / 1024,
                "avg_daily_trips": float(rng.randrange(60))}
    return Prediction(request_id, driver_id, features, score=rng.uniform(-0.2, 1.2),
                      model_name="driver_trip_completion", model_version="7",
                      predicted_at=predicted_at or datetime.now(UTC) - timedelta(minutes=2))


def outcome(p: Prediction, completed: int) -> GroundTruth:
    return GroundTruth(p.request_id, p.driver_id, completed, p.predicted_at + timedelta(minutes=1))


def send(settings, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> dict[int, int]:
    """Send (key, value) pairs to `topic`; returns partition -> highest offset written."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, value=value, key=key) for key, value in items]
        producer.flush(timeout=30)
        offsets: dict[int, int] = {}
        for future in futures:
            metadata = future.get(timeout=10)
            offsets[metadata.partition] = max(offsets.get(metadata.partition, -1), metadata.offset)
        return offsets
    finally:
        producer.close()


def send_predictions(settings, predictions: list[Prediction]) -> dict[int, int]:
    return send(settings, settings.predictions_topic,
                [(p.request_id.encode(), encode_prediction(p)) for p in predictions])


def send_outcomes(settings, outcomes: list[GroundTruth]) -> dict[int, int]:
    return send(settings, settings.ground_truth_topic,
                [(g.request_id.encode(), encode_ground_truth(g)) for g in outcomes])


def committed(settings, topic: str, offsets: dict[int, int]) -> bool:
    """True once the group's committed offsets are past every offset written."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        group = admin.list_group_offsets({GROUP_ID: None})[GROUP_ID]
    finally:
        admin.close()
    done = {tp.partition: meta.offset for tp, meta in group.items() if tp.topic == topic}
    return all(done.get(partition, -1) > offset for partition, offset in offsets.items())


def rows(settings, table: str, request_ids: list[str]) -> list[tuple]:
    import psycopg2

    columns = {
        PREDICTIONS_TABLE: "request_id, driver_id, features, conv_rate, acc_rate, avg_daily_trips, score, model_name, "
                           "model_version, predicted_at",
        GROUND_TRUTH_TABLE: "request_id, driver_id, trip_completed, observed_at",
        LABELED_VIEW: "request_id, driver_id, score, trip_completed, model_version, label_delay",
    }[table]
    conn = psycopg2.connect(settings.postgres_dsn(settings.feast_db))
    try:
        with conn.cursor() as cur:
            cur.execute(f"select {columns} from {table} where request_id = any(%s) order by request_id, driver_id",
                        (request_ids,))
            return cur.fetchall()
    finally:
        conn.close()


def metric(settings, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"{settings.prediction_logger_url}/metrics", timeout=5).read().decode()
    return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def fresh_ids(count: int) -> tuple[list[str], list[int]]:
    first = random.SystemRandom().randrange(10**9, 4 * 10**12)
    return [f"test-{uuid.uuid4()}" for _ in range(count)], list(range(first, first + count))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_logger_is_healthy_and_serves_its_metrics(logger, settings):
    assert CHECKS[SERVICE](settings).startswith("ready")
    body = urllib.request.urlopen(f"{settings.prediction_logger_url}/metrics", timeout=5).read().decode()
    for name in ("messages_consumed_total", "rows_stored_total", "messages_rejected_total", "dlq_sends_total",
                 "duplicates_total", "batch_write_seconds_bucket", "lag{", "ready 1.0"):
        assert f"prediction_logger_{name}" in body, name


def test_health_check_names_what_is_wrong(settings):
    with pytest.raises(Unhealthy, match="does not answer"):
        CHECKS[SERVICE](replace(settings, prediction_logger_port=1))


def test_predictions_and_outcomes_are_stored_and_joined(logger, settings):
    rng = random.Random(21)
    request_ids, drivers = fresh_ids(3)
    predictions = [prediction(r, d, rng) for r in request_ids for d in drivers]  # 3 requests x 3 drivers
    labelled = predictions[::2]
    outcomes = [outcome(p, rng.randrange(2)) for p in labelled]

    send_predictions(settings, predictions)
    send_outcomes(settings, outcomes)

    eventually(lambda: len(rows(settings, LABELED_VIEW, request_ids)) == len(labelled), timeout=60,
               what=f"{len(labelled)} labelled predictions")
    stored = rows(settings, PREDICTIONS_TABLE, request_ids)
    assert len(stored) == len(predictions)
    by_key = {(p.request_id, p.driver_id): p for p in predictions}
    for request_id, driver_id, features, conv, acc, trips, score, name, version, predicted_at in stored:
        sent = by_key[(request_id, driver_id)]
        assert features == sent.features
        assert (conv, acc, trips) == (sent.features["conv_rate"], sent.features["acc_rate"],
                                      sent.features["avg_daily_trips"])
        assert score == pytest.approx(sent.score) and (name, version) == (sent.model_name, sent.model_version)
        assert abs(predicted_at - sent.predicted_at) < timedelta(milliseconds=1)
    joined = {(r[0], r[1]): r for r in rows(settings, LABELED_VIEW, request_ids)}
    for truth in outcomes:
        request_id, driver_id, score, completed, version, delay = joined[(truth.request_id, truth.driver_id)]
        assert completed == truth.trip_completed and version == "7"
        assert delay == timedelta(minutes=1)


def test_an_outcome_that_arrives_first_is_kept_until_its_prediction_joins(logger, settings):
    rng = random.Random(22)
    (request_id,), (driver_id,) = fresh_ids(1)
    early = prediction(request_id, driver_id, rng)

    send_outcomes(settings, [outcome(early, 1)])
    eventually(lambda: rows(settings, GROUND_TRUTH_TABLE, [request_id]), timeout=60, what="outcome stored")
    assert rows(settings, LABELED_VIEW, [request_id]) == []

    send_predictions(settings, [early])
    eventually(lambda: rows(settings, LABELED_VIEW, [request_id]), timeout=60, what="prediction joined")


def test_a_duplicate_message_adds_nothing(logger, settings):
    rng = random.Random(23)
    request_ids, drivers = fresh_ids(4)
    predictions = [prediction(r, d, rng) for r, d in zip(request_ids, drivers, strict=True)]
    outcomes = [outcome(p, 1) for p in predictions]
    send_predictions(settings, predictions)
    send_outcomes(settings, outcomes)
    eventually(lambda: len(rows(settings, LABELED_VIEW, request_ids)) == 4, timeout=60, what="first delivery stored")
    before = [rows(settings, table, request_ids) for table in (PREDICTIONS_TABLE, GROUND_TRUTH_TABLE)]
    duplicates_before = metric(settings, "prediction_logger_duplicates_total", table=PREDICTIONS_TABLE)

    # The same messages again (a producer retry, or a redelivery after a crash), one changed in content.
    changed = replace(predictions[0], score=predictions[0].score + 1.0)
    sent_p = send_predictions(settings, [*predictions, changed])
    sent_g = send_outcomes(settings, [*outcomes, replace(outcomes[0], trip_completed=0)])
    eventually(lambda: committed(settings, settings.predictions_topic, sent_p)
               and committed(settings, settings.ground_truth_topic, sent_g), timeout=60, what="duplicates committed")

    after = [rows(settings, table, request_ids) for table in (PREDICTIONS_TABLE, GROUND_TRUTH_TABLE)]
    assert after == before, "a second delivery neither adds nor changes a row: the first one wins"
    assert metric(settings, "prediction_logger_duplicates_total", table=PREDICTIONS_TABLE) >= duplicates_before + 5


def variant_rows(settings, request_ids: list[str]) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(settings.postgres_dsn(settings.feast_db))
    try:
        with conn.cursor() as cur:
            cur.execute(f"select request_id, driver_id, variant, served, rollout_id, latency_ms, error, score "
                        f"from {PREDICTIONS_TABLE} where request_id = any(%s) order by request_id, driver_id, variant",
                        (request_ids,))
            return cur.fetchall()
    finally:
        conn.close()


def test_both_variants_of_a_prediction_are_stored_and_only_the_scored_ones_join_their_outcome(logger, settings):
    rng = random.Random(24)
    (request_id,), (driver_id,) = fresh_ids(1)
    champion = replace(prediction(request_id, driver_id, rng), rollout_id="r-7", latency_ms=1.5)
    shadow = replace(champion, variant="challenger", served=False, model_version="8", score=0.25, latency_ms=2.5)
    failed = replace(champion, request_id=request_id + "-b", variant="challenger", served=False, score=None,
                     error="RuntimeError: model version 8 returned non-finite scores", latency_ms=0.5)
    send_predictions(settings, [champion, shadow, replace(champion, request_id=failed.request_id), failed])
    send_outcomes(settings, [outcome(champion, 1), outcome(failed, 0)])
    request_ids = [request_id, failed.request_id]
    eventually(lambda: len(variant_rows(settings, request_ids)) == 4, timeout=60, what="four variant rows stored")
    assert variant_rows(settings, request_ids) == [
        (request_id, driver_id, "challenger", False, "r-7", 2.5, None, 0.25),
        (request_id, driver_id, "champion", True, "r-7", 1.5, None, champion.score),
        (failed.request_id, driver_id, "challenger", False, "r-7", 0.5, failed.error, None),
        (failed.request_id, driver_id, "champion", True, "r-7", 1.5, None, champion.score)]
    eventually(lambda: len(rows(settings, LABELED_VIEW, request_ids)) == 3, timeout=60, what="three rows joined")
    joined = [(r[0], r[4]) for r in rows(settings, LABELED_VIEW, request_ids)]
    assert sorted(joined) == sorted([(request_id, "7"), (request_id, "8"), (failed.request_id, "7")]), \
        "a failed variant has no score to judge: it joins no outcome"


def test_invalid_messages_go_to_the_dead_letter_topics_with_their_reason(logger, settings):
    rng = random.Random(24)
    request_ids, drivers = fresh_ids(6)
    good = json.loads(encode_prediction(prediction(request_ids[0], drivers[0], rng)))
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    bad_predictions = {
        request_ids[0]: b"{not json",
        request_ids[1]: json.dumps({**good, "request_id": request_ids[1], "score": None}).encode(),
        request_ids[2]: json.dumps({**good, "request_id": request_ids[2],
                                    "features": {**good["features"], "conv_rate": 1.5}}).encode(),
        request_ids[3]: json.dumps({**good, "request_id": request_ids[3], "predicted_at": future}).encode(),
    }
    bad_outcomes = {
        request_ids[4]: json.dumps({"request_id": request_ids[4], "driver_id": drivers[4], "trip_completed": 2,
                                    "observed_at": datetime.now(UTC).isoformat()}).encode(),
        request_ids[5]: json.dumps({"request_id": request_ids[5], "driver_id": "seven", "trip_completed": 1,
                                    "observed_at": datetime.now(UTC).isoformat()}).encode(),
    }
    since = {topic: end_offset(settings, dlq_topic(topic))
             for topic in (settings.predictions_topic, settings.ground_truth_topic)}

    sent_p = send(settings, settings.predictions_topic, [(k.encode(), v) for k, v in bad_predictions.items()])
    sent_g = send(settings, settings.ground_truth_topic, [(k.encode(), v) for k, v in bad_outcomes.items()])
    eventually(lambda: committed(settings, settings.predictions_topic, sent_p)
               and committed(settings, settings.ground_truth_topic, sent_g), timeout=60, what="invalid ones committed")

    letters = dead_letters(settings, dlq_topic(settings.predictions_topic), since[settings.predictions_topic],
                           set(bad_predictions))
    classes = {entry["key"]: entry["reason_class"] for entry in letters}
    assert classes == {request_ids[0]: "unparseable_json", request_ids[1]: "missing_field",
                       request_ids[2]: "out_of_range", request_ids[3]: "future_timestamp"}
    for entry in letters:
        assert entry["reason"] and entry["topic"] == settings.predictions_topic
        assert entry["payload"] == bad_predictions[entry["key"]].decode()
    outcome_letters = dead_letters(settings, dlq_topic(settings.ground_truth_topic), since[settings.ground_truth_topic],
                                   set(bad_outcomes))
    assert {e["key"]: e["reason_class"] for e in outcome_letters} == {request_ids[4]: "out_of_range",
                                                                       request_ids[5]: "wrong_type"}
    assert "trip_completed: expected 0 or 1, got 2" in {e["reason"] for e in outcome_letters}
    assert rows(settings, PREDICTIONS_TABLE, request_ids) == rows(settings, GROUND_TRUTH_TABLE, request_ids) == []


def new_lines(log, size: int) -> list[str]:
    with open(log, "rb") as handle:
        handle.seek(size)
        return handle.read().decode().splitlines()


def assert_stopped_cleanly(lines: list[str]) -> None:
    """The stop was seen, nothing went wrong, and the last word is the service's own "stopped cleanly"
    with exit code 0: it closed its clients and returned, rather than dying or being killed (a
    traceback on the way out would be a line that is not JSON)."""
    events = [json.loads(line) for line in lines]
    assert "stop requested" in [event["message"] for event in events], lines
    assert not [event for event in events if event["level"] in ("ERROR", "CRITICAL")], lines
    assert events[-1]["message"] == "stopped cleanly" and events[-1].get("exit_code") == 0, lines[-5:]


def members_of(settings, pid: int) -> list[str]:
    """The group's member ids of process `pid` (its client id is the group id and its pid)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        members = admin.describe_groups([GROUP_ID])[GROUP_ID]["members"]
    finally:
        admin.close()
    return [member["member_id"] for member in members if member["client_id"] == f"{GROUP_ID}-{pid}"]


def drop_from_group(settings, member_ids: list[str]) -> None:
    """What the broker does to a member whose session lapsed (no heartbeat within its timeout)."""
    from kafka import KafkaAdminClient
    from kafka.admin import MemberToRemove

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        admin.remove_group_members(GROUP_ID, [MemberToRemove(member_id=m) for m in member_ids])
    finally:
        admin.close()


def test_sigterm_stops_the_logger_cleanly(logger, settings):
    pid = local.read_pid(settings, SERVICE)
    assert pid is not None, "the prediction logger is not running"
    log = log_file(settings, SERVICE)
    log_size = log.stat().st_size

    os.killpg(pid, signal.SIGTERM)
    eventually(lambda: not local.group_alive(pid), timeout=60, what="logger stopped after SIGTERM")  # a wait only

    assert_stopped_cleanly(new_lines(log, log_size))
    start_logger(settings)  # back for whatever runs next


def test_a_logger_the_group_dropped_while_it_was_starved_still_stops_cleanly(logger, settings):
    # A starved process (frozen here) misses its heartbeats and the broker drops it from the group; the
    # client learns that only at its next heartbeat. A stop in between leaves a group it is no longer in.
    pid = local.read_pid(settings, SERVICE)
    assert pid is not None, "the prediction logger is not running"
    members = members_of(settings, pid)
    assert len(members) == 1, members
    log = log_file(settings, SERVICE)
    log_size = log.stat().st_size

    os.killpg(pid, signal.SIGSTOP)
    try:
        drop_from_group(settings, members)
        os.killpg(pid, signal.SIGTERM)  # pending: handled first thing once the process runs again
    finally:
        os.killpg(pid, signal.SIGCONT)
    eventually(lambda: not local.group_alive(pid), timeout=60, what="logger stopped after SIGTERM")  # a wait only

    assert_stopped_cleanly(new_lines(log, log_size))
    start_logger(settings)
