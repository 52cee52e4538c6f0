"""The champion model, loaded once and swapped in the background when the registry alias moves.

Requests read `ModelStore.current` once and keep that object for the whole request: a swap is one
reference assignment of an immutable `LoadedModel`, so a request in flight never sees half a model.
A refresh thread asks the registry every `model_refresh_seconds` which version the alias names; when
it names another one, that version is loaded (by version, not alias, so the alias cannot move between
the lookup and the load) and swapped in. A load that fails keeps the old model.

Scoring uses the sklearn pipeline on a float64 matrix whose columns are in the order the model was
fitted and logged with, instead of pyfunc on a DataFrame: the same arithmetic, without building a
DataFrame and enforcing the schema on every request. For the platform's pipeline shape (imputer ->
scaler -> linear regressor) the same arithmetic also runs without sklearn's per-call input checks
(model_serving.linear_form), proven identical to `Pipeline.predict` when the model is loaded.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_platform import model_registry
from mlops_platform.settings import Settings
from model_serving.linear_form import exact_form
from model_serving.refresh_thread import RefreshThread

log = logging.getLogger("serving.model")

# The pipeline was fitted on a DataFrame; scoring a matrix whose columns are checked against the
# logged signature at load time is intended, so sklearn's reminder about feature names is noise.
warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


class ModelLoadError(RuntimeError):
    """A registered model version cannot be served; the message says what was expected and found."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, ready to score. Never mutated after loading."""

    name: str
    version: str
    run_id: str
    features: tuple[str, ...]
    pipeline: Any  # a fitted sklearn Pipeline
    loaded_at: float
    exact: Callable[[np.ndarray], np.ndarray] | None = None  # see model_serving.linear_form

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Scores for the rows of a float64 matrix with one column per feature, in `features` order."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.features):
            raise ValueError(f"expected a matrix of shape (n, {len(self.features)}) for features "
                             f"{list(self.features)}, got shape {matrix.shape}")
        if self.exact is not None and not np.isnan(matrix).any():
            return self.exact(matrix)
        return np.asarray(self.pipeline.predict(matrix), dtype=np.float64).reshape(-1)


def signature_features(model_meta: Any, pipeline: Any, where: str) -> tuple[str, ...]:
    """The input columns in the order the pipeline computes on, checked against the logged signature."""
    signature = model_meta.signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        raise ModelLoadError(f"{where} was logged without a signature naming its input columns; expected one "
                             "like conv_rate, acc_rate, avg_daily_trips (mlflow.sklearn.log_model(signature=...))")
    logged = tuple(signature.inputs.input_names())
    fitted = getattr(pipeline, "feature_names_in_", None)
    if fitted is None:
        return logged
    fitted = tuple(str(name) for name in fitted)
    if fitted != logged:
        raise ModelLoadError(f"{where}: the signature names columns {list(logged)} but the pipeline was fitted on "
                             f"{list(fitted)}; they must be the same columns in the same order")
    return fitted


def load_version(name: str, version: str, run_id: str, served_features: Sequence[str] | None = None,
                 tracking_uri: str | None = None) -> LoadedModel:
    """Download `models:/<name>/<version>` once and load its sklearn pipeline and signature from disk."""
    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow.models import Model

    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="serving-model-") as folder:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder,
                                                        tracking_uri=tracking_uri)
            meta = Model.load(local)
            if "sklearn" not in meta.flavors:
                raise ModelLoadError(f"{uri} has flavors {sorted(meta.flavors)}, expected an sklearn model "
                                     "(mlflow.sklearn.log_model)")
            with warnings.catch_warnings():  # skops warns once per scipy ufunc it looks up
                warnings.simplefilter("ignore")
                pipeline = mlflow.sklearn.load_model(local)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"could not load {uri}: {type(exc).__name__}: {exc}") from exc
    features = signature_features(meta, pipeline, uri)
    if served_features is not None:
        unknown = [f for f in features if f not in served_features]
        if unknown:
            raise ModelLoadError(f"{uri} needs features {list(features)}; the online store does not serve "
                                 f"{unknown} (it serves {list(served_features)})")
    if not hasattr(pipeline, "predict"):
        raise ModelLoadError(f"{uri} loaded a {type(pipeline).__name__}, expected an estimator with predict()")
    exact = exact_form(pipeline, len(features))
    log.info("model scoring path chosen", extra={
        "model_uri": uri, "path": "exact numpy form" if exact else "Pipeline.predict",
        "steps": [type(step).__name__ for _, step in getattr(pipeline, "steps", [])]})
    return LoadedModel(name, str(version), run_id or "", features, pipeline, time.time(), exact)


