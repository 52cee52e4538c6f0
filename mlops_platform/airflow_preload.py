"""Run an Airflow component whose tasks are forked from it, with the modules the tasks import already loaded.

On Linux, Airflow starts a task by forking, never by exec: the LocalExecutor forks its worker processes
from the scheduler and each task from a worker, and a Celery worker forks its pool, and each task from a
pool process. A task therefore starts with whatever its ancestor had imported. Left alone, every task
imports MLflow, Feast, scikit-learn and the platform's steps itself: about 7 s of each task's start-up on
these machines, the larger part of a short DAG's wall time. Imported once here, before the component
starts, they cost each task nothing (and the forked processes share the pages).

    python -m mlops_platform.airflow_preload scheduler        # instead of `airflow scheduler`
    python -m mlops_platform.airflow_preload celery worker ...

Only modules that are safe to fork are preloaded: none may start a thread at import (a lock held by a
thread is held forever in the child), and no JAX or Keras (the penguin tasks import them themselves).
`preload` refuses to go on if one did, so the component fails at start instead of hanging later.
AIRFLOW_PRELOAD=off runs plain `airflow` instead: for a project whose steps must be imported fresh in every
task (a library that is not fork-safe), or to measure the difference (benchmarks/bench_training_dag.py).
"""

from __future__ import annotations

import gc
import importlib
import json
import runpy
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

# What the platform's DAG tasks import: the task runner, the libraries, the steps.
PRELOADED = (
    "airflow.sdk",
    "airflow.sdk.execution_time.task_runner",
    "mlflow",
    "mlflow.models",
    "mlflow.sklearn",
    "feast",
    "mlops_platform.feature_store",
    "mlops_platform.model_registry",
    "mlops_platform.rollout",
    "data_pipeline.ingest",
    "data_pipeline.materialize",
    "data_pipeline.offline_store",
    "data_pipeline.shards",
    "training_pipeline.config",
    "training_pipeline.dag_factory",
    "training_pipeline.final_model",
    "training_pipeline.flow",
    "training_pipeline.penguin_config",
    "training_pipeline.promotion",
    "model_serving.batch",
    "model_serving.project_batch",
)
# Never in a process that forks tasks: they start threads, or hold state a fork would share.
NOT_FORK_SAFE = ("jax", "jaxlib", "keras", "tensorflow", "torch")


class PreloadError(RuntimeError):
    """A preloaded module made the process unsafe to fork tasks from."""


def preload(modules: Sequence[str] = PRELOADED) -> float:
    """Import `modules`; returns the seconds it took. Raises PreloadError if a thread was started or a module
    that is not fork-safe came in with them."""
    started = time.monotonic()
    threads_before = {thread.ident for thread in threading.enumerate()}
    modules_before = set(sys.modules)
    for module in modules:
        importlib.import_module(module)
    new_threads = [thread.name for thread in threading.enumerate() if thread.ident not in threads_before]
    if new_threads:
        raise PreloadError(f"preloading {list(modules)} started thread(s) {new_threads}: tasks forked from this "
                           "process could hang on a lock one of them holds; take the module that starts them out")
    unsafe = sorted(name for name in set(sys.modules) - modules_before if name.split(".")[0] in NOT_FORK_SAFE)
    if unsafe:
        raise PreloadError(f"preloading {list(modules)} imported {unsafe[:5]}, which is not safe to fork tasks from")
    # Objects that exist now are never collected: the forked processes then share their pages.
    gc.freeze()
    return time.monotonic() - started


def main(argv: Sequence[str]) -> None:
    seconds = preload()
    # One JSON line, as our services log; Airflow configures its own logging after this.
    print(json.dumps({"timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "INFO",
                      "service": f"airflow {' '.join(argv[:2])}", "logger": __name__,
                      "message": f"preloaded {len(PRELOADED)} modules for the tasks", "seconds": round(seconds, 2)}),
          file=sys.stderr, flush=True)
    # What `python -m airflow <argv>` does, in this process, which now holds the preloaded modules.
    sys.argv = ["airflow", *argv]
    runpy.run_module("airflow", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
