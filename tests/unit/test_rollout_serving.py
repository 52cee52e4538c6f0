"""Rollouts in the online API without services: sticky assignment, the variant events and their validation,
and /predict in each mode with a fitted champion, stub features and challengers that work, fail or hang."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from mlops_platform.messages import Rejection
from mlops_platform.rollout import AB, CANARY, CHALLENGER, CHAMPION, SHADOW, Rollout, assignment_point
from model_serving.events import PredictionRecord, messages_from_wire
from model_serving.model_store import LoadedModel
from model_serving.prediction_messages import validate_prediction
from model_serving.prediction_store import PREDICTION_COLUMNS
from model_serving.rollout_state import RolloutView, RolloutWatcher
from model_serving.shadow import ShadowScorer
from tests.unit.test_serving_api import FEATURES, fitted_model, fitted_pipeline, settings
from tests.unit.test_serving_handlers import AUTH, app_parts  # noqa: F401 (a fixture)

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def rollout(mode: str, share: float, rollout_id: str = "r-1") -> Rollout:
    return Rollout("driver_trip_completion", rollout_id, mode, share, "3", "4", NOW, NOW)


def keys_of(variant: str, running: Rollout, count: int, prefix: str = "customer") -> list[str]:
    """`count` keys the rollout assigns to `variant`."""
    found = [f"{prefix}-{i}" for i in range(count * 40)]
    return [k for k in found if running.answering_variant(k) == variant][:count]


# ---------------------------------------------------------------------------------------------
# sticky assignment
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "share"), [(CANARY, 0.1), (AB, 0.5), (CANARY, 0.02)])
def test_the_measured_share_is_within_four_sigma_of_the_configured_one(mode, share):
    running = rollout(mode, share)
    n = 20_000
    on_challenger = sum(running.answering_variant(f"key-{i}") == CHALLENGER for i in range(n))
    sigma = math.sqrt(n * share * (1 - share))
    assert abs(on_challenger - n * share) <= 4 * sigma, (on_challenger, n * share)


def test_a_key_keeps_its_variant_and_raising_the_share_keeps_challenger_keys_there():
    small, large = rollout(CANARY, 0.1), rollout(CANARY, 0.3)
    keys = [f"k{i}" for i in range(2000)]
    first = [small.answering_variant(k) for k in keys]
    assert first == [small.answering_variant(k) for k in keys]
    assert all(large.answering_variant(k) == CHALLENGER for k, v in zip(keys, first, strict=True) if v == CHALLENGER)
    redrawn = rollout(CANARY, 0.1, rollout_id="r-2")
    assert [redrawn.answering_variant(k) for k in keys] != first, "a new rollout draws anew"


def test_shadow_mode_always_answers_with_the_champion():
    running = rollout(SHADOW, 0.0)
    assert running.shadowing and {running.answering_variant(f"k{i}") for i in range(500)} == {CHAMPION}
    assert 0.0 <= assignment_point("r", "k") < 1.0


# ---------------------------------------------------------------------------------------------
# events: wire round trip and validation of the variant fields
# ---------------------------------------------------------------------------------------------
def stored_rows(record: PredictionRecord) -> list[dict]:
    results = [validate_prediction(v, now=datetime.now(UTC)) for v in messages_from_wire(record.to_wire()).values]
    assert not [r for r in results if isinstance(r, Rejection)], results
    return [dict(zip(PREDICTION_COLUMNS, r.row(), strict=True)) for r in results]


def test_a_challengers_record_round_trips_into_rows_with_its_variant_fields():
    record = PredictionRecord("predictions", "q-1", "m", "4", FEATURES, [11, 12], [(0.5, 0.25, 3), (0.1, 0.2, 4)],
                              [0.75, 0.5], time.time(), CHALLENGER, False, "r-1", 1.25)
    rows = stored_rows(record)
    assert [(r["driver_id"], r["score"], r["variant"], r["served"], r["rollout_id"], r["latency_ms"], r["error"])
            for r in rows] == [(11, 0.75, CHALLENGER, False, "r-1", 1.25, None),
                               (12, 0.5, CHALLENGER, False, "r-1", 1.25, None)]


def test_a_failed_variants_record_stores_null_scores_with_its_error():
    record = PredictionRecord("predictions", "q-2", "m", "4", FEATURES, [11], [(0.5, 0.25, 3)], None, time.time(),
                              CHALLENGER, False, "r-1", 0.5, "RuntimeError: non-finite scores")
    (row,) = stored_rows(record)
    assert row["score"] is None and row["error"] == "RuntimeError: non-finite scores" and row["served"] is False


def test_an_event_made_before_rollouts_reads_as_the_served_champion():
    old = {"type": "prediction", "topic": "predictions", "request_id": "q-3", "model_name": "m",
           "model_version": "3", "features": list(FEATURES), "driver_ids": [11], "values": [[0.5, 0.25, 3]],
           "scores": [0.5], "predicted_at": time.time()}
    (value,) = messages_from_wire(json.dumps(old).encode()).values
    for payload in (value, json.dumps({k: v for k, v in json.loads(value).items() if k not in (
            "variant", "served", "rollout_id", "latency_ms", "error")}).encode()):
        result = validate_prediction(payload)
        assert (result.variant, result.served, result.rollout_id, result.latency_ms, result.error) == (
            CHAMPION, True, None, None, None)


def event(**changes) -> bytes:
    payload = {"request_id": "q", "driver_id": 1, "features": {"conv_rate": 0.5}, "score": 0.5, "model_name": "m",
               "model_version": "4", "predicted_at": "2026-11-30T12:00:00+00:00", "variant": "challenger",
               "served": False, "rollout_id": "r-1", "latency_ms": 2.0, "error": None, **changes}
    return json.dumps(payload).encode()


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"variant": "blue"}, "variant", "expected one of champion, challenger"),
    ({"variant": 1}, "variant", "expected one of champion, challenger"),
    ({"served": "yes"}, "served", "expected true or false"),
    ({"latency_ms": -1}, "latency_ms", "finite number >= 0"),
    ({"rollout_id": ""}, "rollout_id", "not blank"),
    ({"error": "boom"}, "score", "expected null for a variant that failed"),
    ({"score": None}, "score", "required, but null"),
    ({"error": "boom", "score": None, "served": True}, "served", "expected false for a variant that failed"),
    ({"error": 5, "score": None}, "error", "expected null or the reason"),
])
def test_invalid_variant_fields_are_refused_naming_the_field(changes, field, words):
    result = validate_prediction(event(**changes), now=NOW)
    assert isinstance(result, Rejection) and result.field == field and words in result.reason, result


def test_a_failed_variant_without_served_reads_as_not_served():
    payload = json.loads(event(error="boom", score=None))
    del payload["served"]
    result = validate_prediction(json.dumps(payload).encode(), now=NOW)
    assert result.score is None and result.served is False


# ---------------------------------------------------------------------------------------------
# /predict in each mode (stub features, fitted models, events captured)
# ---------------------------------------------------------------------------------------------
class NaNPipeline:
    def predict(self, matrix):
        return np.full(len(matrix), np.nan)


class BlockedPipeline:
    """Scores only once released: a challenger that hangs."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict(self, matrix):
        self.release.wait(30)
        return np.zeros(len(matrix))


