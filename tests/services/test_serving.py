"""The online API against real services: scores, model swaps, outages, validation, auth, feedback, fuzzing.

The API is the platform's `serving` service, started the way `up` starts a service (the same command
and health check as `bash run.sh serving up`), without the prediction logger it shares a stack with:
nothing here needs it. Two model versions are registered under the served name from tiny synthetic
pipelines (imputer, scaler, ElasticNet) and the `champion` alias is restored afterwards. Drivers use
ids from 9,600,000 up, a range no other test writes: fresh rows, one row past the feature view's TTL,
and ids with no rows at all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import httpx
import numpy as np
import pandas as pd
import pytest

from data_pipeline import materialize as mat
from data_pipeline.offline_store import STATS_TABLE, connect, ensure_schema
from mlops_platform import local
from mlops_platform.services import BY_NAME
from tests.conftest import REPO_ROOT, eventually

FIRST_ID = 9_600_000
FRESH = list(range(FIRST_ID + 1, FIRST_ID + 31))
STALE = FIRST_ID + 900  # its only row is three days old: past the two-day TTL
UNKNOWN = FIRST_ID + 999  # no rows at all
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
SERVICE = "driver_trip_completion"
SWAP_DEADLINE_SECONDS = 30.0


# ---------------------------------------------------------------------------------------------
# Models, features and the running API
# ---------------------------------------------------------------------------------------------
def train(seed: int):
    """A small fitted pipeline; different seeds give clearly different coefficients."""
    from training_pipeline.model import make_model

    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"conv_rate": rng.random(400), "acc_rate": rng.random(400),
                      "avg_daily_trips": rng.integers(0, 60, 400).astype(np.float64)})
    weights = rng.normal(0, 1, 3)
    y = ((x.to_numpy() / [1, 1, 60]) @ weights + rng.normal(0, 0.2, 400) > 0).astype(np.float64)
    return x, make_model(0.001, 0.5, seed).fit(x, y)


def register(settings, seed: int) -> str:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from training_pipeline import tracking
    from training_pipeline.model import SKOPS_TRUSTED_TYPES

    x, pipeline = train(seed)
    experiment = tracking.experiment_id(tracking.client(settings.mlflow_tracking_uri), "serving-tests")
    # An explicit experiment, not mlflow.set_experiment: that would leak into later tests of the session.
    with mlflow.start_run(run_name=f"serving-test-{seed}", experiment_id=experiment):
        info = mlflow.sklearn.log_model(pipeline, name="model", signature=infer_signature(x, pipeline.predict(x)),
                                        input_example=x.head(3), registered_model_name=settings.model_name,
                                        skops_trusted_types=SKOPS_TRUSTED_TYPES)
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def registry(mlflow_up, settings):
    """(client, version_a, version_b), champion on version_a; the alias is put back afterwards."""
    from mlflow.exceptions import MlflowException

    from training_pipeline import tracking

    client = tracking.client(settings.mlflow_tracking_uri)
    try:
        previous = str(client.get_model_version_by_alias(settings.model_name, settings.model_alias).version)
    except MlflowException:
        previous = None
    version_a, version_b = register(settings, 1), register(settings, 2)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version_a)
    yield client, version_a, version_b
    if previous is None:
        client.delete_registered_model_alias(settings.model_name, settings.model_alias)
    else:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, previous)


def delete_rows() -> None:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where driver_id between %s and %s", (FIRST_ID, FIRST_ID + 999))


@pytest.fixture(scope="module")
def store(feast_up):
    ensure_schema()
    return mat.feature_store()


@pytest.fixture(scope="module")
def online_rows(store):
    """Fresh stats for FRESH, a three-day-old row for STALE, nothing for UNKNOWN; materialized into Redis."""
    rng = np.random.default_rng(3)
    now = datetime.now(UTC).replace(microsecond=0)
    delete_rows()
    mat.delete_online_rows(store, [*FRESH, STALE, UNKNOWN])
    rows = [(d, now - timedelta(minutes=10), float(rng.random()), float(rng.random()), int(rng.integers(0, 60)))
            for d in FRESH]
    rows[1] = (FRESH[1], rows[1][1], rows[0][2], rows[0][3], rows[0][4])  # same features as FRESH[0]: a tie
    rows.append((STALE, now - timedelta(days=3), 0.5, 0.5, 10))
    with connect() as conn, conn.cursor() as cur:
        for driver_id, ts, conv, acc, trips in rows:
            cur.execute(f"insert into {STATS_TABLE} (driver_id, event_timestamp, created, conv_rate, acc_rate, "
                        "avg_daily_trips, source) values (%s, %s, %s, %s, %s, %s, 'test-serving')",
                        (driver_id, ts, ts, conv, acc, trips))
    mat.materialize_interval(now - timedelta(days=4), now + timedelta(minutes=1), overlap=timedelta(0), store=store)
    yield
    mat.delete_online_rows(store, [*FRESH, STALE, UNKNOWN])
    delete_rows()


def ready_version(url: str) -> str | None:
    response = httpx.get(f"{url}/ready", timeout=5)
    return response.json()["model"]["version"] if response.status_code == 200 else None


@pytest.fixture(scope="module")
def api(registry, online_rows, kafka_up, settings):
    """The serving service's URL, once it serves the champion (version_a)."""
    local.start(BY_NAME["serving"], settings)  # a no-op when already running
    _client, version_a, _ = registry
    eventually(lambda: ready_version(settings.serving_url) == version_a, timeout=90,
               what=f"serving ready with version {version_a}")
    return settings.serving_url


