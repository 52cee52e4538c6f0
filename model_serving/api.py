"""The online prediction API: rank drivers by how likely they are to complete a trip.

    POST /predict   {"request_id"?: str, "customer_id"?: str, "driver_ids": [int, ...]} -> scores, ranking,
                    best driver, and the model version and variant (champion or challenger) that answered
    POST /feedback  {"request_id": str, "driver_id": int, "trip_completed": 0|1} -> 202
    POST /models/{model_name}/predict, /models/{model_name}/feedback
                    the same for every project of mlops_platform.projects (model_serving.project_routes)
    GET  /health    alive (200 while the process serves)
    GET  /ready     200 when a model is loaded and Redis answers, else 503 with the reason
    GET  /metrics   Prometheus

`python -m model_serving.api` runs it under uvicorn with SERVING_WORKERS processes. A request does
one Redis round trip and one sklearn call on the event loop, and appends its prediction-log record to
the worker's event spool on local disk without waiting for Kafka (model_serving.event_channel). Everything
slow or fallible happens elsewhere: loading and swapping models on a background thread, talking to Kafka
in the event sender process, which delivers the spool in order once the broker acknowledges.

This module wires the application: the worker's parts (model_serving.worker), the route handlers
(model_serving.handlers), the request middleware (model_serving.request_metrics) and logging.
"""

import atexit
import logging
import logging.handlers
import queue
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, status
from fastapi.responses import PlainTextResponse

from mlops_platform.logs import configure_logging
from mlops_platform.settings import Settings, get_settings
from model_serving import handlers, project_routes, schemas
from model_serving.metrics import prepare_multiprocess_dir
from model_serving.request_body import StrictJSONRoute
from model_serving.request_metrics import MAX_BODY_BYTES, RequestMetrics
from model_serving.worker import SERVICE, build_serving, lifespan

if TYPE_CHECKING:  # importing prometheus_client before main() picks the metrics mode would fix the wrong one
    from prometheus_client import CollectorRegistry

log = logging.getLogger(SERVICE)


def create_app(settings: Settings | None = None, registry: "CollectorRegistry | None" = None) -> FastAPI:
    """The application; uvicorn calls this once in each worker process (`registry`: see ServingMetrics)."""
    settings = settings or get_settings()
    _configure_process(settings)
    app = FastAPI(title="Driver ranking API", version="1.0",
                  description="Ranks drivers by how likely they are to complete a trip, with the registry's "
                              f"`{settings.model_alias}` model and Feast's online features.",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.serving = serving = build_serving(settings, registry)
    # Before any route is added: every route parses JSON strictly and documents what is refused around it.
    app.router.route_class = StrictJSONRoute.documenting(_refusals(settings.serving_auth))
    app.add_middleware(RequestMetrics, serving=serving)
    app.add_exception_handler(Exception, handlers.unexpected)
    _add_routes(app, settings)
    project_routes.add_routes(app, serving, [Depends(handlers.require_token)] if settings.serving_auth else [])
    return app


def _add_routes(app: FastAPI, settings: Settings) -> None:
    protected = [Depends(handlers.require_token)] if settings.serving_auth else []
    predict = handlers.predict_endpoint(schemas.predict_request_model(settings.serving_max_drivers))
    app.add_api_route("/predict", predict, methods=["POST"], response_model=schemas.PredictResponse,
                      dependencies=protected,
                      responses={503: {"description": "No model loaded, or the online store does not answer."}})
    app.add_api_route("/feedback", handlers.feedback, methods=["POST"], status_code=status.HTTP_202_ACCEPTED,
                      response_model=schemas.FeedbackResponse, dependencies=protected,
                      responses={404: {"description": "The API never scored this driver for this request_id."},
                                 503: {"description": "PostgreSQL (to check the pair) or the event spool (to keep "
                                                        "the feedback) cannot take it now."}})
    app.add_api_route("/health", handlers.health, methods=["GET"], response_model=schemas.Health)
    app.add_api_route("/ready", handlers.ready, methods=["GET"], response_model=schemas.Ready,
                      responses={503: {"model": schemas.Ready, "description": "Not ready; `reason` says why."}})
    app.add_api_route("/metrics", handlers.prometheus_metrics, methods=["GET"], response_class=PlainTextResponse,
                      responses={200: {"description": "Prometheus text exposition format, all workers added up.",
                                       "content": {"text/plain": {"schema": {"type": "string"}}}}})


def _configure_process(settings: Settings) -> None:
    """Logging off the event loop, quiet libraries, and sklearn without its per-call finiteness check."""
    import sklearn

    _log_off_the_loop(configure_logging(SERVICE, settings.log_level))
    # Inputs are built here from decoded numbers, never NaN or infinite: sklearn's per-call finiteness
    # check over them is pure overhead (a quarter of a small pipeline's predict time).
    sklearn.set_config(assume_finite=True)
    for noisy in ("kafka", "mlflow", "feast", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _refusals(auth: bool) -> dict[int, dict[str, Any]]:
    """What a POST may answer before its handler runs, besides the 422 FastAPI documents itself."""
    refusals: dict[int, dict[str, Any]] = {
        413: {"model": schemas.ErrorDetail, "description": f"The body is over {MAX_BODY_BYTES} bytes."}}
    if auth:
        refusals[401] = {"model": schemas.ErrorDetail,
                         "description": "No `Authorization: Bearer <SERVING_API_TOKEN>` header, or a wrong token."}
    return refusals


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """Hands records over as they are: the JSON formatter on the other side needs their extra fields."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def _log_off_the_loop(service_log: logging.Logger) -> None:
    """Write log lines from a thread of their own: a slow stdout (a full pipe) must not stall requests."""
    root = logging.getLogger()
    handlers_now = root.handlers[:]
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers_now, respect_handler_level=True)
    root.handlers[:] = [_PassThroughQueueHandler(records)]
    listener.start()
    atexit.register(listener.stop)
    service_log.debug("logging through a queue", extra={"handlers": len(handlers_now)})


def main() -> int:
    """Serve on LISTEN_ADDRESS:SERVING_PORT with SERVING_WORKERS uvicorn workers, access log off."""
    import uvicorn

    settings = get_settings()
    # Before any metric exists in this process or in the workers it spawns (they inherit the variable).
    # One folder per port: replicas of the API (mlops_platform.instances) share PLATFORM_HOME, not their metrics.
    prepare_multiprocess_dir(settings.home / "serving-metrics" / str(settings.serving_port))
    configure_logging(SERVICE, settings.log_level)
    log.info("starting uvicorn", extra={"address": f"{settings.listen_address}:{settings.serving_port}",
                                        "workers": settings.serving_workers})
    uvicorn.run("model_serving.api:create_app", factory=True, host=settings.listen_address,
                port=settings.serving_port, workers=settings.serving_workers, access_log=False, log_config=None,
                loop="uvloop", http="httptools", timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
