"""What an API worker holds for each project's routes (/models/{model_name}/...): one `ProjectSlot` a project.

A slot has the project's champion, its online-feature reader, the pairs it scored lately (for /feedback)
and the encoder of inline raw fields. The project whose model is the driver API's (MODEL_NAME) shares that
API's model store and feature reader, so one worker never loads the same model twice; every other project
gets its own model store (model_serving.project_models) and reads its feature service's definition from
Feast's registry on a thread of its own, retrying until it exists. Nothing here blocks start-up, and one
project's missing model or features never stops another from serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlops_platform.projects import PROJECTS, Project
from mlops_platform.settings import Settings
from model_serving.features import FeatureDecoder, OnlineFeatures, load_spec
from model_serving.project_models import ProjectModel, ProjectModelStore
from model_serving.project_requests import RawEncoder, contract
from model_serving.served import RecentRequests

log = logging.getLogger("serving")
SPEC_RETRY_MIN_SECONDS = 1.0
SPEC_RETRY_MAX_SECONDS = 30.0


@dataclass
class ProjectSlot:
    """One project's parts in a worker; `shared` is True for the project served by the driver API's parts."""

    project: Project
    encoder: RawEncoder | None
    store: ProjectModelStore | None  # None: the model is the driver API's (see `shared_model`)
    shared_model: Callable[[], Any] | None = None
    shared_problem: Callable[[], str] | None = None
    shared_features: Callable[[], OnlineFeatures | None] | None = None
    own_features: OnlineFeatures | None = None
    features_problem: str = "feature definitions not loaded yet from Feast's registry"
    recent: RecentRequests = field(default_factory=RecentRequests)

    @property
    def model(self) -> ProjectModel | Any | None:
        return self.store.current if self.store is not None else self.shared_model()

    @property
    def model_problem(self) -> str:
        return self.store.problem if self.store is not None else self.shared_problem()

    @property
    def features(self) -> OnlineFeatures | None:
        return self.shared_features() if self.shared_features is not None else self.own_features


def build_slots(settings: Settings, serving: Any) -> dict[str, ProjectSlot]:
    """model_name -> its slot, for every project in PROJECTS."""
    slots: dict[str, ProjectSlot] = {}
    for project in PROJECTS.values():
        module = contract(project)
        encoder = RawEncoder(project, module) if module is not None else None
        if project.model_name == settings.model_name:
            slots[project.model_name] = ProjectSlot(
                project, encoder, None, shared_model=lambda: serving.models.current,
                shared_problem=lambda: serving.models.problem or serving.features_problem,
                shared_features=lambda: serving.features)
        else:
            store = ProjectModelStore(project, settings,
                                      on_swap=lambda old, new: serving.metrics.model_swapped(old, new))
            slots[project.model_name] = ProjectSlot(project, encoder, store)
    return slots


def start(slots: dict[str, ProjectSlot], settings: Settings, stop: threading.Event,
          loop: asyncio.AbstractEventLoop) -> None:
    """Start each own slot's model refresh and its feature-definition reader (both in the background)."""
    for slot in slots.values():
        if slot.store is None:
            continue
        slot.store.start()
        threading.Thread(target=_install_features, args=(slot, settings, stop, loop),
                         name=f"feature-spec-{slot.project.name}", daemon=True).start()


async def stop(slots: dict[str, ProjectSlot]) -> None:
    for slot in slots.values():
        if slot.store is not None:
            slot.store.stop()
        if slot.own_features is not None:
            await slot.own_features.close()


def _install_features(slot: ProjectSlot, settings: Settings, stop_event: threading.Event,
                      loop: asyncio.AbstractEventLoop) -> None:
    delay = SPEC_RETRY_MIN_SECONDS
    service = slot.project.feature_service
    while not stop_event.is_set():
        try:
            decoder = FeatureDecoder(load_spec(settings, service))
            break
        except Exception as exc:
            slot.features_problem = (f"feature service {service!r} not loaded from Feast's registry: "
                                     f"{type(exc).__name__}: {exc}")
            log.warning("feature definitions not loaded yet", extra={"error": slot.features_problem,
                                                                     "retry_in_s": delay})
            stop_event.wait(delay)
            delay = min(delay * 2, SPEC_RETRY_MAX_SECONDS)
    else:
        return

    def install() -> None:  # on the event loop: the async Redis client belongs to it
        slot.own_features = OnlineFeatures(settings, decoder)
        slot.features_problem = ""

    try:
        loop.call_soon_threadsafe(install)
    except RuntimeError:
        return
    log.info("feature definitions loaded", extra={"feature_service": service,
                                                  "features": list(decoder.spec.features)})