def challenger_model(pipeline=None, version: str = "4") -> LoadedModel:
    if pipeline is None:
        return replace(fitted_model(version), pipeline=fitted_pipeline(seed=7), exact=None)
    return LoadedModel("driver_trip_completion", version, f"run-{version}", FEATURES, pipeline, time.time())


@pytest.fixture
def parts(app_parts):  # noqa: F811
    client, serving = app_parts
    records: list[PredictionRecord] = []
    serving.publisher.publish = lambda record: records.append(record) or True
    return client, serving, records


def post(client, **body):
    return client.post("/predict", json={"driver_ids": [13, 99, 12, 11, 14], **body}, headers=AUTH)


def test_canary_answers_with_the_variant_the_customer_is_assigned_to(parts):
    client, serving, records = parts
    running = rollout(CANARY, 0.5)
    serving.rollout.view = RolloutView(running, challenger_model())
    for variant in (CHALLENGER, CHAMPION):
        for customer in keys_of(variant, running, 3):
            response = post(client, customer_id=customer)
            assert response.status_code == 200, response.text
            assert response.json()["model"]["variant"] == variant == response.headers["x-model-variant"]
            assert response.json()["model"]["version"] == ("4" if variant == CHALLENGER else "3")
            record = records.pop()
            assert (record.variant, record.served, record.rollout_id, record.model_version) == (
                variant, True, "r-1", "4" if variant == CHALLENGER else "3")
            assert record.latency_ms >= 0 and record.error is None and not records
    without_customer = keys_of(CHALLENGER, running, 1, prefix="request")[0]
    assert post(client, request_id=without_customer).json()["model"]["variant"] == CHALLENGER


