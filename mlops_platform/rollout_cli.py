"""`bash run.sh rollout ...`: start, inspect, promote and roll back a rollout by hand.

    python -m mlops_platform.rollout_cli [--json] [--model NAME] start --mode canary|shadow|ab [--share S]
        [--version V] [--outcomes N] [--hours H] [--reason TEXT]
    python -m mlops_platform.rollout_cli [--json] status [--events N]
    python -m mlops_platform.rollout_cli [--json] promote|rollback [--reason TEXT]

Every change goes through mlops_platform.rollout_store with the actor "cli:<user>", so it is logged
with the others and shown by `status`. A hand promotion records the monitoring service's latest
comparison as its evidence. Exit codes: 0 done, 2 a request that cannot be done as asked (bad
arguments, no rollout to promote...), 1 a service that does not answer (PostgreSQL, MLflow).
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from mlops_platform.rollout import (
    CHALLENGER_ALIAS,
    PREVIOUS_CHAMPION_ALIAS,
    ROLLOUT_MODES,
    RolloutError,
)
from mlops_platform.settings import Settings, get_settings

EXIT_REFUSED = 2
EXIT_UNAVAILABLE = 1
DEFAULT_EVENTS = 10
MAX_EVENTS = 1000
VERB_HELP = {"promote": "the challenger becomes the champion",
             "rollback": "end the rollout, or give @champion back to @previous_champion"}
DEFAULT_REASONS = {"start": "started by hand", "promote": "promoted by hand", "rollback": "rolled back by hand"}


def actor() -> str:
    """Who acts, as the event log records it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = os.environ.get("USER") or str(os.getuid())
    return f"cli:{user}"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def _bounded(kind: type, low: float, high: float, name: str, low_open: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a {kind.__name__}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if too_low or value > high or (kind is float and not math.isfinite(value)):
            bounds = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{name}: expected a value in {bounds}, got {text}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    # --json and --model go before or after the verb; given after it, they are set only when present.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    common.add_argument("--model", help="registered model (default: MODEL_NAME)")
    cli = argparse.ArgumentParser(prog="bash run.sh rollout", parents=[common],
                                  description="Try a challenger on live traffic, then promote or roll it back.")
    verbs = cli.add_subparsers(dest="action", required=True, metavar="start|status|promote|rollback")

    start = verbs.add_parser("start", parents=[common],
                             help="start a rollout of the challenger, or change the running one's mode and share")
    start.add_argument("--mode", required=True, choices=ROLLOUT_MODES)
    start.add_argument("--share", type=_bounded(float, 0.0, 1.0, "--share"), default=None,
                       help="the challenger's part of the answers (canary 0.1, ab 0.5 by default)")
    start.add_argument("--version", default=None, help=f"challenger version (default: the {CHALLENGER_ALIAS!r} alias)")
    start.add_argument("--outcomes", type=_bounded(int, 1, 10_000_000, "--outcomes"), default=None,
                       help="ab: labelled outcomes per variant the test runs for")
    start.add_argument("--hours", type=_bounded(float, 0.0, 24 * 365, "--hours", low_open=True), default=None,
                       help="ab: hours the test runs for at most")
    start.add_argument("--reason", default=DEFAULT_REASONS["start"])

    status = verbs.add_parser("status", parents=[common],
                              help="mode, versions, the last comparison, aliases and recent events")
    status.add_argument("--events", type=_bounded(int, 0, MAX_EVENTS, "--events"), default=DEFAULT_EVENTS)

    for verb in ("promote", "rollback"):
        sub = verbs.add_parser(verb, parents=[common], help=VERB_HELP[verb])
        sub.add_argument("--reason", default=DEFAULT_REASONS[verb])
    return cli


def parse(argv: Sequence[str]) -> argparse.Namespace:
    args = parser().parse_args(list(argv))
    args.json, args.model = getattr(args, "json", False), getattr(args, "model", None)
    return args


# ---------------------------------------------------------------------------------------------
# Actions: each returns a JSON-able document
# ---------------------------------------------------------------------------------------------
def aliases(mlflow_client, model_name: str, champion_alias: str) -> dict[str, str | None]:
    """The versions under the aliases a rollout moves (None where an alias, or the model, is missing)."""
    from mlflow.exceptions import MlflowException

    try:
        found = dict(mlflow_client.get_registered_model(model_name).aliases or {})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        found = {}
    return {alias: (str(found[alias]) if alias in found else None)
            for alias in (champion_alias, CHALLENGER_ALIAS, PREVIOUS_CHAMPION_ALIAS)}


def do_start(settings: Settings, mlflow_client, model_name: str, args: argparse.Namespace,
             who: str) -> dict[str, Any]:
    from mlops_platform import rollout_store

    rollout = rollout_store.start(settings, mlflow_client, model_name, args.mode, share=args.share,
                                  challenger_version=args.version, max_outcomes=args.outcomes, hours=args.hours,
                                  actor=who, reason=args.reason)
    return {"action": "start", "rollout": rollout.as_dict()}


def do_status(settings: Settings, mlflow_client, model_name: str, args: argparse.Namespace,
              who: str) -> dict[str, Any]:
    from mlops_platform import rollout_store

    rollout_store.ensure_schema(settings)
    rollout = rollout_store.current(settings, model_name)
    evaluation, evaluated_at = rollout_store.last_evaluation(settings, model_name) if rollout else (None, None)
    return {"action": "status", "model_name": model_name, "mode": rollout.mode if rollout else "champion",
            "rollout": rollout.as_dict() if rollout else None,
            "last_evaluation": evaluation, "last_evaluated_at": evaluated_at,
            "aliases": aliases(mlflow_client, model_name, settings.model_alias),
            "events": rollout_store.history(settings, model_name, args.events) if args.events else []}


def do_promote(settings: Settings, mlflow_client, model_name: str, args: argparse.Namespace,
               who: str) -> dict[str, Any]:
    from mlops_platform import rollout_store

    rollout = rollout_store.current(settings, model_name)
    evidence = None
    if rollout is not None:  # the comparison the person saw in `status`, kept with the decision
        evaluation, evaluated_at = rollout_store.last_evaluation(settings, model_name)
        evidence = {"last_evaluation": evaluation, "last_evaluated_at": evaluated_at}
    promoted = rollout_store.promote(settings, mlflow_client, model_name, who, args.reason, evidence,
                                     rollout_id=rollout.rollout_id if rollout else None)
    return {"action": "promote", "rollout": promoted.as_dict(), "champion_version": promoted.challenger_version,
            "previous_champion_version": promoted.champion_version}


def do_rollback(settings: Settings, mlflow_client, model_name: str, args: argparse.Namespace,
                who: str) -> dict[str, Any]:
    from mlops_platform import rollout_store

    return rollout_store.rollback(settings, mlflow_client, model_name, who, args.reason)


ACTIONS = {"start": do_start, "status": do_status, "promote": do_promote, "rollback": do_rollback}


# ---------------------------------------------------------------------------------------------
# Human-readable output
# ---------------------------------------------------------------------------------------------
def _when(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return "-" if value is None else str(value)


def _share(rollout: dict[str, Any]) -> str:
    if rollout["mode"] == "shadow":
        return "shadow (the challenger scores every request, its answers are never returned)"
    return f"{rollout['share'] * 100:g} % of the answers from the challenger"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _metric(value: Any) -> str:
    """A metric as `0.712 [0.69, 0.73]` when it carries an interval, else as it is."""
    if isinstance(value, dict):
        point = next((value[k] for k in ("value", "estimate", "point", "mean") if k in value), None)
        low = next((value[k] for k in ("low", "lower", "ci_low") if k in value), None)
        high = next((value[k] for k in ("high", "upper", "ci_high") if k in value), None)
        if point is not None or low is not None:
            interval = f" [{_number(low)}, {_number(high)}]" if low is not None and high is not None else ""
            return f"{_number(point)}{interval}"
        return json.dumps(value, default=str)
    return "-" if value is None else _number(value)


def evaluation_lines(evaluation: dict[str, Any] | None, evaluated_at: Any) -> list[str]:
    """The monitoring service's latest comparison: its decision first, then each variant's numbers."""
    if not evaluation:
        return ["last evaluation: none yet (the monitoring service compares the variants every "
                "MONITOR_INTERVAL_SECONDS once labelled outcomes arrive)"]
    decision = evaluation.get("decision")
    if isinstance(decision, dict):
        verdict, reason = decision.get("action") or decision.get("decision"), decision.get("reason")
    else:
        verdict, reason = decision, evaluation.get("reason")
    lines = [f"last evaluation ({_when(evaluated_at)}): decision {verdict or '-'}" + (f": {reason}" if reason else "")]
    variants = evaluation.get("variants")
    if isinstance(variants, dict):
        for variant, numbers in variants.items():
            if isinstance(numbers, dict):
                flat = {**{k: v for k, v in numbers.items() if k not in ("metrics", "variant")},
                        **(numbers.get("metrics") or {})}
                lines.append(f"  {variant:<10} " + ", ".join(f"{k} {_metric(v)}" for k, v in flat.items()))
            else:
                lines.append(f"  {variant:<10} {_metric(numbers)}")
    shown = {"decision", "reason", "variants", "rollout_id", "mode", "share", "evaluated_at"}  # said above
    for key, value in evaluation.items():
        if key not in shown:
            lines.append(f"  {key}: {_metric(value)}")
    return lines


def event_line(event: dict[str, Any]) -> str:
    versions = (f"v{event.get('champion_version')} vs v{event.get('challenger_version')}"
                if event.get("challenger_version") else f"champion v{event.get('champion_version')}")
    mode = event.get("mode") or "-"
    if mode in ("canary", "ab") and event.get("share") is not None:
        mode = f"{mode} {event['share'] * 100:g} %"
    return f"  {_when(event.get('at'))}  {event.get('action'):<8} {event.get('actor'):<18} {mode:<12} {versions}  " \
           f"{event.get('reason') or ''}"


def render(document: dict[str, Any]) -> str:
    """The document `--json` prints, as text for a person."""
    action = document["action"]
    if action == "status":
        return render_status(document)
    if action == "start":
        rollout = document["rollout"]
        return (f"rollout {rollout['rollout_id']} of {rollout['model_name']}: {rollout['mode']}, {_share(rollout)}\n"
                f"  champion v{rollout['champion_version']}, challenger v{rollout['challenger_version']}, "
                f"started {_when(rollout['started_at'])}"
                + (f", ends by {_when(rollout['ends_at'])}" if rollout.get("ends_at") else "")
                + (f", or after {rollout['max_outcomes']} labelled outcomes per variant"
                   if rollout.get("max_outcomes") else ""))
    if action == "promote":
        return (f"promoted: version {document['champion_version']} is the champion; version "
                f"{document['previous_champion_version']} keeps @{PREVIOUS_CHAMPION_ALIAS} "
                "(`bash run.sh rollout rollback` gives it back)")
    if action == "rollback":
        if document.get("rollout"):
            rollout = document["rollout"]
            return (f"rolled back: the {rollout['mode']} rollout of version {rollout['challenger_version']} ended; "
                    f"version {document['champion_version']} stays the champion")
        return (f"rolled back: version {document['champion_version']} is the champion again "
                f"(version {document.get('demoted_version') or '-'} was demoted)")
    return json.dumps(document, default=str)


def render_status(document: dict[str, Any]) -> str:
    rollout = document["rollout"]
    lines = [f"model {document['model_name']}: mode {document['mode']}"]
    if rollout:
        lines += [f"  rollout     {rollout['rollout_id']}",
                  f"  traffic     {_share(rollout)}",
                  f"  champion    version {rollout['champion_version']}",
                  f"  challenger  version {rollout['challenger_version']}",
                  f"  started     {_when(rollout['started_at'])} (last change {_when(rollout['updated_at'])})"]
        if rollout.get("ends_at") or rollout.get("max_outcomes"):
            lines.append(f"  ends        {_when(rollout.get('ends_at'))}, or after "
                         f"{rollout.get('max_outcomes') or '-'} labelled outcomes per variant")
        lines += evaluation_lines(document.get("last_evaluation"), document.get("last_evaluated_at"))
    else:
        lines.append("  no rollout running: the champion answers every request")
    lines.append("aliases: " + ", ".join(f"@{alias} {('v' + version) if version else '-'}"
                                        for alias, version in document["aliases"].items()))
    events = document.get("events") or []
    lines.append(f"recent events ({len(events)}):" if events else "recent events: none")
    lines += [event_line(event) for event in events]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def _fail(message: str, code: int, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": message}))
    print(f"error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace, settings: Settings, who: str | None = None) -> dict[str, Any]:
    """Do what `args` asks (as the command line parses it) as `who` (default: cli:<user>)."""
    from mlops_platform import model_registry

    model_registry.check_server(settings.mlflow_tracking_uri)
    mlflow_client = model_registry.polling_client(settings.mlflow_tracking_uri)
    return ACTIONS[args.action](settings, mlflow_client, args.model or settings.model_name, args, who or actor())


def perform(options: dict[str, Any], who: str, settings: Settings | None = None) -> dict[str, Any]:
    """The same actions for callers without a command line (the model_rollout DAG): `options` holds action
    and, as the command line names them, mode, share, version, outcomes, hours, reason and model."""
    action = options.get("action")
    if action not in ("start", "promote", "rollback"):
        raise RolloutError(f"action must be one of start, promote, rollback, got {action!r}")
    version = options.get("version")
    args = argparse.Namespace(action=action, mode=options.get("mode"), share=options.get("share"),
                              version=None if version in (None, "") else str(version),
                              outcomes=options.get("outcomes"), hours=options.get("hours"),
                              reason=options.get("reason") or DEFAULT_REASONS[action], model=options.get("model"))
    return run(args, settings or get_settings(), who)


def main(argv: Sequence[str] | None = None) -> int:
    import psycopg2

    from mlops_platform.logs import configure_logging
    from mlops_platform.model_registry import TrackingUnavailable
    from mlops_platform.postgres import address

    args = parse(sys.argv[1:] if argv is None else argv)
    settings = get_settings()
    configure_logging("rollout-cli", "WARNING")  # the result is printed; the event is in rollout_events
    try:
        document = run(args, settings)
    except RolloutError as exc:
        return _fail(str(exc), EXIT_REFUSED, args.json)
    except TrackingUnavailable as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE, args.json)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(f"PostgreSQL at {address(settings)} does not answer ({first}): start it with "
                     "`bash run.sh feast up`", EXIT_UNAVAILABLE, args.json)
    print(json.dumps(document, default=str) if args.json else render(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
