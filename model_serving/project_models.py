"""Each project's champion in an API worker: loaded once, swapped in the background when its alias moves.

The driver model has its own store (model_serving.model_store, with rollouts); every other project in
mlops_platform.projects.PROJECTS gets a `ProjectModelStore` here, following `models:/<model_name>@<alias>`
on a refresh thread of its own (model_serving.refresh_thread). A project with no registered model yet keeps
its reason in `problem` (its routes answer 503 naming it) while the other projects serve.

A Keras model (MLflow's keras flavour) scores through its numpy form (model_serving.keras_form) when the
form reproduces Keras's predict at load time, else through Keras itself. Keras and JAX are imported only
when such a model is loaded: a worker serving no Keras model never pays for them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import mlops_platform.keras_backend  # noqa: F401  (sets Keras's backend; imports nothing heavy)
from mlops_platform import model_registry
from mlops_platform.projects import Project
from mlops_platform.settings import Settings
from model_serving.model_store import ModelLoadError
from model_serving.refresh_thread import RefreshThread

log = logging.getLogger("serving.model")


@dataclass(frozen=True)
class ProjectModel:
    """One registered version of a project's model, ready to score. Never mutated after loading."""

    name: str
    version: str
    run_id: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]  # a classifier's classes, in the order of its probability columns
    scorer: Callable[[np.ndarray], np.ndarray]  # float32 matrix (n, features) -> (n, outputs)
    path: str  # "numpy form" or "keras" or "pyfunc": how it scores, for logs and tests
    loaded_at: float

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities (n, len(outputs)) for a matrix with one column per feature, in `features` order."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.features):
            raise ValueError(f"expected a matrix of shape (n, {len(self.features)}) for features "
                             f"{list(self.features)}, got shape {matrix.shape}")
        result = np.asarray(self.scorer(matrix), dtype=np.float64)
        if result.ndim != 2 or result.shape != (matrix.shape[0], len(self.outputs)):
            raise ValueError(f"model {self.name} version {self.version} returned shape {result.shape}, expected "
                             f"({matrix.shape[0]}, {len(self.outputs)}) for outputs {list(self.outputs)}")
        return result


def logged_features(meta: Any, uri: str, project: Project) -> tuple[str, ...]:
    """The model's input columns: the project's features, in order, as the logged signature states them.

    A column signature must name exactly those columns. MLflow's keras flavour only takes a tensor signature
    (no column names): its last dimension must then be the number of features, and the columns are the
    project's features in the contract's order (as `metadata["features"]` says when the model logged it).
    """
    signature = meta.signature
    expected = tuple(project.features)
    if signature is None or signature.inputs is None:
        raise ModelLoadError(f"{uri} was logged without an input signature; expected the columns {list(expected)}")
    if signature.inputs.has_input_names() and not signature.inputs.is_tensor_spec():
        logged = tuple(signature.inputs.input_names())
        if logged != expected:
            raise ModelLoadError(f"{uri} takes columns {list(logged)}; project {project.name} serves "
                                 f"{list(expected)} (same names, same order)")
        return logged
    shapes = [tuple(spec.shape) for spec in signature.inputs.inputs]
    named = tuple((meta.metadata or {}).get("features") or expected)
    if len(shapes) != 1 or not shapes[0] or shapes[0][-1] != len(expected) or named != expected:
        raise ModelLoadError(f"{uri} takes tensors of shapes {shapes} (features {list(named)}); expected one "
                             f"tensor (-1, {len(expected)}) of the features {list(expected)} in this order")
    return expected