def predict(url: str, ids: list[int], headers: dict | None = None, **extra) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"driver_ids": ids, **extra}, headers=headers, timeout=10)


def feast_vectors(store, ids: list[int]) -> pd.DataFrame:
    frame = store.get_online_features(features=store.get_feature_service(SERVICE),
                                      entity_rows=[{"driver_id": d} for d in ids]).to_df()
    return frame.set_index("driver_id")


def pyfunc_scores(version: str, settings, vectors: pd.DataFrame) -> pd.Series:
    """What mlflow.pyfunc predicts on a DataFrame of the same vectors (columns by the signature)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
    columns = model.metadata.get_input_schema().input_names()
    return pd.Series(np.asarray(model.predict(vectors[columns].astype(np.float64))).ravel(), index=vectors.index)


def assert_scores_match(scores: list[dict], expected: pd.Series) -> None:
    """Each API score equals pyfunc's for its driver, up to rounding.

    Not bit for bit: the API and pyfunc score different matrices (row order, memory layout), and BLAS
    rounds a row differently depending on where it falls (vector block or scalar tail, FMA or not), so
    the same vector can differ in its last bit (CI: 0.4310736936498845 against 0.43107369364988457).
    rel=1e-9 allows millions of ulps, yet is far below what a wrong feature, a wrong model version or
    a float32 round trip (~1e-7) would change.
    """
    for item in scores:
        assert item["score"] == pytest.approx(expected[item["driver_id"]], rel=1e-9, abs=1e-12), item


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


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
                             "run_id": registry[0].get_model_version(settings.model_name, version_a).run_id}
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
    local.stop(redis, settings)
    try:
        ready, seconds = timed(lambda: httpx.get(f"{api}/ready", timeout=10))
        assert ready.status_code == 503 and seconds < 2.0, (ready.status_code, seconds, ready.text)
        assert ready.json()["ready"] is False and "Redis" in ready.json()["reason"]
        response, seconds = timed(lambda: predict(api, FRESH[:3]))
        assert response.status_code == 503 and seconds < 2.0, (response.status_code, seconds, response.text)
        assert "Redis" in response.json()["detail"]
    finally:
        local.start(redis, settings)
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

    local.stop(kafka, settings)
    try:
        traffic(20)
        eventually(lambda: metric(api, "serving_event_spool_bytes") > 0, timeout=30, what="events spooled")
        local.stop(serving, settings)  # the API goes down with events still in its spool ...
        local.start(serving, settings)  # ... and its successor delivers them
        eventually(lambda: ready_version(api) is not None, timeout=90, what="the API back")
        traffic(10)
    finally:
        local.start(kafka, settings)
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
                              "predicted_at"}
        # Exact: the event carries the very float the response does (JSON round-trips it).
        assert event["request_id"] == request_id and event["score"] == scores[event["driver_id"]]
        assert set(event["features"]) == set(FEATURES)
        assert event["model_name"] == settings.model_name and event["model_version"] == body["model"]["version"]
        assert datetime.fromisoformat(event["predicted_at"]).utcoffset() == timedelta(0)
    outcome = seen[settings.ground_truth_topic][0]
    assert outcome["driver_id"] == FRESH[3] and outcome["trip_completed"] == 1
    assert datetime.fromisoformat(outcome["observed_at"]).utcoffset() == timedelta(0)


# ---------------------------------------------------------------------------------------------
# Validation, feedback, auth, metrics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "location"), [
    ({"driver_ids": []}, ["body", "driver_ids"]),
    ({"driver_ids": "too-many"}, ["body", "driver_ids"]),
    ({"driver_ids": ["1001"]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [True]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [1001.5]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [0]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [2**53]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [1001, 1002, 1001]}, ["body", "driver_ids"]),
    ({}, ["body", "driver_ids"]),
    ({"driver_ids": [1001], "request_id": ""}, ["body", "request_id"]),
    ({"driver_ids": [1001], "request_id": "x" * 65}, ["body", "request_id"]),
    ({"driver_ids": [1001], "request_id": "tab\there"}, ["body", "request_id"]),
    ({"driver_ids": [1001], "drivers": [1]}, ["body", "drivers"]),
])
def test_invalid_predict_bodies_get_422_naming_the_field(api, settings, body, location):
    if body.get("driver_ids") == "too-many":
        body = {"driver_ids": list(range(1, settings.serving_max_drivers + 2))}
    response = httpx.post(f"{api}/predict", json=body, timeout=10)
    assert response.status_code == 422, response.text
    assert location in [error["loc"] for error in response.json()["detail"]], response.json()


@pytest.mark.parametrize("flag", [2, -1, True, "1", 0.5, None])
def test_feedback_needs_trip_completed_0_or_1(api, flag):
    response = httpx.post(f"{api}/feedback", json={"request_id": "r", "driver_id": 1001, "trip_completed": flag})
    assert response.status_code == 422, response.text
    assert ["body", "trip_completed"] in [error["loc"] for error in response.json()["detail"]]


def test_numbers_written_with_a_fraction_of_zero_are_the_integers_the_schema_says_they_are(api):
    """JSON Schema's `integer` is a number without a fractional part, however written: 1001.0 is 1001."""
    request_id = f"floats-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{api}/predict", content=f'{{"request_id": "{request_id}", "driver_ids": '
                                                   f'[{FRESH[6]}.0, {FRESH[7]}, {UNKNOWN}e0]}}',
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.text.count(f'"driver_id":{FRESH[6]},') == 1, "answered as the integer id"
    assert [s["driver_id"] for s in response.json()["scores"]] == [FRESH[6], FRESH[7]]
    assert response.json()["missing_driver_ids"] == [UNKNOWN]
    feedback = httpx.post(f"{api}/feedback", content=f'{{"request_id": "{request_id}", "driver_id": {FRESH[6]}.0, '
                                                     '"trip_completed": 1.0}',
                          headers={"content-type": "application/json"}, timeout=10)
    assert feedback.status_code == 202, feedback.text
    assert feedback.json() == {"request_id": request_id, "driver_id": FRESH[6], "accepted": True}


