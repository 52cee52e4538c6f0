"""The online API against real services: features, scores, model swaps, outages and the event contract.

The API is the platform's `serving` service, started the way `up` starts a service (the same command
and health check as `bash run.sh serving up`), without the prediction logger it shares a stack with:
nothing here needs it. The running API, its model versions and drivers: serving_api.py; requests,
validation, auth and fuzzing: test_serving_requests.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta

import httpx

from mlops_platform import local_service
from mlops_platform.services import BY_NAME
from tests.conftest import eventually
from tests.services.serving_api import (
    FEATURES,
    FRESH,
    STALE,
    SWAP_DEADLINE_SECONDS,
    UNKNOWN,
    assert_scores_match,
    feast_vectors,
    metric,
    predict,
    pyfunc_scores,
    ready_version,
)


# ---------------------------------------------------------------------------------------------
# Features and scores
# ---------------------------------------------------------------------------------------------
def test_online_features_equal_feasts_and_respect_the_ttl(online_rows, store, settings):
    from model_serving.features import FeatureDecoder, OnlineFeatures, load_spec

    spec = load_spec(settings)
    ids = [*FRESH, STALE, UNKNOWN]

    async def read():
        reader = OnlineFeatures(settings, FeatureDecoder(spec))
        try:
            return await reader.read(ids, ["avg_daily_trips", "conv_rate", "acc_rate"])
        finally:
            await reader.close()

    rows = asyncio.run(read())
    by_feast = feast_vectors(store, ids)
    assert rows.driver_ids == FRESH
    for driver_id, values in zip(rows.driver_ids, rows.values, strict=True):
        expected = by_feast.loc[driver_id]
        assert values == (expected["avg_daily_trips"], expected["conv_rate"], expected["acc_rate"])
        assert type(values[0]) is int and type(values[1]) is float
    assert rows.missing == [STALE, UNKNOWN]
    assert rows.expired == 1, "the three-day-old row is past the feature view's two-day TTL"
    assert by_feast.loc[UNKNOWN].isna().all()


def test_scores_equal_pyfunc_on_the_same_vectors_and_the_ranking_follows_them(api, registry, store, settings):
    _client, version_a, _ = registry
    ids = [UNKNOWN, *reversed(FRESH), STALE]
    response = predict(api, ids, request_id="scores-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "scores-1" and response.headers["x-request-id"] == "scores-1"
    assert body["model"] == {"name": settings.model_name, "version": version_a,
                             "run_id": registry[0].get_model_version(settings.model_name, version_a).run_id,
                             "variant": "champion"}
    assert response.headers["x-model-variant"] == "champion"
    assert [s["driver_id"] for s in body["scores"]] == list(reversed(FRESH)), "scores keep the request order"
    assert body["missing_driver_ids"] == [UNKNOWN, STALE]

    assert_scores_match(body["scores"], pyfunc_scores(version_a, settings, feast_vectors(store, FRESH)))
    scores = {item["driver_id"]: item["score"] for item in body["scores"]}
    assert body["ranking"] == sorted(scores, key=lambda d: (-scores[d], d))
    # Exact: one request, one BLAS call, and the tied rows are its last two (reversed FRESH), so any
    # power-of-two blocking computes both in the same part of the kernel.
    assert scores[FRESH[0]] == scores[FRESH[1]], "same features, same score"
    assert body["ranking"].index(FRESH[0]) < body["ranking"].index(FRESH[1]), "a tie goes to the smaller id"
    assert body["best_driver_id"] == body["ranking"][0]


def test_a_request_without_any_scorable_driver_is_answered_not_refused(api):
    response = predict(api, [UNKNOWN, STALE])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scores"] == [] and body["ranking"] == [] and body["best_driver_id"] is None
    assert body["missing_driver_ids"] == [UNKNOWN, STALE]
    assert len(body["request_id"]) == 32, "a request id is generated when none is given"


def test_moving_the_champion_alias_is_picked_up_without_a_restart(api, registry, store, settings):
    client, version_a, version_b = registry
    reloads_before = metric(api, "serving_model_reloads_total")
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version_b)
    try:
        body = eventually(lambda: (b := predict(api, FRESH).json())["model"]["version"] == version_b and b,
                          timeout=SWAP_DEADLINE_SECONDS, interval=0.2, what=f"/predict served by version {version_b}")
        assert_scores_match(body["scores"], pyfunc_scores(version_b, settings, feast_vectors(store, FRESH)))
        assert metric(api, "serving_model_reloads_total") > reloads_before
        assert metric(api, "serving_model_version", model_name=settings.model_name) == float(version_b)
    finally:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, version_a)
        eventually(lambda: ready_version(api) == version_a, timeout=SWAP_DEADLINE_SECONDS,
                   what=f"back on version {version_a}")


# ---------------------------------------------------------------------------------------------
# Outages
# ---------------------------------------------------------------------------------------------
def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def test_redis_down_answers_503_quickly_and_recovers_without_a_restart(api, settings):
    redis = BY_NAME["redis"]
    local_service.stop(redis, settings)
    try:
        ready, seconds = timed(lambda: httpx.get(f"{api}/ready", timeout=10))
        assert ready.status_code == 503 and seconds < 2.0, (ready.status_code, seconds, ready.text)
        assert ready.json()["ready"] is False and "Redis" in ready.json()["reason"]
        response, seconds = timed(lambda: predict(api, FRESH[:3]))
        assert response.status_code == 503 and seconds < 2.0, (response.status_code, seconds, response.text)
        assert "Redis" in response.json()["detail"]
    finally:
        local_service.start(redis, settings)
    eventually(lambda: predict(api, FRESH[:3]).status_code == 200, timeout=20, what="/predict back to 200")
    assert httpx.get(f"{api}/ready", timeout=5).status_code == 200


class TopicTail:
    """Every message on the prediction and feedback topics from now on, read by a consumer of the test's own."""

    def __init__(self, settings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topics = (settings.predictions_topic, settings.ground_truth_topic)
        self.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
        eventually(lambda: set(self.topics) <= self.consumer.topics()
                   and all(self.consumer.partitions_for_topic(t) for t in self.topics), timeout=60,
                   what="both topics exist")
        partitions = [TopicPartition(t, p) for t in self.topics for p in self.consumer.partitions_for_topic(t)]
        self.consumer.assign(partitions)
        self.consumer.seek_to_end()
        for tp in partitions:
            self.consumer.position(tp)
        self.seen: list = []

    def poll(self) -> list:
        for records in self.consumer.poll(timeout_ms=500).values():
            self.seen.extend(records)
        return self.seen

    def close(self) -> None:
        self.consumer.close()


def test_a_kafka_outage_and_an_api_restart_lose_no_event_and_keep_their_order(api, settings):
    """While Kafka is down requests are answered as usual and their events wait in the spool, even across a
    restart of the API; once the broker is back every prediction and feedback event arrives, in order."""
    import json

    warm_up = predict(api, FRESH[:1]).json()["request_id"]  # both topics exist once an event was sent to each
    httpx.post(f"{api}/feedback", json={"request_id": warm_up, "driver_id": FRESH[0], "trip_completed": 1})
    tail = TopicTail(settings)
    kafka, serving = BY_NAME["kafka"], BY_NAME["serving"]
    run = uuid.uuid4().hex[:8]
    sent: list[str] = []

    def traffic(count: int) -> None:
        for _ in range(count):
            request_id = f"outage-{run}-{len(sent):03d}"
            response = predict(api, FRESH[:5], request_id=request_id)
            assert response.status_code == 200, response.text
            feedback = httpx.post(f"{api}/feedback", json={"request_id": request_id, "driver_id": FRESH[0],
                                                           "trip_completed": 1}, timeout=10)
            assert feedback.status_code == 202, feedback.text
            sent.append(request_id)

    local_service.stop(kafka, settings)
    try:
        traffic(20)
        eventually(lambda: metric(api, "serving_event_spool_bytes") > 0, timeout=30, what="events spooled")
        local_service.stop(serving, settings)  # the API goes down with events still in its spool ...
        local_service.start(serving, settings)  # ... and its successor delivers them
        eventually(lambda: ready_version(api) is not None, timeout=90, what="the API back")
        traffic(10)
    finally:
        local_service.start(kafka, settings)
    try:
        def delivered() -> bool:
            events = [(r.topic, r.partition, json.loads(r.value)) for r in tail.poll()]
            predicted = {(e["request_id"], e["driver_id"]) for t, _, e in events if t == settings.predictions_topic}
            labelled = {e["request_id"] for t, _, e in events if t == settings.ground_truth_topic}
            return all((r, d) in predicted for r in sent for d in FRESH[:5]) and set(sent) <= labelled

        eventually(delivered, timeout=120, interval=0.5, what=f"all {len(sent) * 6} events delivered")
    finally:
        tail.close()
    for topic in tail.topics:  # within a partition, requests arrive in the order they were answered
        for partition in {r.partition for r in tail.seen if r.topic == topic}:
            order = [json.loads(r.value)["request_id"] for r in tail.seen
                     if r.topic == topic and r.partition == partition and r.key.startswith(b"outage-" + run.encode())]
            first_seen = list(dict.fromkeys(order))
            assert first_seen == sorted(first_seen), (topic, partition, first_seen)
    assert metric(api, "serving_events_dropped_total") == 0


def test_prediction_and_feedback_events_follow_the_contract(api, settings):
    import json

    topics = (settings.predictions_topic, settings.ground_truth_topic)
    warm_up = predict(api, FRESH[:1]).json()["request_id"]  # both topics exist once an event was sent to each
    httpx.post(f"{api}/feedback", json={"request_id": warm_up, "driver_id": FRESH[0], "trip_completed": 1})
    tail = TopicTail(settings)
    try:
        request_id = f"contract-{uuid.uuid4().hex[:12]}"
        body = predict(api, [FRESH[2], UNKNOWN, FRESH[3]], request_id=request_id).json()
        feedback = httpx.post(f"{api}/feedback", json={"request_id": request_id, "driver_id": FRESH[3],
                                                       "trip_completed": 1}, timeout=10)
        assert feedback.status_code == 202, feedback.text
        seen: dict[str, list[dict]] = {t: [] for t in topics}

        def collected() -> bool:
            ours = [r for r in tail.poll() if r.key == request_id.encode()]
            for topic in topics:
                seen[topic] = [json.loads(r.value) for r in ours if r.topic == topic]
            return len(seen[topics[0]]) == 2 and len(seen[topics[1]]) == 1

        eventually(collected, timeout=60, interval=0.1, what="2 prediction events and 1 feedback event")
    finally:
        tail.close()

    scores = {s["driver_id"]: s["score"] for s in body["scores"]}
    for event in seen[settings.predictions_topic]:
        assert set(event) == {"request_id", "driver_id", "features", "score", "model_name", "model_version",
                              "predicted_at", "variant", "served", "rollout_id", "latency_ms", "error"}
        assert (event["variant"], event["served"], event["rollout_id"], event["error"]) == (
            "champion", True, None, None), "no rollout runs in this module"
        assert event["latency_ms"] >= 0
        # Exact: the event carries the very float the response does (JSON round-trips it).
        assert event["request_id"] == request_id and event["score"] == scores[event["driver_id"]]
        assert set(event["features"]) == set(FEATURES)
        assert event["model_name"] == settings.model_name and event["model_version"] == body["model"]["version"]
        assert datetime.fromisoformat(event["predicted_at"]).utcoffset() == timedelta(0)
    outcome = seen[settings.ground_truth_topic][0]
    assert outcome["driver_id"] == FRESH[3] and outcome["trip_completed"] == 1
    assert datetime.fromisoformat(outcome["observed_at"]).utcoffset() == timedelta(0)
