"""The running rollout as one API worker sees it, with the challenger model loaded beside the champion.

A thread of its own re-reads the rollout (mlops_platform.rollout_store) every ROLLOUT_REFRESH_SECONDS, so a
`bash run.sh rollout start|promote|rollback` reaches every worker without a restart. A new challenger
version is loaded on that thread (or taken from the model store when the worker holds it already), and the
new state is published only then, as one reference swap: requests never wait for a download, and a rollout
takes effect in a worker once its challenger is ready there (or failed to load, which is then an error
of the challenger on every request it would answer). PostgreSQL down: the last state read is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlops_platform import rollout_store
from mlops_platform.rollout import Rollout
from mlops_platform.settings import Settings
from model_serving.model_store import LoadedModel, ModelStore
from model_serving.refresh_thread import RefreshThread

log = logging.getLogger("serving.rollout")
READ_TIMEOUT_SECONDS = 2
RETRY_FAILED_LOAD_SECONDS = 30.0


@dataclass(frozen=True)
class RolloutView:
    """What a request reads: the rollout (None: mode champion) and its challenger, or why it is not loaded."""

    rollout: Rollout | None = None
    challenger: LoadedModel | None = None
    problem: str = ""

    def challenger_problem(self) -> str:
        """Why the challenger cannot answer, as logged with its failed rows."""
        version = self.rollout.challenger_version if self.rollout else "?"
        return f"challenger version {version} not loaded: {self.problem or 'unknown reason'}"


NO_ROLLOUT = RolloutView()


class RolloutWatcher:
    """Keeps `view` in step with the rollout table; `on_change(old, new)` is called after each change."""

    def __init__(self, settings: Settings, models: ModelStore,
                 on_change: Callable[[RolloutView, RolloutView], None] | None = None,
                 on_load_failure: Callable[[str], None] | None = None,
                 read: Callable[[], Rollout | None] | None = None) -> None:
        self.settings = settings
        self.models = models
        self.interval = max(0.1, settings.rollout_refresh_seconds)
        self._read = read or (lambda: rollout_store.current(settings, settings.model_name, READ_TIMEOUT_SECONDS))
        self._on_change = on_change
        self._on_load_failure = on_load_failure
        self.view = NO_ROLLOUT
        self.state_problem = ""  # why the state could not be read lately ("" when it could)
        self._failed_load: tuple[str, float, str] | None = None  # (version, when, reason) of the last failed load
        self._refresher = RefreshThread("rollout-refresh", self.refresh, lambda: self.interval, log)

    def refresh(self) -> RolloutView:
        """Read the state once, load a new challenger if needed, publish; returns the view now in force."""
        try:
            rollout = self._read()
        except Exception as exc:  # PostgreSQL down or slow: keep serving the last state known
            problem = f"{type(exc).__name__}: {exc}".strip()
            if not self.state_problem:
                log.warning("rollout state not readable; keeping the last one known", extra={
                    "error": problem, "mode": self.view.rollout.mode if self.view.rollout else "champion"})
            self.state_problem = problem
            return self.view
        if self.state_problem:
            log.info("rollout state readable again", extra={"previous_error": self.state_problem})
            self.state_problem = ""
        new = self._view_of(rollout)
        old, self.view = self.view, new
        if new != old:
            log.info("rollout state changed", extra={
                "mode": new.rollout.mode if new.rollout else "champion",
                "rollout_id": new.rollout.rollout_id if new.rollout else None,
                "share": new.rollout.share if new.rollout else 0.0,
                "challenger_version": new.challenger.version if new.challenger else None,
                "challenger_problem": new.problem or None})
            if self._on_change is not None:
                self._on_change(old, new)
        return new

    def _view_of(self, rollout: Rollout | None) -> RolloutView:
        if rollout is None:
            return NO_ROLLOUT
        version = rollout.challenger_version
        current = self.view.challenger
        if current is not None and current.version == version:
            return RolloutView(rollout, current)
        failed = self._failed_load
        if failed and failed[0] == version and time.monotonic() - failed[1] < RETRY_FAILED_LOAD_SECONDS:
            return RolloutView(rollout, None, failed[2])
        started = time.perf_counter()
        try:
            challenger = self.models.load(version)
        except Exception as exc:  # not loadable (features the store lacks, no such version, registry down)
            reason = f"{type(exc).__name__}: {exc}"
            self._failed_load = (version, time.monotonic(), reason)
            log.error("challenger not loaded", extra={"model_name": rollout.model_name, "model_version": version,
                                                      "rollout_id": rollout.rollout_id, "reason": reason})
            if self._on_load_failure is not None:
                self._on_load_failure(reason)
            return RolloutView(rollout, None, reason)
        self._failed_load = None
        log.info("challenger loaded", extra={"model_name": rollout.model_name, "model_version": version,
                                             "features": list(challenger.features),
                                             "seconds": round(time.perf_counter() - started, 3)})
        return RolloutView(rollout, challenger)

    # ---- background refresh --------------------------------------------------------------------
    def start(self) -> None:
        self._refresher.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._refresher.stop(timeout)
