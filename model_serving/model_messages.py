"""The message contracts of the projects' topics (MODEL_PREDICTIONS_TOPIC, MODEL_GROUND_TRUTH_TOPIC), validated.

One message per scored entity of a /models/{name}/predict request (key: request_id), for example:

    {"model_name": "penguin_species", "request_id": "3f2c...", "entity_key": "17", "variant": "champion",
     "model_version": "2", "features": {"bill_length_mm": 39.1, ...}, "prediction": "Adelie",
     "probabilities": {"Adelie": 0.97, "Chinstrap": 0.02, "Gentoo": 0.01},
     "predicted_at": "2026-05-01T12:00:00.123+00:00", "latency_ms": 1.2, "error": null}

and one per /models/{name}/feedback call:

    {"model_name": "penguin_species", "request_id": "3f2c...", "entity_key": "17", "label": "Adelie",
     "observed_at": "2026-05-01T12:20:00.000+00:00"}

`model_name` must be a project's model (mlops_platform.projects); `entity_key` is the join key as text (an
integer is accepted); a classifier's `prediction` and `label` must be one of its classes and its
`probabilities` finite numbers in [0, 1] for exactly its classes; a score project's prediction is a number
as text and its label "0" or "1". `features` must be an object of numbers (or nulls). Reasons, field checks
and dead letters are the platform's (mlops_platform.messages).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlops_platform.messages import (
    MISSING_FIELD,
    OUT_OF_RANGE,
    WRONG_TYPE,
    Invalid,
    Rejection,
    checked,
    finite,
    json_object,
    short,
    text,
    timestamp,
)
from mlops_platform.projects import PROJECTS, Project
from mlops_platform.rollout import CHAMPION, VARIANTS

PREDICTION_FIELDS = ("model_name", "request_id", "entity_key", "model_version", "features", "predicted_at")
GROUND_TRUTH_FIELDS = ("model_name", "request_id", "entity_key", "label", "observed_at")
MAX_ERROR_TEXT = 2000
SCORE_LABELS = ("0", "1")


@dataclass(frozen=True, slots=True)
class ModelPrediction:
    model_name: str
    request_id: str
    entity_key: str
    variant: str
    model_version: str
    features: dict[str, float | None]
    prediction: str | None
    probabilities: dict[str, float] | None
    predicted_at: datetime
    latency_ms: float | None
    error: str | None

    def row(self) -> tuple[Any, ...]:
        """The model_prediction_log row (prediction_store.MODEL_PREDICTION_COLUMNS order)."""
        return (self.model_name, self.request_id, self.entity_key, self.variant, self.model_version,
                json.dumps(self.features), self.prediction,
                None if self.probabilities is None else json.dumps(self.probabilities),
                self.predicted_at, self.latency_ms, self.error)


@dataclass(frozen=True, slots=True)
class ModelGroundTruth:
    model_name: str
    request_id: str
    entity_key: str
    label: str
    observed_at: datetime

    def row(self) -> tuple[Any, ...]:
        """The model_ground_truth row (prediction_store.MODEL_GROUND_TRUTH_COLUMNS order)."""
        return (self.model_name, self.request_id, self.entity_key, self.label, self.observed_at)


def _project(payload: dict) -> Project:
    name = text(payload, "model_name")
    for project in PROJECTS.values():
        if project.model_name == name:
            return project
    known = sorted(p.model_name for p in PROJECTS.values())
    raise Invalid(OUT_OF_RANGE, "model_name", f"model_name: expected one of {known}, got {short(name)}")


def _entity_key(payload: dict) -> str:
    value = payload["entity_key"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.lstrip("-").isdigit():
        raise Invalid(WRONG_TYPE, "entity_key", f"entity_key: expected an integer id (as text or a number), got "
                                                f"{type(value).__name__} {short(value)}")
    return value


def _features(payload: dict, project: Project) -> dict[str, float | None]:
    features = payload["features"]
    if not isinstance(features, dict):
        raise Invalid(WRONG_TYPE, "features", f"features: expected an object of {', '.join(project.features)}, got "
                                              f"{type(features).__name__} {short(features)}")
    if not any(name in features for name in project.features):
        raise Invalid(MISSING_FIELD, "features", f"features: expected at least one of {', '.join(project.features)}"
                                                 f", got keys {short(sorted(features))}")
    return {name: None if features.get(name) is None else finite(features, name) for name in project.features}


def _label(payload: dict, name: str, project: Project) -> str:
    value = payload[name]
    if not project.is_classifier and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    allowed = project.classes if project.is_classifier else SCORE_LABELS
    if not isinstance(value, str):
        raise Invalid(WRONG_TYPE, name, f"{name}: expected one of {list(allowed)}, got {type(value).__name__} "
                                        f"{short(value)}")
    if value not in allowed:
        raise Invalid(OUT_OF_RANGE, name, f"{name}: expected one of {list(allowed)}, got {short(value)}")
    return value


def _prediction(payload: dict, project: Project, error: str | None) -> tuple[str | None, dict[str, float] | None]:
    if error is not None:
        return None, None
    if payload.get("prediction") is None:
        raise Invalid(MISSING_FIELD, "prediction", "prediction: required unless the model failed (error set)")
    if not project.is_classifier:
        value = payload["prediction"]
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if isinstance(value, bool) or not math.isfinite(score):
            raise Invalid(WRONG_TYPE, "prediction", f"prediction: expected a finite score, got {short(value)}")
        return str(value), None
    label = _label(payload, "prediction", project)
    probabilities = payload.get("probabilities")
    if not isinstance(probabilities, dict) or set(probabilities) != set(project.classes):
        raise Invalid(WRONG_TYPE if not isinstance(probabilities, dict) else OUT_OF_RANGE, "probabilities",
                      f"probabilities: expected an object of {list(project.classes)}, got {short(probabilities)}")
    for name in project.classes:
        value = probabilities[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise Invalid(OUT_OF_RANGE, "probabilities", f"probabilities: {name} must be a number in [0, 1], got "
                                                         f"{short(value)}")
    return label, {name: float(probabilities[name]) for name in project.classes}


def _error(payload: dict) -> str | None:
    value = payload.get("error")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise Invalid(WRONG_TYPE, "error", f"error: expected null or a non-blank string, got {short(value)}")
    return value.replace("\x00", "")[:MAX_ERROR_TEXT]


def _variant(payload: dict) -> str:
    value = payload.get("variant") or CHAMPION
    if value not in VARIANTS:
        raise Invalid(OUT_OF_RANGE, "variant", f"variant: expected one of {', '.join(VARIANTS)}, got {short(value)}")
    return value


def validate_model_prediction(value: bytes | None, now: datetime | None = None) -> ModelPrediction | Rejection:
    """A clean prediction of a project's model, or the first contract violation found."""
    def parse() -> ModelPrediction:
        payload = json_object(value, PREDICTION_FIELDS)
        project = _project(payload)
        request_id = text(payload, "request_id")
        entity_key = _entity_key(payload)
        features = _features(payload, project)
        error = _error(payload)
        prediction, probabilities = _prediction(payload, project, error)
        latency = None if payload.get("latency_ms") is None else finite(payload, "latency_ms", minimum=0.0)
        return ModelPrediction(project.model_name, request_id, entity_key, _variant(payload),
                               text(payload, "model_version", allow_int=True), features, prediction, probabilities,
                               timestamp(payload, "predicted_at", now or datetime.now(UTC)), latency, error)
    return checked(parse)


def validate_model_ground_truth(value: bytes | None, now: datetime | None = None) -> ModelGroundTruth | Rejection:
    """A clean ground truth of a project's model, or the first contract violation found."""
    def parse() -> ModelGroundTruth:
        payload = json_object(value, GROUND_TRUTH_FIELDS)
        project = _project(payload)
        return ModelGroundTruth(project.model_name, text(payload, "request_id"), _entity_key(payload),
                                _label(payload, "label", project),
                                timestamp(payload, "observed_at", now or datetime.now(UTC)))
    return checked(parse)