@pytest.mark.parametrize("body", [b'{"driver_ids": [1001', b'{"driver_ids": [NaN]}', b'{"driver_ids": [1e999]}',
                                  b'{"driver_ids": [1001], "request_id": "\xff"}'])
def test_a_body_that_is_not_json_is_a_422_naming_the_problem(api, body):
    response = httpx.post(f"{api}/predict", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"][0] == "body" and error["ctx"]["error"], error


def test_feedback_is_accepted_only_for_a_served_request_and_driver(api):
    body = predict(api, [FRESH[4], UNKNOWN], request_id=f"fb-{uuid.uuid4().hex[:8]}").json()
    request_id = body["request_id"]
    accepted = httpx.post(f"{api}/feedback", json={"request_id": request_id, "driver_id": FRESH[4],
                                                   "trip_completed": 0})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"request_id": request_id, "driver_id": FRESH[4], "accepted": True}

    for unknown_request, driver_id in ((f"never-{uuid.uuid4().hex}", FRESH[4]), (request_id, UNKNOWN),
                                       (request_id, FRESH[5])):
        response = httpx.post(f"{api}/feedback", json={"request_id": unknown_request, "driver_id": driver_id,
                                                       "trip_completed": 1}, timeout=10)
        assert response.status_code == 404, response.text
        detail = response.json()["detail"]
        assert unknown_request in detail and str(driver_id) in detail


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def authenticated_api(api, settings, tmp_path):
    """A second API process with SERVING_AUTH=on, on a port of its own; (url, token)."""
    port, token = free_port(), uuid.uuid4().hex
    env = {**os.environ, "SERVING_AUTH": "on", "SERVING_API_TOKEN": token, "SERVING_PORT": str(port),
           "SERVING_WORKERS": "1", "PLATFORM_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    with open(tmp_path / "api.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "model_serving.api"], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: ready_version(url), timeout=90, what=f"second API ready (log: {tmp_path / 'api.log'})")
        yield url, token
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_auth_on_requires_the_bearer_token_on_predict_and_feedback_only(authenticated_api):
    url, token = authenticated_api
    for path, body in (("/predict", {"driver_ids": FRESH[:2]}),
                       ("/feedback", {"request_id": "r", "driver_id": FRESH[0], "trip_completed": 1})):
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {token}"},
                        {"Authorization": token}):
            response = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=10)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    good = {"Authorization": f"Bearer {token}"}
    served = httpx.post(f"{url}/predict", json={"driver_ids": FRESH[:2]}, headers=good, timeout=10)
    assert served.status_code == 200, served.text
    feedback = {"request_id": served.json()["request_id"], "driver_id": FRESH[0], "trip_completed": 1}
    assert httpx.post(f"{url}/feedback", json=feedback, headers=good, timeout=10).status_code == 202
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path


