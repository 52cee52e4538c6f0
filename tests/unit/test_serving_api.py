"""The online API's parts without services: validation, feature decoding, model swaps, events, auth.

The app itself (handlers, middleware, schema) is tested in test_serving_handlers.py."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from feast_repo.features import FEATURE_NAMES
from model_serving import schemas
from model_serving.auth import BearerAuth
from model_serving.events import FeedbackRecord, PredictionRecord, messages_from_wire
from model_serving.features import FeatureSpec, OnlineRows
from model_serving.linear_form import exact_form
from model_serving.model_store import LoadedModel, ModelLoadError, ModelStore, signature_features
from model_serving.served import RecentRequests
from tests.conftest import build_settings, register_version

FEATURES = FEATURE_NAMES
# Pipelines fitted on DataFrames and scored on matrices, as the API does on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


def settings(**overrides: str):
    return build_settings(**{"SERVING_AUTH": "off", "SERVING_MAX_DRIVERS": "5", "MODEL_REFRESH_SECONDS": "5",
                             **overrides})


def fitted_pipeline(seed: int = 0):
    from training_pipeline.model import make_model

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.random((200, 3)) * [1, 1, 50], columns=list(FEATURES))
    y = (x["conv_rate"] + 0.5 * x["acc_rate"] > 0.8).astype(float)
    return make_model(0.001, 0.5, seed).fit(x, y)


def fitted_model(version: str = "3", exact: bool = True) -> LoadedModel:
    pipeline = fitted_pipeline()
    return LoadedModel("driver_trip_completion", version, f"run-{version}", FEATURES, pipeline, time.time(),
                       exact_form(pipeline, 3) if exact else None)


# ---------------------------------------------------------------------------------------------
# request validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ids", "where"), [
    ([], ("driver_ids",)), ([1, 2, 3, 4, 5, 6], ("driver_ids",)), (["7"], ("driver_ids", 0)),
    ([True], ("driver_ids", 0)), ([7.5], ("driver_ids", 0)), ([0], ("driver_ids", 0)), ([-3], ("driver_ids", 0)),
    ([2**53], ("driver_ids", 0)), ([2**63], ("driver_ids", 0)), ([4, 9, 4], ("driver_ids",)),
])
def test_driver_ids_are_distinct_strict_positive_int64s_within_the_limit(ids, where):
    model = schemas.predict_request_model(5)
    with pytest.raises(ValidationError) as error:
        model.model_validate({"driver_ids": ids})
    assert where in [e["loc"] for e in error.value.errors()]


def test_a_valid_request_keeps_its_order_and_its_id():
    request = schemas.predict_request_model(5).model_validate({"request_id": "a-1", "driver_ids": [9, 2**53 - 1, 1]})
    assert request.driver_ids == [9, 2**53 - 1, 1] and request.request_id == "a-1"


@pytest.mark.parametrize("request_id", ["", "x" * 65, "with space", "tab\t", "é"])
def test_request_ids_are_1_to_64_visible_ascii_characters(request_id):
    with pytest.raises(ValidationError):
        schemas.predict_request_model(5).model_validate({"request_id": request_id, "driver_ids": [1]})


@pytest.mark.parametrize("flag", [2, True, "1", 0.5, 2.0, None])
def test_trip_completed_is_the_integer_0_or_1(flag):
    with pytest.raises(ValidationError):
        schemas.FeedbackRequest.model_validate({"request_id": "r", "driver_id": 1, "trip_completed": flag})
    assert schemas.FeedbackRequest.model_validate({"request_id": "r", "driver_id": 1, "trip_completed": 0})


def test_a_number_with_a_zero_fraction_is_the_integer_json_schema_counts_it_as():
    feedback = schemas.FeedbackRequest.model_validate({"request_id": "r", "driver_id": 432.0, "trip_completed": 1.0})
    assert (feedback.driver_id, feedback.trip_completed) == (432, 1)
    assert type(feedback.driver_id) is int and type(feedback.trip_completed) is int
    assert schemas.predict_request_model(5).model_validate({"driver_ids": [1e3, 7]}).driver_ids == [1000, 7]


# ---------------------------------------------------------------------------------------------
# feature decoding (Feast's byte layouts, built with Feast's own encoder)
# ---------------------------------------------------------------------------------------------
def decoder(ttl: float = 3600.0):
    from model_serving.features import FeatureDecoder

    return FeatureDecoder(FeatureSpec("ride_mlops", "driver_stats", "driver_id",
                                      {"conv_rate": "float", "acc_rate": "float", "avg_daily_trips": "int"}, ttl, 3))


def reply(dec, conv, acc, trips, age_seconds: float, now: float) -> list[bytes | None]:
    enc = dec.encoding
    values = [None if v is None else enc.value(kind, v) for v, kind in ((conv, "float"), (acc, "float"),
                                                                        (trips, "int"))]
    return [*values, enc.timestamp(int((now - age_seconds) * 1_000_000))]


def test_values_decode_as_feast_reads_them_and_stale_or_partial_drivers_are_missing():
    from feast.protos.feast.types.Value_pb2 import Value

    dec, now = decoder(), time.time()
    replies = [reply(dec, 0.3, 0.7, 12, 60, now), reply(dec, 0.1, None, 3, 60, now),
               reply(dec, 0.5, 0.5, 5, 7200, now), [None, None, None, None], reply(dec, 0.9, 0.8, 2**40, 0, now)]
    rows = dec.decode([1, 2, 3, 4, 5], replies, now)
    assert rows == OnlineRows([1, 5], [(float(np.float32(0.3)), float(np.float32(0.7)), 12),
                                       (float(np.float32(0.9)), float(np.float32(0.8)), 2**40)], [2, 3, 4], 1)
    raw = replies[0][0]
    assert rows.values[0][0] == Value.FromString(raw).float_val


def test_a_ttl_of_zero_never_expires():
    dec, now = decoder(ttl=0.0), time.time()
    assert dec.decode([1], [reply(dec, 0.3, 0.7, 1, 10 * 86400, now)], now).driver_ids == [1]


def test_asking_for_a_feature_the_view_lacks_names_both_sides():
    with pytest.raises(KeyError, match=r"\['speed'\] are not in feature view 'driver_stats'"):
        decoder().fields(["conv_rate", "speed"])


# ---------------------------------------------------------------------------------------------
# the model store
# ---------------------------------------------------------------------------------------------
def test_the_store_swaps_when_the_alias_moves_and_keeps_the_old_model_when_a_load_fails(monkeypatch,
                                                                                       temporary_mlflow):
    from model_serving import model_store

    swaps, failures = [], []
    store = ModelStore(settings(MODEL_NAME="swap-test"), on_failure=failures.append,
                       on_swap=lambda old, new: swaps.append((old and old.version, new.version)))
    store._client = temporary_mlflow
    assert not store.refresh() and store.current is None and "has no alias 'champion'" in store.problem

    def promote() -> str:
        return register_version(temporary_mlflow, "swap-test", alias="champion")

    broken = set()

    def load(name, version, run_id, served, uri):
        if version in broken:
            raise ModelLoadError(f"version {version} is broken")
        return fitted_model(version)

    monkeypatch.setattr(model_store, "load_version", load)
    good = promote()
    assert store.refresh() and store.current.version == good
    first = store.current
    assert not store.refresh() and store.current is first, "same version: nothing reloaded"
    broken.add(bad := promote())
    assert not store.refresh() and store.current is first, "a failed load keeps serving the old model"
    assert store.reload_failures == 1 and failures == [f"version {bad} is broken"]
    assert not store.refresh() and store.reload_failures == 1, "a failed version is not retried at once"
    fixed = promote()
    assert store.refresh() and store.current.version == fixed
    assert swaps == [(None, good), (good, fixed)] and store.reloads == 2


def test_the_feature_order_comes_from_the_signature_and_must_match_the_fit():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    model = fitted_model()
    signature = ModelSignature(Schema([ColSpec("double", name) for name in FEATURES]))
    assert signature_features(SimpleNamespace(signature=signature), model.pipeline, "m") == FEATURES
    reordered = ModelSignature(Schema([ColSpec("double", name) for name in reversed(FEATURES)]))
    with pytest.raises(ModelLoadError, match="same columns in the same order"):
        signature_features(SimpleNamespace(signature=reordered), model.pipeline, "m")
    with pytest.raises(ModelLoadError, match="without a signature"):
        signature_features(SimpleNamespace(signature=None), model.pipeline, "m")


@pytest.mark.parametrize("exact", [True, False])
def test_predicting_on_a_matrix_equals_the_pipeline_on_a_dataframe(exact):
    model, rng = fitted_model(exact=exact), np.random.default_rng(4)
    assert (model.exact is not None) == exact
    for size in (1, 7, 10, 33, 500):
        rows = [tuple(row) for row in rng.random((size, 3)) * [1, 1, 40]]
        frame = pd.DataFrame(rows, columns=list(FEATURES))
        matrix = np.array(rows, dtype=np.float64, order="F")  # as the API builds it
        assert model.predict(matrix).tolist() == model.pipeline.predict(frame).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_the_exact_form_is_bit_identical_to_the_pipeline(seed):
    pipeline, rng = fitted_pipeline(seed), np.random.default_rng(100 + seed)
    form = exact_form(pipeline, 3)
    assert form is not None
    for size in range(1, 60):
        matrix = rng.normal(0, 30, (size, 3))
        for layout in (np.asfortranarray(matrix), np.ascontiguousarray(matrix)):
            assert np.array_equal(form(layout), pipeline.predict(layout))


def test_a_nan_input_goes_through_the_imputer():
    model = fitted_model()
    matrix = np.array([[0.5, np.nan, 10.0], [0.2, 0.3, 4.0]], order="F")
    assert model.predict(matrix).tolist() == model.pipeline.predict(matrix).tolist()
    assert np.isfinite(model.predict(matrix)).all()


def test_other_pipelines_have_no_exact_form():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import ElasticNet
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    x, y = np.random.default_rng(0).random((50, 3)), np.random.default_rng(1).random(50)
    others = [
        Pipeline([("i", SimpleImputer(add_indicator=True)), ("s", StandardScaler()), ("r", ElasticNet())]),
        Pipeline([("i", SimpleImputer(missing_values=0.0)), ("s", StandardScaler()), ("r", ElasticNet())]),
        Pipeline([("i", SimpleImputer()), ("s", MinMaxScaler()), ("r", ElasticNet())]),
        Pipeline([("s", StandardScaler()), ("r", ElasticNet())]),
    ]
    for pipeline in others:
        assert exact_form(pipeline.fit(x, y), 3) is None, pipeline
    assert exact_form(ElasticNet().fit(x, y), 3) is None


def test_a_matrix_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        fitted_model().predict(np.ones((2, 2)))


# ---------------------------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------------------------
def test_a_prediction_record_expands_into_one_contract_event_per_driver():
    record = PredictionRecord("predictions", "req-1", "m", "7", FEATURES, [11, 12], [(0.5, 0.25, 3), (0.1, 0.2, 4)],
                              [0.9, -0.1], 1_700_000_000.123)
    messages = messages_from_wire(record.to_wire())
    assert messages.topic == "predictions" and messages.key == b"req-1" and messages.count == 2
    first = json.loads(messages.values[0])
    assert first == {"request_id": "req-1", "driver_id": 11,
                     "features": {"conv_rate": 0.5, "acc_rate": 0.25, "avg_daily_trips": 3}, "score": 0.9,
                     "model_name": "m", "model_version": "7", "predicted_at": "2023-11-14T22:13:20.123+00:00",
                     "variant": "champion", "served": True, "rollout_id": None, "latency_ms": None, "error": None}
    assert datetime.fromisoformat(first["predicted_at"]).utcoffset() == timedelta(0)


def test_a_feedback_record_is_one_ground_truth_event():
    messages = messages_from_wire(FeedbackRecord("ground_truth", "req-1", 11, 1, 1_700_000_060.0).to_wire())
    assert json.loads(messages.values[0]) == {"request_id": "req-1", "driver_id": 11, "trip_completed": 1,
                                              "observed_at": "2023-11-14T22:14:20.000+00:00"}


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"type": "other", "topic": "t", "request_id": "r"}'])
def test_a_malformed_record_is_refused(data):
    with pytest.raises(ValueError):
        messages_from_wire(data)


# ---------------------------------------------------------------------------------------------
# auth and recent requests
# ---------------------------------------------------------------------------------------------
def test_bearer_auth_accepts_only_the_exact_token():
    from fastapi import HTTPException

    auth = BearerAuth(True, "s3cret")
    auth.check("Bearer s3cret")
    auth.check("bearer  s3cret ")
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"):
        with pytest.raises(HTTPException) as error:
            auth.check(header)
        assert error.value.status_code == 401 and error.value.headers == {"WWW-Authenticate": "Bearer"}
    BearerAuth(False, "").check(None)
    with pytest.raises(ValueError, match="token is empty"):
        BearerAuth(True, "")


def test_recent_requests_are_bounded_in_count_and_age():
    recent = RecentRequests(capacity=2, max_age_seconds=10)
    recent.remember("a", [1, 2], now=0)
    recent.remember("a", [3], now=1)
    assert recent.contains("a", 1, now=2) and recent.contains("a", 3, now=2) and not recent.contains("a", 4, now=2)
    recent.remember("b", [1], now=3)
    recent.remember("c", [1], now=4)
    assert not recent.contains("a", 1, now=5) and len(recent) == 2, "the oldest request is evicted first"
    assert recent.contains("b", 1, now=12) and not recent.contains("b", 1, now=14)
