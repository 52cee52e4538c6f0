"""The online prediction API: rank drivers by how likely they are to complete a trip.

    POST /predict   {"request_id"?: str, "driver_ids": [int, ...]} -> scores, ranking, best driver
    POST /feedback  {"request_id": str, "driver_id": int, "trip_completed": 0|1} -> 202
    GET  /health    alive (200 while the process serves)
    GET  /ready     200 when a model is loaded and Redis answers, else 503 with the reason
    GET  /metrics   Prometheus

`python -m model_serving.api` runs it under uvicorn with SERVING_WORKERS processes. A request does
one Redis round trip and one sklearn call on the event loop, and appends its prediction-log record to
the worker's event spool on local disk without waiting for Kafka (model_serving.event_channel). Everything
slow or fallible happens elsewhere: loading and swapping models on a background thread, talking to Kafka
in the event sender process, which delivers the spool in order once the broker acknowledges.
"""

import asyncio
import atexit
import gc
import json
import logging
import logging.handlers
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mlops_platform.logs import configure_logging
from mlops_platform.settings import Settings, get_settings
from model_serving import schemas
from model_serving.auth import BearerAuth
from model_serving.event_channel import EventChannel
from model_serving.events import FeedbackRecord, PredictionRecord
from model_serving.features import FeatureDecoder, FeatureStoreUnavailable, OnlineFeatures, load_spec
from model_serving.metrics import ServingMetrics, prepare_multiprocess_dir
from model_serving.model_store import LoadedModel, ModelStore
from model_serving.request_body import StrictJSONRoute
from model_serving.served import LookupUnavailable, PredictionLogLookup, RecentRequests

if TYPE_CHECKING:  # importing prometheus_client before main() picks the metrics mode would fix the wrong one
    from prometheus_client import CollectorRegistry

SERVICE = "serving"
ENDPOINTS = frozenset({"/predict", "/feedback", "/health", "/ready", "/metrics", "/openapi.json", "/docs"})
MAX_BODY_BYTES = 1024 * 1024
SPEC_RETRY_MIN_SECONDS = 1.0
SPEC_RETRY_MAX_SECONDS = 30.0
log = logging.getLogger(SERVICE)


@dataclass
class Serving:
    """Everything a request needs, built once per worker process."""

    settings: Settings
    metrics: ServingMetrics
    models: ModelStore
    publisher: EventChannel
    recent: RecentRequests
    lookup: PredictionLogLookup
    auth: BearerAuth
    features: OnlineFeatures | None = None
    features_problem: str = "feature definitions not loaded yet from Feast's registry"
    stop: threading.Event = field(default_factory=threading.Event)

    def model_or_503(self) -> LoadedModel:
        model = self.models.current
        if model is None:
            raise _unavailable(f"no model loaded: {self.models.problem}")
        return model

    def features_or_503(self) -> OnlineFeatures:
        if self.features is None:
            raise _unavailable(self.features_problem)
        return self.features


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


def _unavailable(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=reason, headers={"Retry-After": "1"})


def _load_decoder(serving: Serving) -> FeatureDecoder | None:
    """Read the feature service's definition from Feast's registry, retrying until PostgreSQL answers."""
    delay = SPEC_RETRY_MIN_SECONDS
    while not serving.stop.is_set():
        try:
            return FeatureDecoder(load_spec(serving.settings))
        except Exception as exc:  # registry unreachable or a definition the fast path cannot read
            serving.features_problem = (f"feature definitions not loaded from Feast's registry: "
                                        f"{type(exc).__name__}: {exc}")
            log.warning("feature definitions not loaded yet", extra={"error": serving.features_problem,
                                                                     "retry_in_s": delay})
            serving.stop.wait(delay)
            delay = min(delay * 2, SPEC_RETRY_MAX_SECONDS)
    return None


