"""The message contracts of the `predictions` and `ground_truth` topics, and their validators.

The online API publishes one message per scored driver of a /predict request (key: request_id):

    {"request_id": "3f2c...", "driver_id": 1001,
     "features": {"conv_rate": 0.61, "acc_rate": 0.88, "avg_daily_trips": 14.0},
     "score": 0.74, "model_name": "driver_trip_completion", "model_version": "3",
     "predicted_at": "2025-05-01T12:00:00.123+00:00", "variant": "champion", "served": true,
     "rollout_id": null, "latency_ms": 1.8, "error": null}

and one per /feedback call:

    {"request_id": "3f2c...", "driver_id": 1001, "trip_completed": 1,
     "observed_at": "2025-05-01T12:20:00.000+00:00"}

`features` holds the model's inputs: a feature may be null (the online store had no value and the
model imputed it) or absent (a model trained on a subset of the feature service); both are stored as
NULL, but at least one known feature must be there. `score` is any finite number (a regression score
is not bounded to [0, 1]); `model_version` may be a string or an integer; `trip_completed` is 0, 1,
true or false. Timestamps need an explicit UTC offset.

The rollout fields (mlops_platform.rollout): `variant` is "champion" or "challenger", `served` a boolean
(was this score the one returned), `rollout_id` a string or null, `latency_ms` a finite number >= 0 or null,
`error` a string or null; `score` is null exactly when `error` is not. An event without them (made before
rollouts) is the champion's, served, outside any rollout. Unknown fields, and unknown features, are
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
from mlops_platform.rollout import CHAMPION, VARIANTS
from model_serving.prediction_store import FEATURES

PREDICTION_FIELDS = ("request_id", "driver_id", "features", "model_name", "model_version", "predicted_at")
MAX_ERROR_TEXT = 2000  # a failed variant's reason, cut to this length
GROUND_TRUTH_FIELDS = ("request_id", "driver_id", "trip_completed", "observed_at")


@dataclass(frozen=True, slots=True)
class Prediction:
    request_id: str
    driver_id: int
    features: dict[str, float | None]  # every known feature; None where not given
    score: float | None  # None exactly when `error` is set
    model_name: str
    model_version: str
    predicted_at: datetime
    variant: str = CHAMPION
    served: bool = True
    rollout_id: str | None = None
    latency_ms: float | None = None
    error: str | None = None

    def row(self) -> tuple[Any, ...]:
        """The prediction_log row (prediction_store.PREDICTION_COLUMNS order)."""
        return (self.request_id, self.driver_id, json.dumps(self.features),
                *(self.features[name] for name in FEATURES), self.score, self.model_name, self.model_version,
                self.predicted_at, self.variant, self.served, self.rollout_id, self.latency_ms, self.error)


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
        "variant": prediction.variant,
        "served": prediction.served,
        "rollout_id": prediction.rollout_id,
        "latency_ms": prediction.latency_ms,
        "error": prediction.error,
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


def _variant(payload: dict) -> str:
    value = payload.get("variant")
    if value is None:
        return CHAMPION
    if value not in VARIANTS:
        raise Invalid(OUT_OF_RANGE if isinstance(value, str) else WRONG_TYPE, "variant",
                      f"variant: expected one of {', '.join(VARIANTS)}, got {type(value).__name__} {short(value)}")
    return value


def _served(payload: dict, error: str | None) -> bool:
    value = payload.get("served")
    if value is None:
        return error is None
    if not isinstance(value, bool):
        raise Invalid(WRONG_TYPE, "served",
                      f"served: expected true or false, got {type(value).__name__} {short(value)}")
    if value and error is not None:
        raise Invalid(OUT_OF_RANGE, "served", f"served: expected false for a variant that failed (error "
                                              f"{short(error)}), got true")
    return value


def _optional(payload: dict, name: str, check) -> Any:
    return None if payload.get(name) is None else check(payload, name)


def _error(payload: dict) -> str | None:
    value = payload.get("error")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise Invalid(WRONG_TYPE, "error", f"error: expected null or the reason the variant failed (a non-blank "
                                           f"string), got {type(value).__name__} {short(value)}")
    return value.replace("\x00", "")[:MAX_ERROR_TEXT]


def _score(payload: dict, error: str | None) -> float | None:
    """A finite score, or null when (and only when) the variant failed."""
    if error is not None:
        if payload.get("score") is not None:
            raise Invalid(OUT_OF_RANGE, "score", f"score: expected null for a variant that failed (error "
                                                 f"{short(error)}), got {short(payload['score'])}")
        return None
    if payload.get("score") is None:
        raise Invalid(MISSING_FIELD, "score", f"score: required, but {'null' if 'score' in payload else 'missing'} "
                                              "(only a variant that failed, with an error, has no score)")
    return finite(payload, "score")


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
        request_id = text(payload, "request_id")
        driver_id = integer(payload, "driver_id", 1, MAX_BIGINT)
        features = _features(payload)
        error = _error(payload)
        return Prediction(
            request_id=request_id,
            driver_id=driver_id,
            features=features,
            score=_score(payload, error),
            model_name=text(payload, "model_name"),
            model_version=text(payload, "model_version", allow_int=True),
            predicted_at=timestamp(payload, "predicted_at", now or datetime.now(UTC)),
            variant=_variant(payload),
            served=_served(payload, error),
            rollout_id=_optional(payload, "rollout_id", text),
            latency_ms=_optional(payload, "latency_ms", lambda p, n: finite(p, n, minimum=0.0)),
            error=error,
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
