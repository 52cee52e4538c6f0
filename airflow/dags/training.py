"""training: labels + point-in-time features -> cross-validated ElasticNet -> registry, champion/challenger.

Weekly, on the 30 days of labels before the run (params override any value):

    airflow dags trigger training --conf '{"alpha": 0.1, "folds": 3}'

The steps live in training_pipeline.flow, final_model and promotion; `python -m training_pipeline` runs
the same ones without Airflow. The params are generated from training_pipeline.config.TrainingConfig.
The folds and the final fit run in parallel once the training set is saved (training_pipeline.dag_factory
builds the graph, as for every project).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.trigger import CronTriggerTimetable

from mlops_platform.projects import DRIVERS
from training_pipeline.config import param_schemas
from training_pipeline.dag_factory import AirflowSDK, Steps, build_training_dag

WEEKLY = "0 3 * * 1"

STEPS = Steps.in_module("training_pipeline.flow", fit_final_model="training_pipeline.final_model",
                        register_and_promote="training_pipeline.promotion")

dag = build_training_dag(
    AirflowSDK(DAG, task, Param, AirflowFailException), DRIVERS, STEPS,
    # One Param per option of TrainingConfig marked dag_param: default, type or enum, bounds, description.
    params=param_schemas(),
    # Weekly: the stats drift slowly, and a week adds enough labels to change the model. Mondays 03:00,
    # a quiet hour; unpausing waits for the next one instead of starting the missed one at once, so a run
    # triggered by hand or by monitoring is the only one. No start date, and run_immediately a zero
    # timedelta: Airflow treats run_immediately=False like None, which starts the missed run when the
    # DAG is unpaused within a tenth of the period after it (Mondays until 19:48).
    schedule=CronTriggerTimetable(WEEKLY, timezone="UTC", run_immediately=timedelta(0)),
    doc_md=__doc__,
)