def _install_features(serving: Serving, loop: asyncio.AbstractEventLoop) -> None:
    """Background start-up step: once the definitions are read, give the event loop its Redis reader."""
    decoder = _load_decoder(serving)
    if decoder is None:
        return

    def install() -> None:  # on the event loop: the async Redis client belongs to it
        serving.features = OnlineFeatures(serving.settings, decoder)
        serving.features_problem = ""
        _settle_heap()

    try:
        loop.call_soon_threadsafe(install)
    except RuntimeError:  # the loop closed: the server is shutting down
        return
    spec = decoder.spec
    log.info("feature definitions loaded", extra={
        "feature_view": spec.feature_view, "features": list(spec.features), "ttl_seconds": spec.ttl_seconds})


def _settle_heap() -> None:
    """Exempt everything alive now (libraries, registry, model) from the cyclic garbage collector.

    A worker holds some 350,000 long-lived objects (Feast, MLflow, sklearn); a full collection walks all
    of them, stalling the event loop for 150-300 ms a few times a minute. Frozen, they are never walked
    again; called once the features are read and after every model swap. (An old model's objects are
    still freed by reference counting; only reference cycles among them stay.)
    """
    gc.freeze()


def _served_features(serving: Serving) -> tuple[str, ...] | None:
    """What the online store serves, once known: a model needing anything else is not loaded."""
    return serving.features.decoder.spec.features if serving.features is not None else None


