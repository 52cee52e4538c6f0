"""batch_serving: every driver active at the end of the day, scored by the champion model.

One run per data interval (a day), for the moment the interval ends: point-in-time features from
Feast's offline store, the `champion` version of MODEL_NAME, rows in `batch_predictions` and a parquet
export under <PLATFORM_HOME>/batch_predictions/<run id>.parquet. While a rollout runs, the challenger
scores every driver too (a row per driver and variant). Re-running a run replaces its rows,
so retries, clears and backfills are safe. The steps live in model_serving.batch;
`python -m model_serving.batch --at <ISO>` runs the same ones without Airflow.

Every other project of mlops_platform.projects gets a task of its own, `score_<project>`, beside the drivers':
its latest row per key from its offline table, scored by its champion, into `model_batch_predictions`
(model_serving.project_batch). A project with no champion yet, or no offline table, is skipped, not failed:
the drivers' batch and the other projects do not wait for it.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task
from airflow.timetables.interval import CronDataIntervalTimetable

with DAG(
    dag_id="batch_serving",
    # Data intervals, not bare trigger times: a run scores as of its interval's end, whenever it runs.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),  # catchup is off: no backfill from here
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["serving", "mlflow", "feast"],
    doc_md=__doc__,
):

    @task
    def score_active_drivers(data_interval_end=None, run_id=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from mlops_platform.model_registry import NoChampion
        from model_serving.batch import run_batch

        # A run triggered without a logical date (the UI's and the REST API's default) has no data
        # interval: it scores as of the moment it was triggered, the same moment on every retry.
        at = data_interval_end or dag_run.run_after
        try:
            return run_batch(at, run_id).as_dict()
        except NoChampion as error:  # retrying cannot create a champion
            raise AirflowFailException(str(error)) from error

    score_active_drivers()

    from mlops_platform.projects import PROJECTS
    from mlops_platform.settings import get_settings

    for _project in PROJECTS.values():
        if _project.model_name == get_settings().model_name:
            continue

        @task(task_id=f"score_{_project.name}")
        def score_project(project_name: str, data_interval_end=None, run_id=None, dag_run=None) -> dict:
            from airflow.sdk.exceptions import AirflowSkipException

            from mlops_platform.model_registry import NoChampion
            from mlops_platform.projects import project
            from mlops_platform.settings import get_settings
            from model_serving.project_batch import NoOfflineTable
            from model_serving.project_batch import score_project as score

            at = data_interval_end or dag_run.run_after
            try:
                return score(project(project_name), at, run_id, get_settings()).as_dict()
            except (NoChampion, NoOfflineTable) as error:  # nothing to score (with) until the project has both
                raise AirflowSkipException(str(error)) from error

        score_project(_project.name)
