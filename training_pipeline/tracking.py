"""MLflow bookkeeping through explicit run ids, so steps in separate processes share one parent run.

No step relies on MLflow's "active run" except to log the model (which needs one): each opens the
run it needs by id and closes it again. The client and the server check: mlops_platform.model_registry.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from mlops_platform.settings import REPO_ROOT

PARENT_TAG = "mlflow.parentRunId"


def experiment_id(mlflow_client, name: str) -> str:
    """The experiment's id, created on first use (a concurrent creation is tolerated)."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def open_run(mlflow_client, experiment: str, name: str, tags: Mapping[str, str],
             parent_run_id: str | None = None) -> str:
    """A new RUNNING run; nested under `parent_run_id` when given."""
    tags = dict(tags)
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    return mlflow_client.create_run(experiment, run_name=name, tags=tags).info.run_id


def log_params(mlflow_client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    mlflow_client.log_batch(run_id, params=[Param(k, _text(v)) for k, v in params.items()])


def log_metrics(mlflow_client, run_id: str, metrics: Mapping[str, float]) -> None:
    """Finite values only: MLflow stores NaN, but it breaks comparisons and charts."""
    from mlflow.entities import Metric

    stamp = _now_ms()
    values = [Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)]
    mlflow_client.log_batch(run_id, metrics=values)


def set_tags(mlflow_client, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    mlflow_client.log_batch(run_id, tags=[RunTag(k, _text(v)) for k, v in tags.items()])


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)[:5000]


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def git_commit() -> str:
    """The code's commit: `git rev-parse HEAD`, else $GIT_COMMIT (set by CI or an image), else "unknown"."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=5)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("GIT_COMMIT") or "unknown"