class RequestMetrics:
    """Pure ASGI middleware: counts and times every request, refuses oversized bodies."""

    def __init__(self, app: Any, serving: Serving) -> None:
        self.app = app
        self.serving = serving

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        outcome = {"status": 500}

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > MAX_BODY_BYTES:
                response = JSONResponse({"detail": f"request body of {length} bytes exceeds the limit of "
                                                   f"{MAX_BODY_BYTES} bytes"}, status.HTTP_413_CONTENT_TOO_LARGE)
                await response(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            version = scope.get("state", {}).get("model_version")
            if version is None:
                current = self.serving.models.current
                version = current.version if current else "none"
            elapsed = time.perf_counter() - started
            labels = (endpoint, str(outcome["status"]), version)
            self.serving.metrics.requests.labels(*labels).inc()
            self.serving.metrics.latency.labels(*labels).observe(elapsed)


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """Hands records over as they are: the JSON formatter on the other side needs their extra fields."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def _log_off_the_loop(service_log: logging.Logger) -> None:
    """Write log lines from a thread of their own: a slow stdout (a full pipe) must not stall requests."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    root.handlers[:] = [_PassThroughQueueHandler(records)]
    listener.start()
    atexit.register(listener.stop)
    service_log.debug("logging through a queue", extra={"handlers": len(handlers)})


def create_app(settings: Settings | None = None, registry: "CollectorRegistry | None" = None) -> FastAPI:
    """The application; uvicorn calls this once in each worker process (`registry`: see ServingMetrics)."""
    import sklearn

    settings = settings or get_settings()
    _log_off_the_loop(configure_logging(SERVICE, settings.log_level))
    # Inputs are built here from decoded numbers, never NaN or infinite: sklearn's per-call finiteness
    # check over them is pure overhead (a quarter of a small pipeline's predict time).
    sklearn.set_config(assume_finite=True)
    for noisy in ("kafka", "mlflow", "feast", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    metrics = ServingMetrics(registry)
    publisher = EventChannel(metrics.events, settings.event_spool_dir, settings.event_spool_max_bytes)
    serving = Serving(
        settings=settings, metrics=metrics, publisher=publisher, recent=RecentRequests(),
        lookup=PredictionLogLookup(settings), auth=BearerAuth(settings.serving_auth, settings.serving_api_token),
        models=ModelStore(settings, served_features=lambda: _served_features(serving),
                          on_swap=lambda old, new: (metrics.model_swapped(old, new), _settle_heap()),
                          on_failure=lambda _reason: metrics.reload_failures.inc()))
    metrics.events.declare([settings.predictions_topic, settings.ground_truth_topic])

    async def lifespan(_app: FastAPI):
        loop = asyncio.get_running_loop()
        threading.Thread(target=_install_features, args=(serving, loop), name="feature-spec",
                         daemon=True).start()
        serving.models.start()
        publisher.start()
        log.info("serving started", extra={"model_uri": settings.model_uri, "auth": settings.serving_auth,
                                           "max_drivers": settings.serving_max_drivers,
                                           "predictions_topic": settings.predictions_topic})
        try:
            yield
        finally:
            serving.stop.set()
            serving.models.stop()
            await asyncio.to_thread(publisher.stop)
            if serving.features is not None:
                await serving.features.close()
            await serving.lookup.close()
            metrics.process_exit()
            log.info("serving stopped")

    app = FastAPI(title="Driver ranking API", version="1.0",
                  description="Ranks drivers by how likely they are to complete a trip, with the registry's "
                              f"`{settings.model_alias}` model and Feast's online features.",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.serving = serving
    # Before any route is added: every route parses JSON strictly and documents what is refused around it.
    app.router.route_class = StrictJSONRoute.documenting(_refusals(settings.serving_auth))
    app.add_middleware(RequestMetrics, serving=serving)
    bearer = HTTPBearer(auto_error=False, description="SERVING_API_TOKEN")

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        serving.auth.check(f"{credentials.scheme} {credentials.credentials}" if credentials else None)

    protected = [Depends(require_token)] if settings.serving_auth else []
    PredictRequest = schemas.predict_request_model(settings.serving_max_drivers)  # noqa: N806

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", extra={"path": request.url.path,
                                               "request_id": request.scope.get("state", {}).get("request_id")})
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status.HTTP_500_INTERNAL_SERVER_ERROR)

    @app.post("/predict", response_model=schemas.PredictResponse, dependencies=protected,
              responses={503: {"description": "No model loaded, or the online store does not answer."}})
    async def predict(body: PredictRequest, request: Request) -> Response:  # type: ignore[valid-type]
        started = time.perf_counter()
        model = serving.model_or_503()
        state = request.scope.setdefault("state", {})
        state["model_version"] = model.version
        request_id = body.request_id or uuid.uuid4().hex
        state["request_id"] = request_id
        driver_ids: list[int] = body.driver_ids
        try:
            rows = await serving.features_or_503().read(driver_ids, model.features)
        except FeatureStoreUnavailable as exc:
            outage_log.warning("online features unavailable", request_id=request_id, error=str(exc))
            raise _unavailable(str(exc)) from None
        except KeyError as exc:
            raise _unavailable(f"model version {model.version} cannot be served: {exc.args[0]}") from None
        scores: list[float] = []
        if rows.driver_ids:
            # Column-major, as a DataFrame's values are: the final dot product then sums in the same order as
            # pyfunc on a DataFrame, so the scores are identical to the last bit, not merely close.
            scores = model.predict(np.array(rows.values, dtype=np.float64, order="F")).tolist()
            if not all(math.isfinite(s) for s in scores):
                raise RuntimeError(f"model version {model.version} returned non-finite scores")
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], rows.driver_ids[i]))
        ranking = [rows.driver_ids[i] for i in order]
        predicted_at = time.time()

        score_histogram = metrics.scores.labels(model.version)
        for score in scores:
            score_histogram.observe(score)
        if rows.missing:
            if rows.expired:
                metrics.missing.labels("expired").inc(rows.expired)
            if len(rows.missing) > rows.expired:
                metrics.missing.labels("not_found").inc(len(rows.missing) - rows.expired)
        if scores:
            serving.recent.remember(request_id, rows.driver_ids)
            publisher.publish(PredictionRecord(
                settings.predictions_topic, request_id, model.name, model.version, model.features,
                rows.driver_ids, rows.values, scores, predicted_at))

        body_out = {
            "request_id": request_id,
            "model": {"name": model.name, "version": model.version, "run_id": model.run_id},
            "scores": [{"driver_id": d, "score": s} for d, s in zip(rows.driver_ids, scores, strict=True)],
            "ranking": ranking,
            "best_driver_id": ranking[0] if ranking else None,
            "missing_driver_ids": rows.missing,
        }
        if log.isEnabledFor(logging.DEBUG):  # one line per request only when asked for: metrics count them
            log.debug("prediction served", extra={
                "request_id": request_id, "model_version": model.version, "drivers": len(driver_ids),
                "missing": len(rows.missing), "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
        return Response(json.dumps(body_out, separators=(",", ":")), media_type="application/json",
                        headers={"X-Request-ID": request_id})

    @app.post("/feedback", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.FeedbackResponse,
              dependencies=protected,
              responses={404: {"description": "The API never scored this driver for this request_id."},
                         503: {"description": "PostgreSQL (to check the pair) or the event spool (to keep "
                                                "the feedback) cannot take it now."}})
    async def feedback(body: schemas.FeedbackRequest, request: Request) -> JSONResponse:
        request.scope.setdefault("state", {})["request_id"] = body.request_id
        known = serving.recent.contains(body.request_id, body.driver_id)
        if not known:
            try:
                known = await serving.lookup.logged(body.request_id, body.driver_id)
            except LookupUnavailable as exc:
                outage_log.warning("feedback not checked", request_id=body.request_id, error=str(exc))
                raise _unavailable(str(exc)) from None
        if not known:
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                detail=f"unknown request_id {body.request_id!r} for driver_id {body.driver_id}: "
                                       "no prediction with this pair was served (or logged) by this API")
        record = FeedbackRecord(settings.ground_truth_topic, body.request_id, body.driver_id, body.trip_completed,
                                time.time())
        if not await asyncio.to_thread(publisher.publish_durably, record):  # 202 means it is on disk
            raise _unavailable(f"feedback not stored: {publisher.problem}; retry later")
        log.info("feedback accepted", extra={"request_id": body.request_id, "driver_id": body.driver_id,
                                             "trip_completed": body.trip_completed})
        return JSONResponse({"request_id": body.request_id, "driver_id": body.driver_id, "accepted": True},
                            status.HTTP_202_ACCEPTED)

    @app.get("/health", response_model=schemas.Health)
    async def health() -> dict[str, bool]:
        return {"alive": True}

    @app.get("/ready", response_model=schemas.Ready,
             responses={503: {"model": schemas.Ready, "description": "Not ready; `reason` says why."}})
    async def ready() -> JSONResponse:
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
                                                      "run_id": model.run_id}})

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format, all workers added up.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


