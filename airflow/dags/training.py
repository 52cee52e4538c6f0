"""training: labels + point-in-time features -> cross-validated ElasticNet -> registry, champion/challenger.

Weekly, on the 30 days of labels before the run (params override any value):

    airflow dags trigger training --conf '{"alpha": 0.1, "folds": 3}'

The steps live in training_pipeline.flow, final_model and promotion; `python -m training_pipeline` runs
the same ones without Airflow. The params are generated from training_pipeline.config.TrainingConfig.
The folds and the final fit run in parallel once the training set is saved.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, task
from airflow.timetables.trigger import CronTriggerTimetable

from training_pipeline.config import param_schemas

WEEKLY = "0 3 * * 1"

with DAG(
    dag_id="training",
    # Weekly: the stats drift slowly, and a week adds enough labels to change the model. Mondays 03:00,
    # a quiet hour; unpausing waits for the next one instead of starting the missed one at once, so a run
    # triggered by hand or by monitoring is the only one. No start date, and run_immediately a zero
    # timedelta: Airflow treats run_immediately=False like None, which starts the missed run when the
    # DAG is unpaused within a tenth of the period after it (Mondays until 19:48).
    schedule=CronTriggerTimetable(WEEKLY, timezone="UTC", run_immediately=timedelta(0)),
    catchup=False,
    max_active_runs=1,  # aliases move one run at a time
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    # One Param per option of TrainingConfig marked dag_param: default, type or enum, bounds, description.
    params={name: Param(**schema) for name, schema in param_schemas().items()},
    tags=["training", "mlflow"],
    doc_md=__doc__,
):

    @task
    def start(params=None, dag_run=None, run_id=None, run_after=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from training_pipeline import flow
        from training_pipeline.config import ConfigError

        # --conf keys that are not params (a typo such as "alpah") reach the check and are refused.
        overrides = {**(dag_run.conf or {}), **dict(params)}
        try:
            # The run's own time, not the clock: a retried or re-run task sees the same label window.
            return flow.start(overrides, run_id, source="airflow", now=run_after)
        except ConfigError as error:  # retrying cannot fix a bad configuration
            raise AirflowFailException(str(error)) from error

    @task
    def prepare_training_set(context: dict) -> list[dict]:
        from training_pipeline import flow

        return flow.prepare_training_set(context)

    @task
    def cross_validate_fold(context: dict, fold: dict) -> dict:
        from training_pipeline import flow

        return flow.cross_validate_fold(context, fold)

    @task
    def fit_final_model(context: dict) -> dict:
        from training_pipeline import final_model

        return final_model.fit_final_model(context)

    @task
    def aggregate(context: dict, fold_results: list[dict]) -> dict:
        from training_pipeline import flow

        return flow.aggregate(context, list(fold_results))

    @task
    def register_and_promote(context: dict, summary: dict, final: dict) -> dict:
        from training_pipeline import promotion

        return promotion.register_and_promote(context, summary, final)

    context = start()
    folds = prepare_training_set(context)
    fold_results = cross_validate_fold.partial(context=context).expand(fold=folds)
    final = fit_final_model(context)
    folds >> final
    register_and_promote(context, aggregate(context, fold_results), final)
