"""The projects' routes: `POST /models/{model_name}/predict` and `/feedback` for every project in PROJECTS.

Each project gets its own pair of routes, with its own request body (model_serving.project_requests), so
the OpenAPI schema documents each project's instances and labels; any other model name is a 404 naming the
known ones. A request reads top-down: the project's champion (503 naming the project when it has none yet),
the features of each instance (from the online store for an instance with only its key, one Redis round
trip for all of them; encoded from the request for an instance with raw fields), one forward pass, the
response, and one prediction-log record on the worker's event spool (MODEL_PREDICTIONS_TOPIC). An instance
whose key has no features in the online store is not scored: it is listed in `missing` (as the driver
route lists missing drivers), the others are answered.
"""


import asyncio
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response

from mlops_platform.projects import PROJECTS
from mlops_platform.rollout import CHAMPION
from model_serving.events import ModelFeedbackRecord, ModelPredictionRecord
from model_serving.features import FeatureStoreUnavailable
from model_serving.handlers import outage_log
from model_serving.project_requests import feedback_request_model, instance_model, instance_row, predict_request_model
from model_serving.project_serving import ProjectSlot
from model_serving.served import LookupUnavailable
from model_serving.worker import SERVICE, Serving, unavailable

log = logging.getLogger(SERVICE)
ONLINE_STORE, REQUEST = "online_store", "request"


def add_routes(app: FastAPI, serving: Serving, protected: list[Any]) -> None:
    """Both routes of every project, then the catch-all 404s for unknown model names."""
    for slot in serving.projects.values():
        project = slot.project
        body_model = predict_request_model(project, serving.settings.serving_max_drivers,
                                           instance_model(project, slot.encoder))
        feedback_model = feedback_request_model(project)
        app.add_api_route(f"/models/{project.model_name}/predict", _predict_endpoint(slot, body_model),
                          methods=["POST"], dependencies=protected, tags=[project.name],
                          summary=f"Predict with {project.model_name}: {project.description}",
                          responses={503: {"description": "No model loaded for this project, or the online store "
                                                          "does not answer."}})
        app.add_api_route(f"/models/{project.model_name}/feedback", _feedback_endpoint(slot, feedback_model),
                          methods=["POST"], status_code=status.HTTP_202_ACCEPTED, dependencies=protected,
                          tags=[project.name], summary=f"The true {project.label} of a {project.entity} "
                                                       f"{project.model_name} predicted",
                          responses={404: {"description": "This model never predicted this entity for this "
                                                          "request_id."},
                                     503: {"description": "PostgreSQL or the event spool cannot take it now."}})
    app.add_api_route("/models/{model_name}/{action}", unknown_model, methods=["POST"], include_in_schema=False)


async def unknown_model(model_name: str, action: str) -> JSONResponse:
    known = sorted(p.model_name for p in PROJECTS.values())
    if action not in ("predict", "feedback"):
        detail = f"unknown action {action!r}: expected /models/<model>/predict or /models/<model>/feedback"
    else:
        detail = f"unknown model {model_name!r}: expected one of {known}"
    return JSONResponse({"detail": detail}, status.HTTP_404_NOT_FOUND)


def _predict_endpoint(slot: ProjectSlot, body_model: type) -> Any:
    async def predict(body: body_model, request: Request) -> Response:  # type: ignore[valid-type]
        return await predict_instances(request.app.state.serving, slot, body, request)

    return predict


def _feedback_endpoint(slot: ProjectSlot, body_model: type) -> Any:
    async def feedback(body: body_model, request: Request) -> JSONResponse:  # type: ignore[valid-type]
        return await accept_feedback(request.app.state.serving, slot, body, request)

    return feedback