@pytest.mark.parametrize("challenger", [challenger_model(NaNPipeline()), None], ids=["non-finite", "not-loaded"])
def test_a_failing_challenger_never_fails_a_request_and_its_failure_is_logged(parts, challenger):
    client, serving, records = parts
    champion_body = post(client, request_id="same").json()  # no rollout yet
    records.clear()
    running = rollout(CANARY, 0.5)
    serving.rollout.view = RolloutView(running, challenger, "" if challenger else "ModelLoadError: no such feature")
    customer = keys_of(CHALLENGER, running, 1)[0]
    response = post(client, request_id="same", customer_id=customer)
    assert response.status_code == 200 and response.json() == champion_body
    assert response.headers["x-model-variant"] == CHAMPION
    answered, failed = records
    assert (answered.variant, answered.served, answered.error) == (CHAMPION, True, None)
    assert (failed.variant, failed.served, failed.model_version, failed.scores) == (CHALLENGER, False, "4", None)
    assert failed.driver_ids == answered.driver_ids and failed.error
    if challenger is None:
        assert "no such feature" in failed.error
    assert exposed(client, "serving_variant_requests_total", variant=CHALLENGER, model_version="4",
                   outcome="error") == 1
    assert exposed(client, "serving_variant_requests_total", variant=CHAMPION, model_version="3",
                   outcome="fallback") == 1


