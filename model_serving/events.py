"""The prediction-log and feedback events: what the API publishes, and how a record becomes Kafka messages.

The event contract (read by model_serving.prediction_logger), key = request_id, one message per event:

    predictions:  {"request_id", "driver_id", "features": {name: value}, "score", "model_name",
                   "model_version", "predicted_at", "variant", "served", "rollout_id", "latency_ms", "error"}
    ground_truth: {"request_id", "driver_id", "trip_completed", "observed_at"}

The projects' routes (/models/{name}/predict and /feedback, every project of mlops_platform.projects) publish
to MODEL_PREDICTIONS_TOPIC and MODEL_GROUND_TRUTH_TOPIC (read by model_serving.model_messages):

    model_predictions:  {"model_name", "request_id", "entity_key", "variant", "model_version",
                         "features": {name: value}, "prediction", "probabilities": {class: p} | null,
                         "predicted_at", "latency_ms", "error"}
    model_ground_truth: {"model_name", "request_id", "entity_key", "label", "observed_at"}

`entity_key` is the project's join key value as text, `prediction` the label (a classifier's) or the score
as text, `probabilities` a classifier's class probabilities (null for a score).

A prediction event is one per scored driver and variant (mlops_platform.rollout): `variant` is champion or
challenger, `served` whether its score was returned, `rollout_id` null outside a rollout, `latency_ms` the
variant's answer time for the whole request, and `error` the reason a variant failed (its `score` is then null).
Timestamps are ISO-8601 with an explicit UTC offset. A request hands over one compact record (all
scored drivers of a /predict, or one feedback) to the event sender process as one datagram
(`to_wire`), and the sender expands it into the messages above (`messages_from_wire`), so the
request pays for one small `json.dumps`, not for one message per driver.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def iso_utc(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class PredictionRecord:
    """Every scored driver of one /predict request, by one variant (`scores` all None when it failed)."""

    topic: str
    request_id: str
    model_name: str
    model_version: str
    features: Sequence[str]
    driver_ids: Sequence[int]
    values: Sequence[Sequence[float | int]]
    scores: Sequence[float] | None  # None: the variant failed (`error` says why)
    predicted_at: float
    variant: str = "champion"
    served: bool = True
    rollout_id: str | None = None
    latency_ms: float | None = None
    error: str | None = None

    @property
    def count(self) -> int:
        return len(self.driver_ids)

    def to_wire(self) -> bytes:
        return _dumps({"type": "prediction", "topic": self.topic, "request_id": self.request_id,
                       "model_name": self.model_name, "model_version": self.model_version,
                       "features": list(self.features), "driver_ids": self.driver_ids, "values": self.values,
                       "scores": self.scores, "predicted_at": self.predicted_at, "variant": self.variant,
                       "served": self.served, "rollout_id": self.rollout_id, "latency_ms": self.latency_ms,
                       "error": self.error})


@dataclass(frozen=True)
class FeedbackRecord:
    """Whether the trip of one (request, driver) was completed."""

    topic: str
    request_id: str
    driver_id: int
    trip_completed: int
    observed_at: float

    @property
    def count(self) -> int:
        return 1

    def to_wire(self) -> bytes:
        return _dumps({"type": "feedback", "topic": self.topic, "request_id": self.request_id,
                       "driver_id": self.driver_id, "trip_completed": self.trip_completed,
                       "observed_at": self.observed_at})


@dataclass(frozen=True)
class ModelPredictionRecord:
    """Every scored entity of one /models/{name}/predict request."""

    topic: str
    request_id: str
    model_name: str
    model_version: str
    features: Sequence[str]
    entity_keys: Sequence[int]
    values: Sequence[Sequence[float]]
    predictions: Sequence[str]
    probabilities: Sequence[Sequence[float]] | None  # per entity, in `classes` order; None for a score
    classes: Sequence[str]
    predicted_at: float
    latency_ms: float | None = None
    variant: str = "champion"

    @property
    def count(self) -> int:
        return len(self.entity_keys)

    def to_wire(self) -> bytes:
        return _dumps({"type": "model_prediction", "topic": self.topic, "request_id": self.request_id,
                       "model_name": self.model_name, "model_version": self.model_version,
                       "features": list(self.features), "entity_keys": self.entity_keys, "values": self.values,
                       "predictions": self.predictions, "probabilities": self.probabilities,
                       "classes": list(self.classes), "predicted_at": self.predicted_at,
                       "latency_ms": self.latency_ms, "variant": self.variant})


@dataclass(frozen=True)
class ModelFeedbackRecord:
    """The ground truth of one (model, request, entity)."""

    topic: str
    model_name: str
    request_id: str
    entity_key: int
    label: str
    observed_at: float

    @property
    def count(self) -> int:
        return 1

    def to_wire(self) -> bytes:
        return _dumps({"type": "model_feedback", "topic": self.topic, "model_name": self.model_name,
                       "request_id": self.request_id, "entity_key": self.entity_key, "label": self.label,
                       "observed_at": self.observed_at})


@dataclass(frozen=True)
class Messages:
    """Kafka messages of one record: same topic, same key."""

    topic: str
    key: bytes
    values: list[bytes]

    @property
    def count(self) -> int:
        return len(self.values)


def messages_from_wire(data: bytes) -> Messages:
    """Expand one wire record into the contract's messages; ValueError when it is not a record."""
    try:
        record = json.loads(data)
        kind, topic, request_id = record["type"], record["topic"], record["request_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"expected a JSON record with type, topic and request_id, got {data[:80]!r}") from exc
    key = request_id.encode()
    if kind == "prediction":
        at = iso_utc(record["predicted_at"])
        names = record["features"]
        # A record spooled before rollouts existed has none of the variant fields: the champion, served.
        variant = {"variant": record.get("variant", "champion"), "served": record.get("served", True),
                   "rollout_id": record.get("rollout_id"), "latency_ms": record.get("latency_ms"),
                   "error": record.get("error")}
        scores = record["scores"]
        if scores is None:
            scores = [None] * len(record["driver_ids"])
        values = [_dumps({
            "request_id": request_id, "driver_id": driver_id, "features": dict(zip(names, row, strict=True)),
            "score": score, "model_name": record["model_name"], "model_version": record["model_version"],
            "predicted_at": at, **variant,
        }) for driver_id, row, score in zip(record["driver_ids"], record["values"], scores, strict=True)]
        return Messages(topic, key, values)
    if kind == "feedback":
        return Messages(topic, key, [_dumps({
            "request_id": request_id, "driver_id": record["driver_id"], "trip_completed": record["trip_completed"],
            "observed_at": iso_utc(record["observed_at"])})])
    if kind == "model_prediction":
        return Messages(topic, key, _model_prediction_messages(record))
    if kind == "model_feedback":
        return Messages(topic, key, [_dumps({
            "model_name": record["model_name"], "request_id": request_id, "entity_key": str(record["entity_key"]),
            "label": record["label"], "observed_at": iso_utc(record["observed_at"])})])
    raise ValueError(f"expected record type 'prediction', 'feedback', 'model_prediction' or 'model_feedback', "
                     f"got {kind!r}")


def _model_prediction_messages(record: dict) -> list[bytes]:
    names, classes = record["features"], record["classes"]
    probabilities = record["probabilities"] or [None] * len(record["entity_keys"])
    common = {"model_name": record["model_name"], "model_version": record["model_version"],
              "variant": record.get("variant", "champion"), "predicted_at": iso_utc(record["predicted_at"]),
              "latency_ms": record.get("latency_ms"), "error": None}
    return [_dumps({
        "request_id": record["request_id"], "entity_key": str(key), "features": dict(zip(names, row, strict=True)),
        "prediction": prediction, "probabilities": dict(zip(classes, probs, strict=True)) if probs else None,
        **common,
    }) for key, row, prediction, probs in zip(record["entity_keys"], record["values"], record["predictions"],
                                              probabilities, strict=True)]

