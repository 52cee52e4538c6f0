"""The API's route handlers; `model_serving.api.create_app` wires them to their paths.

/predict reads top-down: the request gets its id, the rollout picks the variant that answers (by the
customer id, else the request id; the champion outside a rollout), the online store gives the drivers'
features, the model scores them, the response ranks them, and the prediction-log events go to the worker's
spool. A challenger that is not loaded or fails leaves the answer to the champion and is logged with its
error; in shadow mode the challenger scores after the response is built (model_serving.shadow).
Each handler finds the worker's parts in `request.app.state.serving` (model_serving.worker.Serving).
The endpoints carry no docstrings on purpose: FastAPI would publish them as the OpenAPI description.
"""

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from mlops_platform.rollout import CHALLENGER, CHAMPION
from model_serving import schemas
from model_serving.events import FeedbackRecord, PredictionRecord
from model_serving.features import FeatureStoreUnavailable, OnlineRows
from model_serving.model_store import LoadedModel
from model_serving.rollout_state import RolloutView
from model_serving.served import LookupUnavailable
from model_serving.worker import SERVICE, Serving, unavailable

log = logging.getLogger(SERVICE)
bearer = HTTPBearer(auto_error=False, description="SERVING_API_TOKEN")


class ThrottledLog:
    """At most one line per message and interval, with how many were left out: an outage seen by a
    thousand requests a second must not become a thousand log lines a second."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self.logger, self.interval = logger, interval
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, message: str, **fields: Any) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(message, (float("-inf"), 0))
        if now - last < self.interval:
            self._last[message] = (last, suppressed + 1)
            return
        self._last[message] = (now, 0)
        self.logger.warning(message, extra={**fields, "suppressed_since_last": suppressed})


outage_log = ThrottledLog(log)


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """The dependency of the protected routes: 401 unless the bearer token is SERVING_API_TOKEN."""
    serving: Serving = request.app.state.serving
    serving.auth.check(f"{credentials.scheme} {credentials.credentials}" if credentials else None)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Any error no handler expected: logged with its traceback, answered as a 500 naming its type only."""
    log.exception("request failed", extra={"path": request.url.path,
                                           "request_id": request.scope.get("state", {}).get("request_id")})
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status.HTTP_500_INTERNAL_SERVER_ERROR)


# ---------------------------------------------------------------------------------------------
# POST /predict
# ---------------------------------------------------------------------------------------------
def predict_endpoint(request_model: type[BaseModel]) -> Callable[..., Awaitable[Response]]:
    """The /predict endpoint for the body model of the configured driver limit (schemas.predict_request_model)."""

    async def predict(body: request_model, request: Request) -> Response:  # type: ignore[valid-type]
        return await rank_drivers(request.app.state.serving, body, request)

    return predict