# ---------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------
async def predict_instances(serving: Serving, slot: ProjectSlot, body: Any, request: Request) -> Response:
    started = time.perf_counter()
    project = slot.project
    model = slot.model
    if model is None:
        raise unavailable(f"no model loaded for {project.model_name}: {slot.model_problem}")
    request_id = body.request_id or uuid.uuid4().hex
    key = project.join_key
    state = request.scope.setdefault("state", {})
    state["model_version"], state["request_id"] = model.version, request_id
    keys = [getattr(instance, key) for instance in body.instances]
    inline = {k: row for k, row in zip(keys, (instance_row(i) for i in body.instances), strict=True) if row}
    stored = await _online_rows(slot, model, [k for k in keys if k not in inline], request_id)
    rows = {**stored, **inline}
    scored = [k for k in keys if k in rows]
    values = [rows[k] for k in scored]
    outputs = _predict(model, values)
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    classes = tuple(project.classes) if project.is_classifier else ()
    predictions = [_prediction(project.is_classifier, classes, out) for out in outputs]
    body_out = {
        "request_id": request_id,
        "model": {"name": project.model_name, "version": model.version, "run_id": model.run_id, "variant": CHAMPION},
        "predictions": [{key: k, **pred, "features_from": REQUEST if k in inline else ONLINE_STORE}
                        for k, pred in zip(scored, predictions, strict=True)],
        "missing": [k for k in keys if k not in rows],
    }
    if scored:
        slot.recent.remember(request_id, scored)
        serving.publisher.publish(ModelPredictionRecord(
            serving.settings.model_predictions_topic, request_id, project.model_name, model.version,
            model.features, scored, values, [p["label"] if classes else repr(p["score"]) for p in predictions],
            outputs.tolist() if classes else None, classes, time.time(), latency_ms))
    return Response(json.dumps(body_out, separators=(",", ":")), media_type="application/json",
                    headers={"X-Request-ID": request_id, "X-Model-Variant": CHAMPION})


async def _online_rows(slot: ProjectSlot, model: Any, keys: list[int], request_id: str) -> dict[int, tuple]:
    """key -> its features from the online store, for the keys that have them all; 503 when it cannot be read."""
    if not keys:
        return {}
    features = slot.features
    if features is None:
        raise unavailable(f"online features of {slot.project.model_name} unavailable: {slot.features_problem}")
    try:
        found = await features.read(keys, model.features)
    except FeatureStoreUnavailable as exc:
        outage_log.warning("online features unavailable", request_id=request_id, error=str(exc))
        raise unavailable(str(exc)) from None
    except KeyError as exc:
        raise unavailable(f"model {slot.project.model_name} version {model.version} cannot be served: "
                          f"{exc.args[0]}") from None
    return dict(zip(found.driver_ids, found.values, strict=True))


def _predict(model: Any, values: list[tuple]) -> np.ndarray:
    """(n, outputs) for the rows; a score model (the driver API's LoadedModel) gives one column."""
    if not values:
        return np.empty((0, 0))
    if hasattr(model, "outputs"):  # a ProjectModel: float32 input, as the model was logged
        result = model.predict(np.asarray(values, dtype=np.float32))
    else:
        result = model.predict(np.array(values, dtype=np.float64, order="F")).reshape(-1, 1)
    if not np.isfinite(result).all():
        raise RuntimeError(f"model version {model.version} returned non-finite outputs")
    return result


def _prediction(is_classifier: bool, classes: tuple[str, ...], output: np.ndarray) -> dict[str, Any]:
    if not is_classifier:
        return {"score": float(output[0])}
    probabilities = {name: float(p) for name, p in zip(classes, output, strict=True)}
    return {"label": classes[int(np.argmax(output))], "probabilities": probabilities}


# ---------------------------------------------------------------------------------------------
# feedback
# ---------------------------------------------------------------------------------------------
async def accept_feedback(serving: Serving, slot: ProjectSlot, body: Any, request: Request) -> JSONResponse:
    project = slot.project
    key = getattr(body, project.join_key)
    request.scope.setdefault("state", {})["request_id"] = body.request_id
    if not await _was_predicted(serving, slot, body.request_id, key):
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"unknown request_id {body.request_id!r} for {project.join_key} {key}: "
                                   f"{project.model_name} served (or logged) no prediction with this pair")
    label = str(body.label)
    record = ModelFeedbackRecord(serving.settings.model_ground_truth_topic, project.model_name, body.request_id, key,
                                 label, time.time())
    if not await asyncio.to_thread(serving.publisher.publish_durably, record):
        raise unavailable(f"feedback not stored: {serving.publisher.problem}; retry later")
    return JSONResponse({"request_id": body.request_id, project.join_key: key, "label": body.label,
                         "accepted": True}, status.HTTP_202_ACCEPTED)


async def _was_predicted(serving: Serving, slot: ProjectSlot, request_id: str, key: int) -> bool:
    if slot.recent.contains(request_id, key):
        return True
    try:
        return await serving.model_lookup.logged_for_model(slot.project.model_name, request_id, key)
    except LookupUnavailable as exc:
        raise unavailable(str(exc)) from None