def keras_scorer(keras_model: Any, n_features: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The numpy form of the model when it reproduces Keras's predict, else Keras's predict itself."""
    from model_serving.keras_form import dense_form

    form = dense_form(keras_model, n_features)
    if form is not None:
        return form, "numpy form"
    return (lambda matrix: keras_model.predict(np.asarray(matrix, dtype=np.float32), verbose=0)), "keras"


def load_project_version(project: Project, version: str, run_id: str, tracking_uri: str | None) -> ProjectModel:
    """Download `models:/<model_name>/<version>` once and load it for scoring."""
    import mlflow.artifacts
    from mlflow.models import Model

    uri = f"models:/{project.model_name}/{version}"
    with tempfile.TemporaryDirectory(prefix="serving-model-") as folder:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri)
            meta = Model.load(local)
            features = logged_features(meta, uri, project)
            if "keras" in meta.flavors:
                import mlflow.keras

                scorer, path = keras_scorer(mlflow.keras.load_model(local), len(features))
            else:
                import mlflow.pyfunc

                pyfunc = mlflow.pyfunc.load_model(local)
                scorer, path = _pyfunc_scorer(pyfunc, features), "pyfunc"
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"could not load {uri}: {type(exc).__name__}: {exc}") from exc
    outputs = project.classes if project.is_classifier else ("score",)
    loaded = ProjectModel(project.model_name, str(version), run_id or "", features, outputs, scorer, path, time.time())
    loaded.predict(np.zeros((1, len(features)), dtype=np.float32))  # the output shape is checked now, not later
    log.info("model scoring path chosen", extra={"model_uri": uri, "path": path})
    return loaded


def _pyfunc_scorer(pyfunc: Any, features: tuple[str, ...]) -> Callable[[np.ndarray], np.ndarray]:
    import pandas as pd

    def score(matrix: np.ndarray) -> np.ndarray:
        result = pyfunc.predict(pd.DataFrame(np.asarray(matrix, dtype=np.float32), columns=list(features)))
        values = np.asarray(getattr(result, "values", result), dtype=np.float64)
        return values.reshape(len(matrix), -1)

    return score


class ProjectModelStore:
    """Holds one project's champion and keeps it in step with the registry alias (see the module docstring)."""

    def __init__(self, project: Project, settings: Settings,
                 on_swap: Callable[[ProjectModel | None, ProjectModel], None] | None = None,
                 loader: Callable[[Project, str, str, str | None], ProjectModel] = load_project_version) -> None:
        self.project = project
        self.alias = settings.model_alias
        self.tracking_uri = settings.mlflow_tracking_uri
        self.interval = max(0.1, settings.model_refresh_seconds)
        self._on_swap = on_swap
        self._loader = loader
        self._current: ProjectModel | None = None
        self._client: Any = None
        self._failed: tuple[str, float] | None = None
        self._refresher = RefreshThread(f"model-refresh-{project.name}", self.refresh, self._next_wait, log)
        self.problem = f"no model loaded yet from models:/{project.model_name}@{self.alias}"

    @property
    def current(self) -> ProjectModel | None:
        return self._current

    def _mlflow_client(self) -> Any:
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            self._client = model_registry.polling_client(self.tracking_uri)
        return self._client

    def refresh(self) -> bool:
        """Load the alias's version when it differs from the current one; True when a model was swapped in."""
        name = self.project.model_name
        try:
            target = model_registry.find_champion(self._mlflow_client(), name, self.alias)
        except Exception as exc:
            self._note(f"model registry {self.tracking_uri} did not answer: {type(exc).__name__}: {exc}")
            return False
        if target is None:
            self._note(f"registered model {name!r} has no alias {self.alias!r} yet (train and promote a "
                       f"{self.project.name} model first: the {self.project.training_dag} DAG)")
            return False
        current = self._current
        if current is not None and current.version == target.version:
            self.problem = ""
            return False
        if self._failed and self._failed[0] == target.version and \
                time.monotonic() - self._failed[1] < max(30.0, 6 * self.interval):
            return False
        try:
            loaded = self._loader(self.project, target.version, target.run_id, self.tracking_uri)
        except Exception as exc:
            self._failed = (target.version, time.monotonic())
            self._note(str(exc), failure=True)
            return False
        self._failed = None
        self._current = loaded
        self.problem = ""
        log.info("model loaded", extra={"model_name": name, "model_version": loaded.version, "run_id": loaded.run_id,
                                        "previous_version": current.version if current else None,
                                        "path": loaded.path})
        if self._on_swap is not None:
            self._on_swap(current, loaded)
        return True

    def _note(self, problem: str, failure: bool = False) -> None:
        if problem != self.problem or failure:
            kept = f"; still serving version {self._current.version}" if self._current else ""
            log.log(logging.ERROR if failure else logging.WARNING, "model not (re)loaded",
                    extra={"reason": problem + kept, "model_name": self.project.model_name, "alias": self.alias})
        self.problem = problem

    def _next_wait(self) -> float:
        return self.interval if self._current is not None else min(self.interval, 2.0)

    def start(self) -> None:
        self._refresher.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._refresher.stop(timeout)