def _refusals(auth: bool) -> dict[int, dict[str, Any]]:
    """What a POST may answer before its handler runs, besides the 422 FastAPI documents itself."""
    refusals: dict[int, dict[str, Any]] = {
        413: {"model": schemas.ErrorDetail, "description": f"The body is over {MAX_BODY_BYTES} bytes."}}
    if auth:
        refusals[401] = {"model": schemas.ErrorDetail,
                         "description": "No `Authorization: Bearer <SERVING_API_TOKEN>` header, or a wrong token."}
    return refusals


def main() -> int:
    """Serve on LISTEN_ADDRESS:SERVING_PORT with SERVING_WORKERS uvicorn workers, access log off."""
    import uvicorn

    settings = get_settings()
    # Before any metric exists in this process or in the workers it spawns (they inherit the variable).
    prepare_multiprocess_dir(settings.home / "serving-metrics")
    configure_logging(SERVICE, settings.log_level)
    log.info("starting uvicorn", extra={"address": f"{settings.listen_address}:{settings.serving_port}",
                                        "workers": settings.serving_workers})
    uvicorn.run("model_serving.api:create_app", factory=True, host=settings.listen_address,
                port=settings.serving_port, workers=settings.serving_workers, access_log=False, log_config=None,
                loop="uvloop", http="httptools", timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