def test_metrics_cover_requests_scores_missing_features_reloads_and_events(api, settings, registry):
    predict(api, [*FRESH[:5], UNKNOWN, STALE])
    _client, version_a, _ = registry
    assert metric(api, "serving_requests_total", endpoint="/predict", status="200", model_version=version_a) >= 1
    assert metric(api, "serving_request_duration_seconds_count", endpoint="/predict", status="200") >= 1
    assert metric(api, "serving_score_count", model_version=version_a) >= 5
    assert metric(api, "serving_missing_features_total", reason="not_found") >= 1
    assert metric(api, "serving_missing_features_total", reason="expired") >= 1
    assert metric(api, "serving_model_reloads_total") >= 1
    assert metric(api, "serving_model_info", model_version=version_a) == 1
    assert metric(api, "serving_events_delivered_total", topic=settings.predictions_topic) >= 1
    assert metric(api, "serving_events_spooled_total", topic=settings.predictions_topic) >= 5
    assert metric(api, "serving_event_spool_limit_bytes") == settings.event_spool_max_bytes
    for reason in ("spool_full", "spool_error", "corrupt"):
        assert metric(api, "serving_events_dropped_total", reason=reason) == 0


def test_the_platform_health_check_reports_ready(api):
    result = subprocess.run([sys.executable, "-m", "mlops_platform.health", "serving"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "serving: healthy: ready" in result.stdout, result.stdout + result.stderr


# What schemathesis accepts as the answer to a request the schema calls valid, and to one it calls invalid:
# a valid /feedback may name a pair this API never scored (404, documented); anything invalid is a 422.
FUZZ_CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "404"]

[checks.negative_data_rejection]
expected-statuses = ["422"]
"""
FUZZ_OPERATIONS = {"POST /predict", "POST /feedback", "GET /health", "GET /ready", "GET /metrics"}


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_every_route_keeps_the_contract_its_openapi_schema_states(request, api, settings, auth, tmp_path):
    """schemathesis with every check, in both modes (schema-valid and schema-invalid data), on every route:
    a valid request is answered 2xx (or /feedback's documented 404), an invalid one 422, and every status,
    content type and body is the one the schema documents. With auth on, also that a request without the
    token is refused. Deterministic: `--generation-deterministic` derandomizes generation (a fixed seed
    per operation) and keeps no example database; a fixed number of examples, a few seconds a run."""
    pytest.importorskip("schemathesis", reason="schemathesis is not installed: the fuzz run needs it")
    url, token = request.getfixturevalue("authenticated_api") if auth else (api, settings.serving_api_token)
    headers = ["--header", f"Authorization: Bearer {token}"] if auth or settings.serving_auth else []
    config, junit = tmp_path / "schemathesis.toml", tmp_path / "junit.xml"
    config.write_text(FUZZ_CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
         "--checks", "all", "--mode", "all", "--max-examples", "100", "--generation-deterministic",
         "--workers", "1", "--request-timeout", "10", "--continue-on-failure", "--no-color",
         "--report", "junit", "--report-junit-path", str(junit), *headers],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-2000:]
    tested = {case.get("name") for case in ElementTree.parse(junit).iter("testcase")}
    assert tested == FUZZ_OPERATIONS, f"schemathesis tested {sorted(tested)}: a route is missing from the schema"
