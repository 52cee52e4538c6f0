"""model_rollout: start, promote or roll back a rollout of the challenger, from Airflow.

Triggered by hand only (no schedule), with the same actions as `bash run.sh rollout`:

    airflow dags trigger model_rollout --conf '{"action": "start", "mode": "canary", "share": 0.1}'
    airflow dags trigger model_rollout --conf '{"action": "promote", "reason": "weekly review"}'

Each change is logged in rollout_events with the actor "airflow" and shown by `bash run.sh rollout status`.
The step lives in mlops_platform.rollout_cli.perform; the monitoring service decides running canaries
on its own, so this DAG is for people who work from the Airflow UI.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

ACTIONS = ["start", "promote", "rollback"]
MODES = ["canary", "shadow", "ab"]

with DAG(
    dag_id="model_rollout",
    schedule=None,  # a decision someone takes, never a timetable's
    catchup=False,
    max_active_runs=1,  # one change of the aliases at a time
    params={
        "action": Param("start", enum=ACTIONS, description="start (or change) a rollout, promote or roll back"),
        "mode": Param("canary", enum=MODES, description="start: canary, shadow or ab"),
        "share": Param(None, type=["null", "number"], exclusiveMinimum=0, exclusiveMaximum=1,
                       description="start: the challenger's part of the answers (canary 0.1, ab 0.5 by default)"),
        "version": Param(None, type=["null", "string"], maxLength=20,
                         description="start: the challenger's version (default: the `challenger` alias)"),
        "outcomes": Param(None, type=["null", "integer"], minimum=1, maximum=10_000_000,
                          description="start, ab: labelled outcomes per variant the test runs for"),
        "hours": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=24 * 365,
                       description="start, ab: hours the test runs for at most"),
        "reason": Param("", type="string", maxLength=500, description="why, for the event log"),
    },
    tags=["serving", "mlflow", "rollout"],
    doc_md=__doc__,
):

    @task(retries=0)  # a refused or half-seen change is for a person to look at, not to repeat
    def apply_rollout(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from mlops_platform.rollout import RolloutError
        from mlops_platform.rollout_cli import perform

        try:
            return perform(dict(params), who="airflow")
        except RolloutError as error:  # retrying cannot make the request possible
            raise AirflowFailException(str(error)) from error

    apply_rollout()
