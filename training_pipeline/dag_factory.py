"""The shared training DAG: one function builds a project's training DAG from its declaration and its steps.

    start -> prepare_training_set -> cross_validate_fold x K (mapped) ─┐
                                  └-> fit_final_model ─────────────────┴-> aggregate -> register_and_promote

A project's steps are plain functions (see training_pipeline.penguin_flow) named by dotted paths and
imported inside the tasks, so parsing a DAG file loads no model library, Feast or MLflow and reads no
settings. This package never imports Airflow (docs/architecture.md): the DAG file hands over the pieces
of Airflow's SDK the factory uses (`AirflowSDK`). The contract of the steps:

    start(overrides, run_name, source="airflow", now=...) -> context (a JSON dict)
    prepare_training_set(context) -> [fold spec, ...]        one per fold, mapped over
    cross_validate_fold(context, fold) -> fold result
    fit_final_model(context) -> final                        runs in parallel with the folds
    aggregate(context, [fold result, ...]) -> summary
    register_and_promote(context, summary, final) -> decision
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mlops_platform.projects import Project


@dataclass(frozen=True)
class AirflowSDK:
    """What the factory uses of `airflow.sdk`, given by the DAG file that imports it."""

    DAG: Any
    task: Any  # the @task decorator
    Param: Any
    fail: type[BaseException]  # AirflowFailException: fail at once, no retries


STEP_NAMES = ("start", "prepare_training_set", "cross_validate_fold", "fit_final_model", "aggregate",
              "register_and_promote")


@dataclass(frozen=True)
class Steps:
    """Where each step lives: step name -> "package.module" (the function has the step's name)."""

    modules: Mapping[str, str]

    @classmethod
    def in_module(cls, module: str, **elsewhere: str) -> Steps:
        """Every step in `module`, except those named in `elsewhere` (step=module)."""
        unknown = sorted(set(elsewhere) - set(STEP_NAMES))
        if unknown:
            raise ValueError(f"unknown step(s) {unknown}: the steps are {list(STEP_NAMES)}")
        return cls({step: elsewhere.get(step, module) for step in STEP_NAMES})

    def call(self, step: str, *args: Any, **kwargs: Any) -> Any:
        """Import the step's module (in the task's process, not at parse time) and run the step."""
        return getattr(importlib.import_module(self.modules[step]), step)(*args, **kwargs)


def build_training_dag(sdk: AirflowSDK, project: Project, steps: Steps, *,
                       params: Mapping[str, Mapping[str, Any]], schedule: Any = None, doc_md: str | None = None,
                       tags: tuple[str, ...] = (), retries: int = 1):
    """The DAG `project.training_dag`: the steps above, the folds mapped, the final fit beside them.

    params: name -> Param keyword arguments (a JSON schema: default, type, bounds, description).
    """
    with sdk.DAG(
        dag_id=project.training_dag,
        schedule=schedule,
        catchup=False,
        max_active_runs=1,  # aliases move one run at a time
        default_args={"retries": retries, "retry_delay": timedelta(seconds=30)},
        params={name: sdk.Param(**schema) for name, schema in params.items()},
        tags=["training", "mlflow", project.name, *tags],
        doc_md=doc_md,
    ) as dag:
        tasks = _tasks(sdk, steps)
        context = tasks["start"]()
        folds = tasks["prepare_training_set"](context)
        fold_results = tasks["cross_validate_fold"].partial(context=context).expand(fold=folds)
        final = tasks["fit_final_model"](context)
        folds >> final
        tasks["register_and_promote"](context, tasks["aggregate"](context, fold_results), final)
    return dag


def _tasks(sdk: AirflowSDK, steps: Steps) -> dict[str, Any]:
    """One task per step, calling the step's function in the task's process."""

    @sdk.task
    def start(params=None, dag_run=None, run_id=None, run_after=None) -> dict:
        from training_pipeline.config import ConfigError

        # --conf keys that are not params (a typo) reach the check and are refused.
        overrides = {**(dag_run.conf or {}), **dict(params)}
        try:
            # The run's own time, not the clock: a retried task sees the same seed and window.
            return steps.call("start", overrides, run_id, source="airflow", now=run_after)
        except ConfigError as error:  # retrying cannot fix a bad configuration
            raise sdk.fail(str(error)) from error

    @sdk.task
    def prepare_training_set(context: dict) -> list[dict]:
        return steps.call("prepare_training_set", context)

    @sdk.task
    def cross_validate_fold(context: dict, fold: dict) -> dict:
        return steps.call("cross_validate_fold", context, fold)

    @sdk.task
    def fit_final_model(context: dict) -> dict:
        return steps.call("fit_final_model", context)

    @sdk.task
    def aggregate(context: dict, fold_results: list[dict]) -> dict:
        return steps.call("aggregate", context, list(fold_results))

    @sdk.task
    def register_and_promote(context: dict, summary: dict, final: dict) -> dict:
        return steps.call("register_and_promote", context, summary, final)

    return {"start": start, "prepare_training_set": prepare_training_set, "cross_validate_fold": cross_validate_fold,
            "fit_final_model": fit_final_model, "aggregate": aggregate, "register_and_promote": register_and_promote}