async def rank_drivers(serving: Serving, body: Any, request: Request) -> Response:
    """Score the requested drivers with the variant the rollout picks for this request and rank them, best first."""
    started = time.perf_counter()
    champion = serving.model_or_503()
    view = serving.rollout.view  # one snapshot for the whole request
    rollout = view.rollout
    request_id = body.request_id or uuid.uuid4().hex
    rollout_id = rollout.rollout_id if rollout else None
    failed: Answer | None = None
    answer: Answer | None = None
    if rollout is not None and rollout.answering_variant(body.customer_id or request_id) == CHALLENGER:
        answer = await _challenger_answer(serving, view, body.driver_ids)
        if answer.error is not None:  # the champion answers instead; the failure is logged as the challenger's
            failed, answer = answer, None
    if answer is None:
        answer = await _champion_answer(serving, champion, body.driver_ids, request_id)
    _name_request(request, request_id, answer)
    predicted_at = time.time()
    _count(serving, answer, failed)
    response = _ranking_response(request_id, answer)
    rows = answer.rows
    if rows.driver_ids:
        serving.recent.remember(request_id, rows.driver_ids)
        features = answer.model.features
        _publish(serving, request_id, answer, features, rows, predicted_at, served=True, rollout_id=rollout_id)
        if failed is not None:
            _publish(serving, request_id, failed, features, rows, predicted_at, served=False, rollout_id=rollout_id)
        elif rollout is not None and rollout.shadowing:
            serving.shadow.submit(lambda: _shadow(serving, view, request_id, features, rows, predicted_at))
    if log.isEnabledFor(logging.DEBUG):  # one line per request only when asked for: metrics count them
        log.debug("prediction served", extra={
            "request_id": request_id, "model_version": answer.version, "variant": answer.variant,
            "drivers": len(body.driver_ids), "missing": len(rows.missing),
            "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
    return response


@dataclass(frozen=True)
class Answer:
    """One variant's part in a request: its scores, or why it failed (`error`, with no scores)."""

    variant: str
    version: str
    model: LoadedModel | None  # None: the challenger was not loaded
    rows: OnlineRows
    scores: list[float] | None
    latency_ms: float
    error: str | None = None


async def _champion_answer(serving: Serving, model: LoadedModel, driver_ids: list[int], request_id: str) -> Answer:
    started = time.perf_counter()
    rows = await _online_rows(serving, model, driver_ids, request_id)
    scores = _scores(model, rows)
    return Answer(CHAMPION, model.version, model, rows, scores, _ms_since(started))


async def _challenger_answer(serving: Serving, view: RolloutView, driver_ids: list[int]) -> Answer:
    """The challenger's scores, or its failure (never raised: the champion answers then)."""
    started = time.perf_counter()
    model, version = view.challenger, view.rollout.challenger_version
    if model is None:
        return Answer(CHALLENGER, version, None, NO_ROWS, None, 0.0, view.challenger_problem())
    try:
        rows = await serving.features_or_503().read(driver_ids, model.features)
        scores = _scores(model, rows)
    except HTTPException:
        raise  # no online store at all: the champion could not answer either
    except Exception as exc:  # Redis, a feature the store lacks, a model that raises or scores NaN
        return Answer(CHALLENGER, version, model, NO_ROWS, None, _ms_since(started), _failure(exc))
    return Answer(CHALLENGER, version, model, rows, scores, _ms_since(started))


async def _shadow(serving: Serving, view: RolloutView, request_id: str, champion_features: tuple[str, ...],
                  champion_rows: OnlineRows, predicted_at: float) -> None:
    """The challenger scores the drivers the champion scored, off the response path; logged, never returned."""
    started = time.perf_counter()
    model, version = view.challenger, view.rollout.challenger_version
    answer: Answer
    if model is None:
        answer = Answer(CHALLENGER, version, None, NO_ROWS, None, 0.0, view.challenger_problem())
    else:
        try:
            rows = champion_rows
            if model.features != champion_features:  # read what this model needs
                rows = await serving.features_or_503().read(champion_rows.driver_ids, model.features)
            scores = await serving.shadow.predict(model, _matrix(rows)) if rows.driver_ids else np.empty(0)
            scores = scores.tolist()
            if not all(math.isfinite(s) for s in scores):
                raise RuntimeError(f"model version {version} returned non-finite scores")
            answer = Answer(CHALLENGER, version, model, rows, scores, _ms_since(started))
        except TimeoutError:
            answer = Answer(CHALLENGER, version, model, NO_ROWS, None, _ms_since(started),
                            f"TimeoutError: no scores within {serving.shadow.timeout}s")
        except Exception as exc:
            answer = Answer(CHALLENGER, version, model, NO_ROWS, None, _ms_since(started), _failure(exc))
    _count_variant(serving, answer, "error" if answer.error else "ok")
    features, rows = (model.features, answer.rows) if answer.error is None else (champion_features, champion_rows)
    if rows.driver_ids:
        _publish(serving, request_id, answer, features, rows, predicted_at, served=False,
                 rollout_id=view.rollout.rollout_id)


NO_ROWS = OnlineRows([], [], [], 0)


def _failure(exc: Exception) -> str:
    detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"{type(exc).__name__}: {detail}"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _publish(serving: Serving, request_id: str, answer: Answer, features: tuple[str, ...], rows: OnlineRows,
             predicted_at: float, served: bool, rollout_id: str | None) -> None:
    """The prediction-log record of one variant (`rows` of `features`; for a failed variant, the champion's)."""
    serving.publisher.publish(PredictionRecord(
        serving.settings.predictions_topic, request_id, serving.settings.model_name, answer.version, features,
        rows.driver_ids, rows.values, answer.scores, predicted_at, answer.variant, served, rollout_id,
        answer.latency_ms, answer.error))


def _name_request(request: Request, request_id: str, answer: Answer) -> None:
    """Note the request's id and the version that answered it, for metrics and logs."""
    state = request.scope.setdefault("state", {})
    state["model_version"] = answer.version
    state["request_id"] = request_id


async def _online_rows(serving: Serving, model: LoadedModel, driver_ids: list[int], request_id: str) -> OnlineRows:
    """The model's features of each driver from the online store; a store that does not answer is a 503."""
    try:
        return await serving.features_or_503().read(driver_ids, model.features)
    except FeatureStoreUnavailable as exc:
        outage_log.warning("online features unavailable", request_id=request_id, error=str(exc))
        raise unavailable(str(exc)) from None
    except KeyError as exc:
        raise unavailable(f"model version {model.version} cannot be served: {exc.args[0]}") from None


def _matrix(rows: OnlineRows) -> np.ndarray:
    # Column-major, as a DataFrame's values are: the final dot product then sums in the same order as
    # pyfunc on a DataFrame, so the scores are identical to the last bit, not merely close.
    return np.array(rows.values, dtype=np.float64, order="F")


def _scores(model: LoadedModel, rows: OnlineRows) -> list[float]:
    if not rows.driver_ids:
        return []
    scores = model.predict(_matrix(rows)).tolist()
    if not all(math.isfinite(s) for s in scores):
        raise RuntimeError(f"model version {model.version} returned non-finite scores")
    return scores


def _count_variant(serving: Serving, answer: Answer, outcome: str) -> None:
    serving.metrics.variant_requests.labels(answer.variant, answer.version, outcome).inc()
    serving.metrics.variant_latency.labels(answer.variant).observe(answer.latency_ms / 1000)


def _count(serving: Serving, answer: Answer, failed: Answer | None) -> None:
    """The variants' outcomes, the score distribution of the version that answered, and the drivers the online
    store had no fresh row for."""
    metrics = serving.metrics
    if failed is not None:
        _count_variant(serving, failed, "error")
    _count_variant(serving, answer, "ok" if failed is None else "fallback")
    rows = answer.rows
    score_histogram = metrics.scores.labels(answer.version)
    for score in answer.scores:
        score_histogram.observe(score)
    if rows.missing:
        if rows.expired:
            metrics.missing.labels("expired").inc(rows.expired)
        if len(rows.missing) > rows.expired:
            metrics.missing.labels("not_found").inc(len(rows.missing) - rows.expired)


def _ranking_response(request_id: str, answer: Answer) -> Response:
    """Scores in request order, the ranking best first (equal scores: smaller id first), the drivers missing."""
    model, rows, scores = answer.model, answer.rows, answer.scores
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], rows.driver_ids[i]))
    ranking = [rows.driver_ids[i] for i in order]
    body = {
        "request_id": request_id,
        "model": {"name": model.name, "version": model.version, "run_id": model.run_id, "variant": answer.variant},
        "scores": [{"driver_id": d, "score": s} for d, s in zip(rows.driver_ids, scores, strict=True)],
        "ranking": ranking,
        "best_driver_id": ranking[0] if ranking else None,
        "missing_driver_ids": rows.missing,
    }
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json",
                    headers={"X-Request-ID": request_id, "X-Model-Variant": answer.variant})


