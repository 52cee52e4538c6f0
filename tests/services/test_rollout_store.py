"""The rollout state on the real PostgreSQL, and the registry aliases each transition moves (temporary MLflow).

Each test uses a model name of its own, so the platform's own model and rollout are never touched.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from mlops_platform import rollout_store
from mlops_platform.postgres import connect
from mlops_platform.rollout import CANARY, SHADOW, RolloutError
from tests.conftest import register_version


@pytest.fixture
def model(feast_up, settings, temporary_mlflow):
    """A model of this test's own: version 1 is champion, version 2 challenger. Its rows are removed after."""
    name = f"rollout-test-{uuid.uuid4().hex[:12]}"
    register_version(temporary_mlflow, name, alias=settings.model_alias)
    register_version(temporary_mlflow, name, alias="challenger")
    rollout_store.ensure_schema(settings)
    yield name
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"delete from {rollout_store.ROLLOUTS_TABLE} where model_name = %s", (name,))
        cur.execute(f"delete from {rollout_store.EVENTS_TABLE} where model_name = %s", (name,))


def aliases(client, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def actions(settings, name: str) -> list[str]:
    return [event["action"] for event in reversed(rollout_store.history(settings, name))]


def test_a_started_canary_is_the_state_every_reader_sees(model, settings, temporary_mlflow):
    started = rollout_store.start(settings, temporary_mlflow, model, CANARY, actor="test")
    seen = rollout_store.current(settings, model)
    assert seen == started
    assert (seen.mode, seen.share, seen.champion_version, seen.challenger_version) == (CANARY, 0.1, "1", "2")
    assert actions(settings, model) == ["start"]


def test_changing_the_mode_keeps_the_rollout_and_its_assignment(model, settings, temporary_mlflow):
    first = rollout_store.start(settings, temporary_mlflow, model, SHADOW, actor="test")
    second = rollout_store.start(settings, temporary_mlflow, model, CANARY, share=0.2, actor="test")
    assert (second.rollout_id, second.started_at) == (first.rollout_id, first.started_at)
    assert rollout_store.current(settings, model).mode == CANARY
    assert actions(settings, model) == ["start", "change"]


def test_another_challenger_waits_for_the_running_rollout_to_end(model, settings, temporary_mlflow):
    rollout_store.start(settings, temporary_mlflow, model, CANARY, actor="test")
    third = register_version(temporary_mlflow, model)
    with pytest.raises(RolloutError, match="is running: promote it or roll it back first"):
        rollout_store.start(settings, temporary_mlflow, model, CANARY, challenger_version=third, actor="test")
    assert rollout_store.current(settings, model).challenger_version == "2"


def test_a_rollout_needs_a_champion_and_another_existing_version(model, settings, temporary_mlflow):
    with pytest.raises(RolloutError, match="already the champion"):
        rollout_store.start(settings, temporary_mlflow, model, CANARY, challenger_version="1", actor="test")
    with pytest.raises(RolloutError, match="has no version '9'"):
        rollout_store.start(settings, temporary_mlflow, model, CANARY, challenger_version="9", actor="test")
    with pytest.raises(RolloutError, match="has no 'champion' version"):
        rollout_store.start(settings, temporary_mlflow, f"{model}-none", CANARY, actor="test")
    assert rollout_store.current(settings, model) is None


def test_promotion_moves_the_aliases_and_records_its_evidence(model, settings, temporary_mlflow):
    rollout_store.start(settings, temporary_mlflow, model, CANARY, actor="test")
    rollout_store.promote(settings, temporary_mlflow, model, actor="test", reason="better", evidence={"n": 300})
    assert aliases(temporary_mlflow, model) == {settings.model_alias: "2", "previous_champion": "1"}
    assert rollout_store.current(settings, model) is None
    last = rollout_store.history(settings, model)[0]
    assert (last["action"], last["reason"], last["evidence"]) == ("promote", "better", {"n": 300})
    assert temporary_mlflow.get_model_version(model, "2").tags[rollout_store.DECISION_TAG] == "promoted"


def test_a_manual_rollback_after_a_promotion_restores_the_previous_champion(model, settings, temporary_mlflow):
    rollout_store.start(settings, temporary_mlflow, model, CANARY, actor="test")
    rollout_store.promote(settings, temporary_mlflow, model, actor="test", reason="better")
    undone = rollout_store.rollback(settings, temporary_mlflow, model, actor="test", reason="complaints")
    assert (undone["champion_version"], undone["demoted_version"]) == ("1", "2")
    assert aliases(temporary_mlflow, model) == {settings.model_alias: "1"}
    with pytest.raises(RolloutError, match="nothing to roll back"):
        rollout_store.rollback(settings, temporary_mlflow, model, actor="test", reason="again")
    assert actions(settings, model) == ["start", "promote", "rollback"]


def test_rolling_back_a_running_rollout_keeps_the_champion(model, settings, temporary_mlflow):
    rollout_store.start(settings, temporary_mlflow, model, CANARY, actor="test")
    rollout_store.rollback(settings, temporary_mlflow, model, actor="test", reason="worse", evidence={"d": 0.1})
    assert aliases(temporary_mlflow, model)[settings.model_alias] == "1"
    assert rollout_store.current(settings, model) is None
    assert temporary_mlflow.get_model_version(model, "2").tags[rollout_store.DECISION_TAG] == "rolled_back"


def test_a_decision_on_a_rollout_that_already_ended_is_refused(model, settings, temporary_mlflow):
    running = rollout_store.start(settings, temporary_mlflow, model, CANARY, actor="test")
    rollout_store.rollback(settings, temporary_mlflow, model, actor="test", reason="by hand")
    with pytest.raises(RolloutError, match="no rollout of"):
        rollout_store.promote(settings, temporary_mlflow, model, actor="monitor", reason="late",
                              rollout_id=running.rollout_id)
    assert aliases(temporary_mlflow, model)[settings.model_alias] == "1"


def test_two_deciders_at_once_act_once(model, settings, temporary_mlflow):
    running = rollout_store.start(settings, temporary_mlflow, model, CANARY, actor="test")
    outcomes: list[str] = []

    def decide(action) -> None:
        try:
            action(settings, temporary_mlflow, model, actor="test", reason="race", rollout_id=running.rollout_id)
            outcomes.append("done")
        except RolloutError:
            outcomes.append("refused")

    threads = [threading.Thread(target=decide, args=(action,))
               for action in (rollout_store.promote, rollout_store.rollback)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["done", "refused"]
    decided = actions(settings, model)
    assert decided[0] == "start" and decided[1] in ("promote", "rollback") and len(decided) == 2
    assert aliases(temporary_mlflow, model)[settings.model_alias] == ("2" if decided[1] == "promote" else "1")
