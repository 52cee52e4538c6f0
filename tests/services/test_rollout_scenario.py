"""`bash run.sh scenario --rollout better|worse` end to end on the running platform: the API serves a 10 %
canary, bookings and their outcomes flow through Kafka into the prediction log, and the monitoring service
process (evaluating every 5 s in tests) promotes the better challenger and rolls the worse one back.

The scenario plants models under the platform's own model name, so the champion the platform had is put
back afterwards for the tests that follow.
"""

from __future__ import annotations

import json

import pytest

from mlops_platform import model_registry
from mlops_platform.rollout import CHALLENGER_ALIAS, PREVIOUS_CHAMPION_ALIAS
from tests.conftest import run_sh


@pytest.fixture
def platform_champion(platform_up, settings):
    """The platform's model aliases before the scenario, restored after it (a running rollout is ended)."""
    client = model_registry.client(settings.mlflow_tracking_uri)
    name = settings.model_name

    def aliases() -> dict[str, str]:
        try:
            return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
        except Exception:  # no model registered yet
            return {}

    before = aliases()
    yield client, aliases
    run_sh("rollout", "rollback", "--reason", "test cleanup", check=False)
    for alias in (settings.model_alias, CHALLENGER_ALIAS, PREVIOUS_CHAMPION_ALIAS):
        if alias in before:
            client.set_registered_model_alias(name, alias, before[alias])
        elif alias in aliases():
            client.delete_registered_model_alias(name, alias)


def scenario(kind: str) -> dict:
    result = run_sh("scenario", "--rollout", kind, "--rate", "60", "--timeout", "600", timeout=900, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    said = f"scenario {kind} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0 and lines, said
    return json.loads(lines[-1])


def test_a_worse_challenger_is_rolled_back_and_the_champion_keeps_its_alias(platform_champion, settings):
    _, aliases = platform_champion
    summary = scenario("worse")
    assert (summary["decision"], summary["decided_by"]) == ("rollback", "monitoring-service")
    assert summary["labelled_outcomes"]["challenger"] >= settings.rollout_min_outcomes  # decided on outcomes
    assert aliases()[settings.model_alias] == summary["champion_version"]


def test_a_better_challenger_is_promoted_and_the_weak_champion_kept_for_rollback(platform_champion, settings):
    _, aliases = platform_champion
    summary = scenario("better")
    assert (summary["decision"], summary["decided_by"]) == ("promote", "monitoring-service")
    now = aliases()
    assert now[settings.model_alias] == summary["challenger_version"]
    assert now[PREVIOUS_CHAMPION_ALIAS] == summary["champion_version"]
    assert summary["labelled_outcomes"]["challenger"] >= settings.rollout_min_outcomes
    assert CHALLENGER_ALIAS not in now or now[CHALLENGER_ALIAS] != summary["challenger_version"]
