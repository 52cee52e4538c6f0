"""The message contracts of the `predictions` and `ground_truth` topics, and their validators.

The online API publishes one message per scored driver of a /predict request (key: request_id):

    {"request_id": "3f2c...", "driver_id": 1001,
     "features": {"conv_rate": 0.61, "acc_rate": 0.88, "avg_daily_trips": 14.0},
     "score": 0.74, "model_name": "driver_trip_completion", "model_version": "3",
     "predicted_at": "2025-05-01T12:00:00.123+00:00"}

and one per /feedback call:

    {"request_id": "3f2c...", "driver_id": 1001, "trip_completed": 1,
     "observed_at": "2025-05-01T12:20:00.000+00:00"}

`features` holds the model's inputs: a feature may be null (the online store had no value and the
model imputed it) or absent (a model trained on a subset of the feature service); both are stored as
NULL, but at least one known feature must be there. `score` is any finite number (a regression score
is not bounded to [0, 1]); `model_version` may be a string or an integer; `trip_completed` is 0, 1,
true or false. Timestamps need an explicit UTC offset. Unknown fields, and unknown features, are
ignored. The key is not checked: nothing downstream depends on how the topics are partitioned.

The reason classes, the field checks and the dead-letter record are the platform's
(mlops_platform.messages), so every dead-letter topic of the platform reads the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlops_platform.messages import (
    MAX_BIGINT,
    MISSING_FIELD,
    OUT_OF_RANGE,
    WRONG_TYPE,
    Invalid,
    Rejection,
    checked,
    finite,
    format_timestamp,
    integer,
    json_object,
    rate,
    short,
    text,
    timestamp,
)
from model_serving.prediction_store import FEATURES

PREDICTION_FIELDS = ("request_id", "driver_id", "features", "score", "model_name", "model_version", "predicted_at")
GROUND_TRUTH_FIELDS = ("request_id", "driver_id", "trip_completed", "observed_at")


@dataclass(frozen=True, slots=True)
class Prediction:
    request_id: str
    driver_id: int
    features: dict[str, float | None]  # every known feature; None where not given
    score: float
    model_name: str
    model_version: str
    predicted_at: datetime

    def row(self) -> tuple[Any, ...]:
        """The prediction_log row (prediction_store.PREDICTION_COLUMNS order)."""
        return (self.request_id, self.driver_id, json.dumps(self.features),
                *(self.features[name] for name in FEATURES), self.score, self.model_name, self.model_version,
                self.predicted_at)


@dataclass(frozen=True, slots=True)
class GroundTruth:
    request_id: str
    driver_id: int
    trip_completed: int
    observed_at: datetime

    def row(self) -> tuple[Any, ...]:
        """The ground_truth row (prediction_store.GROUND_TRUTH_COLUMNS order)."""
        return (self.request_id, self.driver_id, self.trip_completed, self.observed_at)


def dlq_topic(topic: str) -> str:
    """Where a topic's refused messages go."""
    return f"{topic}_dlq"


# ---------------------------------------------------------------------------------------------
# Wire form (what the API produces; used by tests and tools)
# ---------------------------------------------------------------------------------------------
def encode_prediction(prediction: Prediction) -> bytes:
    return json.dumps({
        "request_id": prediction.request_id,
        "driver_id": prediction.driver_id,
        "features": prediction.features,
        "score": prediction.score,
        "model_name": prediction.model_name,
        "model_version": prediction.model_version,
        "predicted_at": format_timestamp(prediction.predicted_at),
    }).encode()


def encode_ground_truth(truth: GroundTruth) -> bytes:
    return json.dumps({
        "request_id": truth.request_id,
        "driver_id": truth.driver_id,
        "trip_completed": truth.trip_completed,
        "observed_at": format_timestamp(truth.observed_at),
    }).encode()


# ---------------------------------------------------------------------------------------------
# Field checks
# ---------------------------------------------------------------------------------------------
def _features(payload: dict) -> dict[str, float | None]:
    features = payload["features"]
    if not isinstance(features, dict):
        raise Invalid(WRONG_TYPE, "features",
                      f"features: expected an object of {', '.join(FEATURES)}, got {type(features).__name__} "
                      f"{short(features)}")
    if not any(name in features for name in FEATURES):
        raise Invalid(MISSING_FIELD, "features",
                      f"features: expected at least one of {', '.join(FEATURES)}, got keys {short(sorted(features))}")
    found: dict[str, float | None] = {}
    for name in FEATURES:
        if features.get(name) is None:
            found[name] = None
        elif name == "avg_daily_trips":
            found[name] = finite(features, name, minimum=0.0)
        else:
            found[name] = rate(features, name)
    return found


def _outcome(payload: dict) -> int:
    value = payload["trip_completed"]
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int):
        raise Invalid(WRONG_TYPE, "trip_completed",
                      f"trip_completed: expected 0, 1, true or false, got {type(value).__name__} {short(value)}")
    if value not in (0, 1):
        raise Invalid(OUT_OF_RANGE, "trip_completed", f"trip_completed: expected 0 or 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Validators
# ---------------------------------------------------------------------------------------------
def validate_prediction(value: bytes | None, now: datetime | None = None) -> Prediction | Rejection:
    """A clean prediction, or the first contract violation found (fields are checked in a fixed order)."""
    def parse() -> Prediction:
        payload = json_object(value, PREDICTION_FIELDS)
        return Prediction(
            request_id=text(payload, "request_id"),
            driver_id=integer(payload, "driver_id", 1, MAX_BIGINT),
            features=_features(payload),
            score=finite(payload, "score"),
            model_name=text(payload, "model_name"),
            model_version=text(payload, "model_version", allow_int=True),
            predicted_at=timestamp(payload, "predicted_at", now or datetime.now(UTC)),
        )
    return checked(parse)


def validate_ground_truth(value: bytes | None, now: datetime | None = None) -> GroundTruth | Rejection:
    """A clean outcome, or the first contract violation found (fields are checked in a fixed order)."""
    def parse() -> GroundTruth:
        payload = json_object(value, GROUND_TRUTH_FIELDS)
        return GroundTruth(
            request_id=text(payload, "request_id"),
            driver_id=integer(payload, "driver_id", 1, MAX_BIGINT),
            trip_completed=_outcome(payload),
            observed_at=timestamp(payload, "observed_at", now or datetime.now(UTC)),
        )
    return checked(parse)