def exposed(client, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    body = client.get("/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def test_shadow_mode_returns_exactly_what_champion_mode_returns(parts):
    client, serving, records = parts
    before = post(client, request_id="shadow-1")
    serving.rollout.view = RolloutView(rollout(SHADOW, 0.0), challenger_model(NaNPipeline()))
    during = post(client, request_id="shadow-1", customer_id="anyone")
    assert during.status_code == 200 and during.content == before.content
    assert during.headers["x-model-variant"] == CHAMPION


def run_shadow(serving, view: RolloutView, records: list) -> None:
    from model_serving import handlers

    champion = serving.models.current
    rows = asyncio.run(serving.features.read([11, 12, 99], champion.features))

    async def shadowed():
        await handlers._shadow(serving, view, "s-1", champion.features, rows, time.time())

    asyncio.run(shadowed())


def test_the_shadow_challenger_is_logged_not_served(parts):
    _client, serving, records = parts
    challenger = challenger_model()
    run_shadow(serving, RolloutView(rollout(SHADOW, 0.0), challenger), records)
    (record,) = records
    assert (record.variant, record.served, record.rollout_id, record.error) == (CHALLENGER, False, "r-1", None)
    assert record.driver_ids == [11, 12]
    expected = challenger.pipeline.predict(np.array(record.values, dtype=np.float64))
    assert record.scores == pytest.approx(expected.tolist(), rel=1e-12)


def test_a_hanging_shadow_challenger_times_out_into_an_error_row_and_holds_its_place(parts):
    _client, serving, records = parts
    blocked = BlockedPipeline()
    serving.shadow = ShadowScorer(serving.metrics, concurrency=1, timeout=0.05)
    view = RolloutView(rollout(SHADOW, 0.0), challenger_model(blocked))
    try:
        run_shadow(serving, view, records)
        (record,) = records
        assert record.scores is None and record.error.startswith("TimeoutError") and record.served is False
        assert serving.shadow.running == 1, "the stuck call keeps its place until it returns"

        async def submit_while_full() -> bool:
            return serving.shadow.submit(lambda: asyncio.sleep(0))

        assert asyncio.run(submit_while_full()) is False
        assert exposed(_client, "serving_shadow_skipped_total") == 1
    finally:
        blocked.release.set()


# ---------------------------------------------------------------------------------------------
# the rollout watcher: state changes, a PostgreSQL outage, challenger loads
# ---------------------------------------------------------------------------------------------
class Models:
    """The model store's `load`: counts downloads, fails for versions in `broken`."""

    def __init__(self, broken: tuple[str, ...] = ()) -> None:
        self.loads: list[str] = []
        self.broken = broken

    def load(self, version: str) -> LoadedModel:
        self.loads.append(version)
        if version in self.broken:
            raise RuntimeError(f"version {version} needs feature trips_today, which the store does not serve")
        return challenger_model(version=version)


def test_the_watcher_follows_the_state_keeps_it_through_an_outage_and_loads_a_challenger_once():
    state: dict = {"value": None}

    def read():
        if isinstance(state["value"], Exception):
            raise state["value"]
        return state["value"]

    models, changes = Models(), []
    watcher = RolloutWatcher(settings(), models, on_change=lambda old, new: changes.append(new), read=read)
    assert watcher.refresh().rollout is None
    state["value"] = rollout(CANARY, 0.1)
    assert watcher.refresh().challenger.version == "4"
    state["value"] = rollout(AB, 0.5)  # same challenger, new mode: no new download
    assert watcher.refresh().rollout.mode == AB and models.loads == ["4"]
    state["value"] = ConnectionError("PostgreSQL down")
    assert watcher.refresh().rollout.mode == AB and watcher.state_problem
    state["value"] = None
    assert watcher.refresh() == RolloutView() and not watcher.state_problem
    assert [c.rollout.mode if c.rollout else CHAMPION for c in changes] == [CANARY, AB, CHAMPION]


def test_a_challenger_that_cannot_load_is_a_problem_of_the_view_retried_later():
    models = Models(broken=("4",))
    watcher = RolloutWatcher(settings(), models, read=lambda: rollout(CANARY, 0.1))
    view = watcher.refresh()
    assert view.challenger is None and "trips_today" in view.challenger_problem()
    watcher.refresh()
    assert models.loads == ["4"], "a failed version is not downloaded again on every refresh"


def test_a_version_held_as_challenger_is_reused_not_downloaded_again():
    from model_serving.model_store import ModelStore

    challenger = challenger_model(version="4")
    models = ModelStore(settings(), held=lambda: (None, challenger))
    models._current = fitted_model("3")
    assert models.load("4") is challenger and models.load("3") is models.current
    assert models.loaded("5") is None


def test_a_promoted_challenger_becomes_the_champion_without_a_download():
    from types import SimpleNamespace

    from model_serving.model_store import ModelStore

    challenger = challenger_model(version="4")
    models = ModelStore(settings(), held=lambda: (challenger,))
    models._current = fitted_model("3")
    models.alias_target = lambda: SimpleNamespace(version="4", run_id="run-4")  # the alias moved by a promotion
    assert models.refresh() and models.current is challenger