# ---------------------------------------------------------------------------------------------
# POST /feedback, and the probes
# ---------------------------------------------------------------------------------------------
async def feedback(body: schemas.FeedbackRequest, request: Request) -> JSONResponse:
    serving: Serving = request.app.state.serving
    request.scope.setdefault("state", {})["request_id"] = body.request_id
    if not await _was_served(serving, body.request_id, body.driver_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"unknown request_id {body.request_id!r} for driver_id {body.driver_id}: "
                                   "no prediction with this pair was served (or logged) by this API")
    record = FeedbackRecord(serving.settings.ground_truth_topic, body.request_id, body.driver_id,
                            body.trip_completed, time.time())
    if not await asyncio.to_thread(serving.publisher.publish_durably, record):  # 202 means it is on disk
        raise unavailable(f"feedback not stored: {serving.publisher.problem}; retry later")
    log.info("feedback accepted", extra={"request_id": body.request_id, "driver_id": body.driver_id,
                                         "trip_completed": body.trip_completed})
    return JSONResponse({"request_id": body.request_id, "driver_id": body.driver_id, "accepted": True},
                        status.HTTP_202_ACCEPTED)


async def _was_served(serving: Serving, request_id: str, driver_id: int) -> bool:
    """Whether this worker scored the pair lately or the prediction log has it; 503 when the log cannot say."""
    if serving.recent.contains(request_id, driver_id):
        return True
    try:
        return await serving.lookup.logged(request_id, driver_id)
    except LookupUnavailable as exc:
        outage_log.warning("feedback not checked", request_id=request_id, error=str(exc))
        raise unavailable(str(exc)) from None


async def health() -> dict[str, bool]:
    return {"alive": True}


async def ready(request: Request) -> JSONResponse:
    serving: Serving = request.app.state.serving
    model = serving.models.current
    reason = ""
    if model is None:
        reason = f"no model loaded: {serving.models.problem}"
    elif serving.features is None:
        reason = serving.features_problem
    else:
        try:
            await serving.features.ping()
        except FeatureStoreUnavailable as exc:
            reason = str(exc)
    if reason:
        return JSONResponse({"ready": False, "reason": reason}, status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse({"ready": True, "model": {"name": model.name, "version": model.version,
                                                  "run_id": model.run_id, "variant": CHAMPION}})


async def prometheus_metrics(request: Request) -> Response:
    body, content_type = request.app.state.serving.metrics.render()
    return Response(body, media_type=content_type)
