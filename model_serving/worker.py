"""What one API worker process holds, and how it starts and stops.

`Serving` is everything a request needs, built once per worker by `build_serving`. The slow parts of
start-up happen off the event loop: the feature definitions are read from Feast's registry on a thread
of their own (retrying until PostgreSQL answers), models load and swap on the model store's thread, and
the rollout state and its challenger on the rollout watcher's (model_serving.rollout_state), so the
worker answers /health at once and /ready once the champion and the features are in place.
"""

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, status

from mlops_platform.settings import Settings
from model_serving import project_serving
from model_serving.auth import BearerAuth
from model_serving.event_channel import EventChannel
from model_serving.features import FeatureDecoder, OnlineFeatures, load_spec
from model_serving.metrics import ServingMetrics
from model_serving.model_store import LoadedModel, ModelStore
from model_serving.prediction_store import MODEL_PREDICTIONS_TABLE
from model_serving.rollout_state import RolloutWatcher
from model_serving.served import PredictionLogLookup, RecentRequests
from model_serving.shadow import ShadowScorer

if TYPE_CHECKING:  # importing prometheus_client before main() picks the metrics mode would fix the wrong one
    from prometheus_client import CollectorRegistry

SERVICE = "serving"
SPEC_RETRY_MIN_SECONDS = 1.0
SPEC_RETRY_MAX_SECONDS = 30.0
log = logging.getLogger(SERVICE)


def unavailable(reason: str) -> HTTPException:
    """A 503 the client may retry in a second: the worker lacks something it needs to answer."""
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=reason, headers={"Retry-After": "1"})


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
    rollout: RolloutWatcher
    shadow: ShadowScorer
    features: OnlineFeatures | None = None
    features_problem: str = "feature definitions not loaded yet from Feast's registry"
    stop: threading.Event = field(default_factory=threading.Event)
    projects: dict[str, Any] = field(default_factory=dict)  # model_name -> project_serving.ProjectSlot
    model_lookup: PredictionLogLookup | None = None  # model_prediction_log, for the projects' /feedback

    def model_or_503(self) -> LoadedModel:
        model = self.models.current
        if model is None:
            raise unavailable(f"no model loaded: {self.models.problem}")
        return model

    def features_or_503(self) -> OnlineFeatures:
        if self.features is None:
            raise unavailable(self.features_problem)
        return self.features


def build_serving(settings: Settings, registry: "CollectorRegistry | None") -> Serving:
    """The worker's parts, wired: a model swap or a rollout change is counted and settles the heap, a failed
    load is counted, and the champion and the challenger reuse each other's loaded versions."""
    metrics = ServingMetrics(registry)
    publisher = EventChannel(metrics.events, settings.event_spool_dir, settings.event_spool_max_bytes)
    models = ModelStore(settings, served_features=lambda: served_features(serving),
                        on_swap=lambda old, new: (metrics.model_swapped(old, new), settle_heap()),
                        on_failure=lambda _reason: metrics.reload_failures.inc(),
                        held=lambda: (serving.rollout.view.challenger,))
    serving = Serving(
        settings=settings, metrics=metrics, publisher=publisher, recent=RecentRequests(),
        lookup=PredictionLogLookup(settings), auth=BearerAuth(settings.serving_auth, settings.serving_api_token),
        models=models, shadow=ShadowScorer(metrics),
        rollout=RolloutWatcher(settings, models,
                               on_change=lambda old, new: (metrics.rollout_changed(old, new), settle_heap()),
                               on_load_failure=lambda _reason: metrics.reload_failures.inc()))
    serving.projects = project_serving.build_slots(settings, serving)
    serving.model_lookup = PredictionLogLookup(settings, query=f"select 1 from {MODEL_PREDICTIONS_TABLE} where "
                                               "model_name = %s and request_id = %s and entity_key = %s limit 1")
    metrics.events.declare([settings.predictions_topic, settings.ground_truth_topic,
                            settings.model_predictions_topic, settings.model_ground_truth_topic])
    return serving


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the background parts of the worker, and stop them in order when uvicorn shuts it down."""
    serving: Serving = app.state.serving
    settings = serving.settings
    loop = asyncio.get_running_loop()
    threading.Thread(target=install_features, args=(serving, loop), name="feature-spec", daemon=True).start()
    serving.models.start()
    project_serving.start(serving.projects, settings, serving.stop, loop)
    serving.rollout.start()
    serving.publisher.start()
    log.info("serving started", extra={"model_uri": settings.model_uri, "auth": settings.serving_auth,
                                       "max_drivers": settings.serving_max_drivers,
                                       "predictions_topic": settings.predictions_topic})
    try:
        yield
    finally:
        serving.stop.set()
        serving.models.stop()
        await project_serving.stop(serving.projects)
        serving.rollout.stop()
        await serving.shadow.close()
        await asyncio.to_thread(serving.publisher.stop)
        if serving.features is not None:
            await serving.features.close()
        await serving.lookup.close()
        if serving.model_lookup is not None:
            await serving.model_lookup.close()
        serving.metrics.process_exit()
        log.info("serving stopped")


def load_decoder(serving: Serving) -> FeatureDecoder | None:
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


def install_features(serving: Serving, loop: asyncio.AbstractEventLoop) -> None:
    """Background start-up step: once the definitions are read, give the event loop its Redis reader."""
    decoder = load_decoder(serving)
    if decoder is None:
        return

    def install() -> None:  # on the event loop: the async Redis client belongs to it
        serving.features = OnlineFeatures(serving.settings, decoder)
        serving.features_problem = ""
        settle_heap()

    try:
        loop.call_soon_threadsafe(install)
    except RuntimeError:  # the loop closed: the server is shutting down
        return
    spec = decoder.spec
    log.info("feature definitions loaded", extra={
        "feature_view": spec.feature_view, "features": list(spec.features), "ttl_seconds": spec.ttl_seconds})


def settle_heap() -> None:
    """Exempt everything alive now (libraries, registry, model) from the cyclic garbage collector.

    A worker holds some 350,000 long-lived objects (Feast, MLflow, sklearn); a full collection walks all
    of them, stalling the event loop for 150-300 ms a few times a minute. Frozen, they are never walked
    again; called once the features are read and after every model swap. (An old model's objects are
    still freed by reference counting; only reference cycles among them stay.)
    """
    gc.freeze()


def served_features(serving: Serving) -> tuple[str, ...] | None:
    """What the online store serves, once known: a model needing anything else is not loaded."""
    return serving.features.decoder.spec.features if serving.features is not None else None
