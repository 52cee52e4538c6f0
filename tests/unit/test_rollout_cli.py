"""`bash run.sh rollout`'s command line: what it accepts, what it prints, how it fails without services."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from mlops_platform import rollout_cli
from mlops_platform.rollout import Rollout
from tests.conftest import free_port

STARTED = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
CANARY = Rollout("driver_trip_completion", "r-1", "canary", 0.1, "3", "4", STARTED, STARTED)


def parse(*argv: str):
    return rollout_cli.parse(argv)


def test_start_takes_the_mode_and_its_options():
    args = parse("--json", "start", "--mode", "ab", "--share", "0.3", "--version", "7", "--outcomes", "500",
                 "--hours", "2.5", "--reason", "weekly model")
    assert (args.json, args.action, args.mode, args.share, args.version, args.outcomes, args.hours, args.reason) == \
        (True, "start", "ab", 0.3, "7", 500, 2.5, "weekly model")
    defaults = parse("start", "--mode", "canary")
    assert (defaults.share, defaults.version, defaults.outcomes, defaults.hours) == (None, None, None, None)


@pytest.mark.parametrize("argv", [
    ("start",),  # no mode
    ("start", "--mode", "champion"),  # champion is where promote and rollback return, not a rollout
    ("start", "--mode", "canary", "--share", "1.5"),
    ("start", "--mode", "canary", "--share", "nan"),
    ("start", "--mode", "ab", "--outcomes", "0"),
    ("start", "--mode", "ab", "--hours", "0"),
    ("status", "--events", "-1"),
    ("deploy",),
    (),
])
def test_arguments_it_cannot_act_on_exit_2_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_json_and_model_go_before_or_after_the_verb():
    assert (parse("status").json, parse("status").model) == (False, None)
    assert parse("status", "--json").json and parse("--json", "status").json
    assert parse("promote", "--model", "m2").model == "m2" == parse("--model", "m2", "promote").model


def test_promote_and_rollback_have_a_default_reason():
    assert parse("promote").reason == "promoted by hand"
    assert parse("rollback", "--reason", "p99 too high").reason == "p99 too high"


def test_the_actor_names_the_user():
    assert rollout_cli.actor().startswith("cli:") and len(rollout_cli.actor()) > len("cli:")


def status_document(**overrides) -> dict:
    document = {"action": "status", "model_name": "driver_trip_completion", "mode": "canary",
                "rollout": CANARY.as_dict(),
                "last_evaluation": {"decision": "continue", "reason": "challenger has 80 of 200 outcomes",
                                    "variants": {"champion": {"outcomes": 720, "metrics": {
                                        "roc_auc": {"value": 0.712, "low": 0.69, "high": 0.734}}},
                                        "challenger": {"outcomes": 80, "metrics": {
                                            "roc_auc": {"value": 0.70, "low": 0.61, "high": 0.79}}}}},
                "last_evaluated_at": datetime(2026, 11, 30, 14, 5, tzinfo=UTC),
                "aliases": {"champion": "3", "challenger": "4", "previous_champion": None},
                "events": [{"at": STARTED, "action": "start", "actor": "cli:ana", "mode": "canary", "share": 0.1,
                            "champion_version": "3", "challenger_version": "4", "reason": "weekly model"}]}
    return {**document, **overrides}


def test_status_shows_the_rollout_the_last_comparison_the_aliases_and_the_events():
    text = rollout_cli.render(status_document())
    assert "mode canary" in text and "10 % of the answers from the challenger" in text
    assert "champion    version 3" in text and "challenger  version 4" in text
    assert "started     2026-11-30 14:00:00 UTC" in text
    assert "decision continue: challenger has 80 of 200 outcomes" in text
    assert "champion   outcomes 720, roc_auc 0.712 [0.69, 0.734]" in text
    assert "challenger outcomes 80, roc_auc 0.7 [0.61, 0.79]" in text
    assert "@champion v3, @challenger v4, @previous_champion -" in text
    assert "start    cli:ana" in text and "canary 10 %" in text and "v3 vs v4  weekly model" in text


def test_status_reads_the_monitoring_services_comparison():
    interval = {"estimate": 0.1912, "low": 0.18, "high": 0.2}
    evaluation = {"rollout_id": "r-1", "mode": "canary", "share": 0.1, "confidence": 0.95, "paired": False,
                  "variants": {variant: {"variant": variant, "model_version": version, "outcomes": outcomes,
                                         "latency_p99_ms": 7.25, "brier": interval, "auc": None}
                               for variant, version, outcomes in (("champion", "3", 1900), ("challenger", "4", 201))},
                  "brier_difference": {"estimate": 0.031, "low": 0.012, "high": 0.05},
                  "decision": {"action": "rollback", "reason": "the challenger's Brier score is higher"},
                  "evaluated_at": "2026-11-30T14:05:00+00:00"}
    text = rollout_cli.render(status_document(last_evaluation=evaluation))
    assert "decision rollback: the challenger's Brier score is higher" in text
    assert "challenger model_version 4, outcomes 201, latency_p99_ms 7.25, brier 0.1912 [0.18, 0.2], auc -" in text
    assert "brier_difference: 0.031 [0.012, 0.05]" in text and "confidence: 0.95" in text
    assert "rollout_id:" not in text and "evaluated_at" not in text


def test_status_without_a_rollout_says_the_champion_answers_everything():
    text = rollout_cli.render(status_document(mode="champion", rollout=None, last_evaluation=None, events=[]))
    assert "mode champion" in text and "the champion answers every request" in text
    assert "recent events: none" in text and "last evaluation" not in text


def test_status_before_any_comparison_says_so():
    text = rollout_cli.render(status_document(last_evaluation=None, last_evaluated_at=None))
    assert "last evaluation: none yet" in text


def test_promote_and_rollback_say_where_the_champion_is():
    promoted = rollout_cli.render({"action": "promote", "rollout": CANARY.as_dict(), "champion_version": "4",
                                   "previous_champion_version": "3"})
    assert "version 4 is the champion" in promoted and "version 3 keeps @previous_champion" in promoted
    ended = rollout_cli.render({"action": "rollback", "rollout": CANARY.as_dict(), "champion_version": "3"})
    assert "canary rollout of version 4 ended; version 3 stays the champion" in ended
    restored = rollout_cli.render({"action": "rollback", "champion_version": "3", "demoted_version": "4"})
    assert "version 3 is the champion again (version 4 was demoted)" in restored


def test_the_json_document_is_printed_as_json(monkeypatch, capsys, make_settings):
    monkeypatch.setattr(rollout_cli, "get_settings", lambda: make_settings())
    monkeypatch.setattr(rollout_cli, "run", lambda args, settings: status_document())
    assert rollout_cli.main(["--json", "status"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["rollout"]["rollout_id"] == "r-1" and document["aliases"]["challenger"] == "4"


def test_without_mlflow_it_fails_in_one_line_with_exit_1(monkeypatch, capsys, make_settings):
    monkeypatch.setattr(rollout_cli, "get_settings", lambda: make_settings(MLFLOW_PORT=str(free_port())))
    assert rollout_cli.main(["status"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: MLflow tracking server") and "mlflow up" in err[0]


def test_without_postgresql_it_fails_in_one_line_with_exit_1(monkeypatch, capsys, make_settings):
    from mlops_platform import model_registry

    monkeypatch.setattr(rollout_cli, "get_settings", lambda: make_settings(POSTGRES_PORT=str(free_port())))
    monkeypatch.setattr(model_registry, "check_server", lambda uri: None)  # past MLflow, to PostgreSQL
    assert rollout_cli.main(["--json", "status"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"].startswith("PostgreSQL at 127.0.0.1:")
    assert len(captured.err.strip().splitlines()) == 1 and "feast up" in captured.err


def test_a_request_that_cannot_be_done_exits_2(monkeypatch, capsys, make_settings):
    from mlops_platform.rollout import RolloutError

    def refuse(args, settings):
        raise RolloutError("no rollout of 'm' is running: nothing to promote")

    monkeypatch.setattr(rollout_cli, "get_settings", lambda: make_settings())
    monkeypatch.setattr(rollout_cli, "run", refuse)
    assert rollout_cli.main(["promote"]) == 2
    assert capsys.readouterr().err.strip() == "error: no rollout of 'm' is running: nothing to promote"
