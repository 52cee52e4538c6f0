"""`bash run.sh rollout ...` against the real PostgreSQL and MLflow: start, status, promote, rollback, and the
registry aliases each leaves behind. The model has a name of its own (MODEL_NAME for every command)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from mlops_platform import model_registry, rollout_store
from mlops_platform.postgres import connect
from mlops_platform.settings import get_settings
from tests.conftest import airflow_dags_test, run_sh
from training_pipeline import tracking


@pytest.fixture(scope="module")
def model(feast_up, mlflow_up, settings):
    """Three versions of a model of its own: v1 @champion, v2 @challenger, v3 unaliased."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge

    name = f"rollout-cli-test-{uuid.uuid4().hex[:8]}"
    client = model_registry.client(settings.mlflow_tracking_uri)
    rng = np.random.default_rng(1)
    x = pd.DataFrame({"conv_rate": rng.random(50), "acc_rate": rng.random(50),
                      "avg_daily_trips": rng.integers(0, 60, 50).astype(np.float64)})
    versions = []
    for alpha in (0.1, 0.2, 0.3):
        ridge = Ridge(alpha=alpha).fit(x, x["conv_rate"] + rng.normal(0, 0.1, 50))
        with mlflow.start_run(experiment_id=tracking.experiment_id(client, "rollout-cli-test")):
            info = mlflow.sklearn.log_model(ridge, name="model", registered_model_name=name,
                                            signature=infer_signature(x, ridge.predict(x)))
        versions.append(str(info.registered_model_version))
    client.set_registered_model_alias(name, "champion", versions[0])
    client.set_registered_model_alias(name, "challenger", versions[1])
    yield {"name": name, "versions": versions, "client": client}
    client.delete_registered_model(name)
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"delete from {rollout_store.EVENTS_TABLE} where model_name = %s", (name,))
        cur.execute(f"delete from {rollout_store.ROLLOUTS_TABLE} where model_name = %s", (name,))


def rollout(model, *args: str, check: bool = True):
    return run_sh("rollout", *args, env={"MODEL_NAME": model["name"]}, check=check)


def status(model) -> dict:
    """`status --json` as the command computes it, in this process: each run.sh call costs a Python start-up,
    and the tests below check the command line's own output where it matters (first status, every action)."""
    from mlops_platform import rollout_cli

    args = rollout_cli.parse(["--json", "--model", model["name"], "status"])
    return json.loads(json.dumps(rollout_cli.run(args, get_settings()), default=str))


def status_through_run_sh(model) -> dict:
    return json.loads(rollout(model, "status", "--json").stdout)


def aliases(model) -> dict:
    return model_registry_aliases(model["client"], model["name"])


def model_registry_aliases(client, name: str) -> dict:
    found = client.get_registered_model(name).aliases or {}
    return {alias: str(version) for alias, version in found.items()}


def test_start_status_promote_and_rollback_through_run_sh(model, settings):
    v1, v2, _ = model["versions"]
    before = status_through_run_sh(model)
    assert before["mode"] == "champion" and before["rollout"] is None
    assert before["aliases"] == {"champion": v1, "challenger": v2, "previous_champion": None}

    started = rollout(model, "start", "--mode", "canary", "--share", "0.2", "--reason", "service test")
    assert f"champion v{v1}, challenger v{v2}" in started.stdout and "20 % of the answers" in started.stdout
    running = status(model)
    assert running["mode"] == "canary" and running["rollout"]["share"] == 0.2
    assert (running["rollout"]["champion_version"], running["rollout"]["challenger_version"]) == (v1, v2)
    assert running["events"][0]["action"] == "start" and running["events"][0]["actor"].startswith("cli:")
    assert running["events"][0]["reason"] == "service test"
    text = rollout(model, "status").stdout
    assert "mode canary" in text and "last evaluation: none yet" in text and f"@champion v{v1}" in text

    # The monitoring service keeps its comparison on the row; a hand promotion takes it as evidence.
    current = rollout_store.current(settings, model["name"])
    rollout_store.record_evaluation(settings, current, {"decision": "continue", "reason": "too few outcomes",
                                                        "variants": {"challenger": {"outcomes": 12}}})
    assert "decision continue: too few outcomes" in rollout(model, "status").stdout
    promoted = rollout(model, "promote", "--reason", "looks good")
    assert f"version {v2} is the champion" in promoted.stdout
    assert aliases(model) == {"champion": v2, "previous_champion": v1}
    event = status(model)["events"][0]
    assert (event["action"], event["reason"]) == ("promote", "looks good")
    assert event["evidence"]["last_evaluation"]["reason"] == "too few outcomes"

    restored = rollout(model, "rollback")  # none running: @previous_champion takes @champion back
    assert f"version {v1} is the champion again" in restored.stdout
    assert aliases(model) == {"champion": v1}
    assert status(model)["mode"] == "champion"


def test_a_rollback_during_a_rollout_ends_it_and_keeps_the_champion(model):
    v1, _, v3 = model["versions"]
    rollout(model, "start", "--mode", "shadow", "--version", v3)
    assert status(model)["rollout"]["challenger_version"] == v3
    ended = rollout(model, "rollback", "--reason", "p99 too high")
    assert f"version {v1} stays the champion" in ended.stdout
    after = status(model)
    assert after["mode"] == "champion" and after["aliases"]["champion"] == v1
    assert (after["events"][0]["action"], after["events"][0]["reason"]) == ("rollback", "p99 too high")


def test_requests_that_cannot_be_done_exit_2_with_one_line(model):
    _, v2, v3 = model["versions"]
    rollout(model, "start", "--mode", "canary", "--version", v2)
    try:
        other = rollout(model, "start", "--mode", "ab", "--version", v3, check=False)
        assert other.returncode == 2 and other.stderr.strip().splitlines()[-1].startswith("error: a canary rollout")
    finally:
        rollout(model, "rollback")
    nothing = rollout(model, "promote", check=False)
    assert nothing.returncode == 2 and "nothing to promote" in nothing.stderr
    missing = rollout(model, "start", "--mode", "canary", "--version", "999", check=False)
    assert missing.returncode == 2 and "has no version '999'" in missing.stderr


def test_the_model_rollout_dag_starts_and_rolls_back_as_airflow(model, settings, airflow_up):
    v1, _, v3 = model["versions"]
    env = {"MODEL_NAME": model["name"]}
    airflow_dags_test(settings, "model_rollout", conf={"action": "start", "mode": "ab", "share": 0.3, "version": v3,
                                                       "outcomes": 400, "reason": "from the UI"}, env=env)
    running = status(model)
    assert (running["mode"], running["rollout"]["share"], running["rollout"]["max_outcomes"]) == ("ab", 0.3, 400)
    assert (running["events"][0]["actor"], running["events"][0]["reason"]) == ("airflow", "from the UI")
    airflow_dags_test(settings, "model_rollout", conf={"action": "rollback"}, env=env)
    after = status(model)
    assert after["mode"] == "champion" and after["aliases"]["champion"] == v1
    assert (after["events"][0]["action"], after["events"][0]["actor"]) == ("rollback", "airflow")
