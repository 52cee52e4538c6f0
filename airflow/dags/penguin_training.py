"""penguin_training: penguins with a species + point-in-time features -> Keras MLP, K stratified folds
(mapped) -> registry, @challenger and @champion.

Triggered, not scheduled: penguins are landed in batches, and a run after an ingestion (or from
monitoring) is the only one needed. Params override any value:

    airflow dags trigger penguin_training --conf '{"epochs": 100, "folds": 3}'

The steps live in training_pipeline.penguin_flow and penguin_promotion; `python -m training_pipeline.penguins`
runs the same ones without Airflow. The params are generated from training_pipeline.penguin_config.PenguinConfig.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException

from mlops_platform.projects import PENGUINS
from training_pipeline.dag_factory import AirflowSDK, Steps, build_training_dag
from training_pipeline.penguin_config import param_schemas

STEPS = Steps.in_module("training_pipeline.penguin_flow", register_and_promote="training_pipeline.penguin_promotion")

dag = build_training_dag(AirflowSDK(DAG, task, Param, AirflowFailException), PENGUINS, STEPS, params=param_schemas(),
                         schedule=None, doc_md=__doc__, tags=("keras",))
