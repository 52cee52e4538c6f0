"""The predictions and ground-truth contracts: what passes, what is refused and how."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from mlops_platform.messages import Rejection
from model_serving import prediction_messages as pm
from model_serving.prediction_store import GROUND_TRUTH_COLUMNS, PREDICTION_COLUMNS, replace_batch_predictions

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)
DROP = object()


def prediction(**changes) -> dict:
    base = {
        "request_id": "req-1",
        "driver_id": 1001,
        "features": {"conv_rate": 0.61, "acc_rate": 0.88, "avg_daily_trips": 14},
        "score": 0.74,
        "model_name": "driver_trip_completion",
        "model_version": "3",
        "predicted_at": "2025-05-01T13:59:59.123+02:00",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def outcome(**changes) -> dict:
    base = {"request_id": "req-1", "driver_id": 1001, "trip_completed": 1,
            "observed_at": "2025-05-01T12:20:00.000Z"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def check_prediction(payload):
    raw = payload if isinstance(payload, bytes | None) else json.dumps(payload).encode()
    return pm.validate_prediction(raw, NOW)


def check_outcome(payload):
    raw = payload if isinstance(payload, bytes | None) else json.dumps(payload).encode()
    return pm.validate_ground_truth(raw, NOW)


# ---------------------------------------------------------------------------------------------
# valid messages
# ---------------------------------------------------------------------------------------------
def test_a_valid_prediction_becomes_a_clean_record_in_utc():
    result = check_prediction(prediction())
    assert result == pm.Prediction(
        request_id="req-1", driver_id=1001, features={"conv_rate": 0.61, "acc_rate": 0.88, "avg_daily_trips": 14.0},
        score=0.74, model_name="driver_trip_completion", model_version="3",
        predicted_at=datetime(2025, 5, 1, 11, 59, 59, 123000, tzinfo=UTC))
    assert isinstance(result.features["avg_daily_trips"], float)


def test_the_prediction_row_follows_the_table_columns():
    row = check_prediction(prediction()).row()
    assert len(row) == len(PREDICTION_COLUMNS)
    values = dict(zip(PREDICTION_COLUMNS, row, strict=True))
    assert json.loads(values["features"]) == {"conv_rate": 0.61, "acc_rate": 0.88, "avg_daily_trips": 14.0}
    assert (values["conv_rate"], values["acc_rate"], values["avg_daily_trips"]) == (0.61, 0.88, 14.0)
    assert values["request_id"] == "req-1" and values["score"] == 0.74


@pytest.mark.parametrize("changes", [
    {"score": -0.3}, {"score": 1.7},  # a regression score is not bounded to [0, 1]
    {"model_version": 3},  # MLflow versions are numbers; the API may send one as such
    {"features": {"conv_rate": None, "acc_rate": 0.5, "avg_daily_trips": None}},  # imputed by the model
    {"features": {"conv_rate": 0.5, "acc_rate": 0.5}},  # a model trained on a subset of the features
    {"region": "north"},  # unknown fields are ignored
])
def test_what_a_prediction_may_look_like(changes):
    result = check_prediction(prediction(**changes))
    assert isinstance(result, pm.Prediction), result
    assert result.model_version in ("3",)


def test_a_feature_not_given_is_stored_as_null():
    result = check_prediction(prediction(features={"acc_rate": 0.5, "avg_daily_trips": 3, "speed": 9}))
    assert result.features == {"conv_rate": None, "acc_rate": 0.5, "avg_daily_trips": 3.0}
    values = dict(zip(PREDICTION_COLUMNS, result.row(), strict=True))
    assert values["conv_rate"] is None and json.loads(values["features"])["conv_rate"] is None


def test_outcomes_accept_booleans_and_integers():
    assert check_outcome(outcome(trip_completed=True)).trip_completed == 1
    assert check_outcome(outcome(trip_completed=False)).trip_completed == 0
    result = check_outcome(outcome(trip_completed=0))
    assert result == pm.GroundTruth("req-1", 1001, 0, datetime(2025, 5, 1, 12, 20, tzinfo=UTC))
    assert len(result.row()) == len(GROUND_TRUTH_COLUMNS)


def test_the_wire_form_round_trips():
    record = check_prediction(prediction())
    assert pm.validate_prediction(pm.encode_prediction(record), NOW) == record
    truth = check_outcome(outcome())
    assert pm.validate_ground_truth(pm.encode_ground_truth(truth), NOW) == truth


# ---------------------------------------------------------------------------------------------
# refused messages: the reason class, the field, and a reason that says what was expected and found
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("payload", "reason_class", "field", "words"), [
    (b"{nope", "unparseable_json", None, "expected JSON"),
    (None, "unparseable_json", None, "null value"),
    ([1, 2], "not_an_object", None, "got list"),
    (prediction(score=DROP), "missing_field", "score", "score: required, but missing"),
    (prediction(model_name=None), "missing_field", "model_name", "model_name: required, but null"),
    (prediction(request_id=7), "wrong_type", "request_id", "expected a string, got int"),
    (prediction(request_id="  "), "out_of_range", "request_id", "not blank"),
    (prediction(request_id="x" * 201), "out_of_range", "request_id", "1 to 200 characters"),
    (prediction(model_name="m\u0000"), "out_of_range", "model_name", "no NUL character"),
    (prediction(driver_id="1001"), "wrong_type", "driver_id", "expected an integer, got str"),
    (prediction(driver_id=0), "out_of_range", "driver_id", "got 0"),
    (prediction(features=[0.1]), "wrong_type", "features", "expected an object of conv_rate"),
    (prediction(features={"speed": 0.1}), "missing_field", "features",
     "expected at least one of conv_rate, acc_rate, avg_daily_trips, got keys ['speed']"),
    (prediction(features={"conv_rate": 1.5, "acc_rate": 0.2, "avg_daily_trips": 3}), "out_of_range", "conv_rate",
     "expected a number in [0, 1], got 1.5"),
    (prediction(features={"conv_rate": 0.5, "acc_rate": 0.2, "avg_daily_trips": -1}), "out_of_range",
     "avg_daily_trips", ">= 0"),
    (prediction(score="high"), "wrong_type", "score", "expected a number, got str"),
    (prediction(score=True), "wrong_type", "score", "got bool"),
    (b'{"request_id": "r", "driver_id": 1, "features": {"conv_rate": 0.1, "acc_rate": 0.1, "avg_daily_trips": 1},'
     b' "score": NaN, "model_name": "m", "model_version": "1", "predicted_at": "2025-05-01T00:00:00Z"}',
     "out_of_range", "score", "expected a finite number"),
    (prediction(model_version=1.5), "wrong_type", "model_version", "expected a string or an integer, got float"),
    (prediction(predicted_at="2025-05-01T12:00:00"), "bad_timestamp", "predicted_at", "UTC offset"),
    (prediction(predicted_at="yesterday"), "bad_timestamp", "predicted_at", "ISO-8601"),
    (prediction(predicted_at=(NOW + timedelta(days=2)).isoformat()), "future_timestamp", "predicted_at",
     "at most 1 day"),
])
def test_an_invalid_prediction_is_refused_with_its_reason(payload, reason_class, field, words):
    result = check_prediction(payload)
    assert isinstance(result, Rejection), result
    assert (result.reason_class, result.field) == (reason_class, field)
    assert words in result.reason


@pytest.mark.parametrize(("payload", "reason_class", "field", "words"), [
    (outcome(trip_completed=2), "out_of_range", "trip_completed", "expected 0 or 1, got 2"),
    (outcome(trip_completed="yes"), "wrong_type", "trip_completed", "expected 0, 1, true or false, got str"),
    (outcome(trip_completed=None), "missing_field", "trip_completed", "required, but null"),
    (outcome(observed_at=DROP), "missing_field", "observed_at", "required, but missing"),
    (outcome(driver_id=-4), "out_of_range", "driver_id", "got -4"),
    (outcome(observed_at="2025-05-01 12:00"), "bad_timestamp", "observed_at", "UTC offset"),
])
def test_an_invalid_outcome_is_refused_with_its_reason(payload, reason_class, field, words):
    result = check_outcome(payload)
    assert isinstance(result, Rejection), result
    assert (result.reason_class, result.field) == (reason_class, field)
    assert words in result.reason


def test_each_topic_has_its_own_dead_letter_topic():
    assert pm.dlq_topic("predictions") == "predictions_dlq"
    assert pm.dlq_topic("ground_truth") == "ground_truth_dlq"


def test_a_batch_run_only_replaces_rows_of_its_own_run():
    class Cursor:  # the statement must never run
        def execute(self, *args):
            raise AssertionError("no SQL expected")

    with pytest.raises(ValueError, match="belong to run 'a'.*'b'"):
        replace_batch_predictions(Cursor(), "a", [("b", 1, NOW, 0.5, "m", "1")])