class ModelStore:
    """Holds the current champion and keeps it in step with the registry alias.

    `held` names the other models the worker keeps loaded (a rollout's challenger): a version found there
    or in the champion is reused, not downloaded again, so a promoted challenger takes over at once.
    """

    def __init__(self, settings: Settings, served_features: Callable[[], Sequence[str] | None] = lambda: None,
                 on_swap: Callable[[LoadedModel | None, LoadedModel], None] | None = None,
                 on_failure: Callable[[str], None] | None = None,
                 held: Callable[[], Sequence[LoadedModel | None]] = lambda: ()) -> None:
        self.name = settings.model_name
        self.alias = settings.model_alias
        self.tracking_uri = settings.mlflow_tracking_uri
        self.interval = max(0.1, settings.model_refresh_seconds)
        self._served_features = served_features
        self._on_swap = on_swap
        self._on_failure = on_failure
        self._held = held
        self._current: LoadedModel | None = None
        self._client: Any = None
        self._refresher = RefreshThread("model-refresh", self.refresh, self._next_wait, log)
        self._failed: tuple[str, float] | None = None  # (version, when) of the last failed load
        self.reloads = 0
        self.reload_failures = 0
        self.problem = f"no model loaded yet from {settings.model_uri}"

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    # ---- registry ------------------------------------------------------------------------------
    def _mlflow_client(self):
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            self._client = model_registry.polling_client(self.tracking_uri)  # the refresh loop retries itself
        return self._client

    def alias_target(self) -> model_registry.Champion | None:
        """The version the alias names now, or None when the model or the alias does not exist yet."""
        return model_registry.find_champion(self._mlflow_client(), self.name, self.alias)

    def loaded(self, version: str) -> LoadedModel | None:
        """`version` if this worker holds it already (as champion or beside it), else None."""
        for model in (self._current, *self._held()):
            if model is not None and model.version == version:
                return model
        return None

    def load(self, version: str) -> LoadedModel:
        """`version` of the served model, reusing one already held; ModelLoadError (or the registry's error)
        when it cannot be served. Blocks for the download: call it from a background thread."""
        held = self.loaded(version)
        if held is not None:
            return held
        run_id = self._mlflow_client().get_model_version(self.name, version).run_id
        return load_version(self.name, version, run_id, self._served_features(), self.tracking_uri)

    def refresh(self) -> bool:
        """Load the alias's version when it differs from the current one; True when a model was swapped in."""
        try:
            target = self.alias_target()
        except Exception as exc:  # registry down or answering badly: keep serving what we have
            self._note_problem(f"model registry {self.tracking_uri} did not answer: {type(exc).__name__}: {exc}",
                               failure=False)
            return False
        if target is None:
            self._note_problem(f"registered model {self.name!r} has no alias {self.alias!r} yet "
                               "(train and promote a model first)", failure=False)
            return False
        current = self._current
        if current is not None and current.version == target.version:
            self.problem = ""
            return False
        retry_after = max(30.0, 6 * self.interval)
        if self._failed and self._failed[0] == target.version and time.monotonic() - self._failed[1] < retry_after:
            return False
        started = time.perf_counter()
        try:
            loaded = self.loaded(target.version) or load_version(
                self.name, target.version, target.run_id, self._served_features(), self.tracking_uri)
        except Exception as exc:
            self._failed = (target.version, time.monotonic())
            self.reload_failures += 1
            self._note_problem(str(exc), failure=True)
            return False
        self._failed = None
        self._current = loaded  # the swap: one reference assignment
        self.reloads += 1
        self.problem = ""
        log.info("model loaded", extra={
            "model_name": loaded.name, "model_version": loaded.version, "run_id": loaded.run_id,
            "previous_version": current.version if current else None, "features": list(loaded.features),
            "seconds": round(time.perf_counter() - started, 3)})
        if self._on_swap is not None:
            self._on_swap(current, loaded)
        return True

    def _note_problem(self, problem: str, failure: bool) -> None:
        if problem != self.problem or failure:
            level = logging.ERROR if failure else logging.WARNING
            kept = f"; still serving version {self._current.version}" if self._current else ""
            log.log(level, "model not (re)loaded", extra={"reason": problem + kept, "model_name": self.name,
                                                         "alias": self.alias})
        self.problem = problem
        if failure and self._on_failure is not None:
            self._on_failure(problem)

    # ---- background refresh --------------------------------------------------------------------
    def start(self) -> None:
        """First load and then periodic checks, all on a daemon thread (start-up never waits for MLflow)."""
        self._refresher.start()

    def _next_wait(self) -> float:
        return self.interval if self._current is not None else min(self.interval, 2.0)

    def stop(self, timeout: float = 5.0) -> None:
        self._refresher.stop(timeout)
