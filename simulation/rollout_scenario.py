"""A rollout scenario: a challenger of known quality on a 10 % canary, live traffic with outcomes, until the
monitoring service decides.

    bash run.sh scenario --rollout better|worse [--rate 20] [--timeout 900] [--share 0.1] [--drivers 200]
    (python -m simulation.rollout_scenario ... in local mode; run.sh runs it in the container in docker mode)

- `worse`: the challenger is the platform's pipeline fitted on permuted labels (it has learnt nothing),
  against the current champion (a well trained one is registered first when there is none). The monitoring
  service should roll it back.
- `better`: the current champion is remembered, a weak champion (permuted labels) takes the alias, and a
  well trained challenger is tried against it. The monitoring service should promote it.

Then a canary starts at `--share` (rollout_store.start, actor "scenario"), and bookings go through the
running API with outcomes through /feedback (simulation.traffic), on drivers of the scenario's own with
fresh stats, until the rollout ends or `--timeout` passes (the canary is then rolled back, saying so).
It prints the decision, who took it and why, its evidence, the time from the canary's start to the
decision, and the labelled outcomes each variant had by then. The monitoring service evaluates every
MONITOR_INTERVAL_SECONDS and decides once each variant has ROLLOUT_MIN_OUTCOMES outcomes: run the platform
with a short interval (tests use 5 s) for a scenario of a few minutes. Exit 0 when the decision is the
expected one, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from mlops_platform.rollout import CHALLENGER_ALIAS, Rollout, RolloutError
from mlops_platform.settings import Settings, get_settings
from simulation import planted_models
from simulation.drift_scenario import normal_stats, outcome_features, write_driver_stats
from simulation.traffic import MAX_RATE, MAX_REQUESTS, TrafficConfig, _bounded, check_target, run_traffic

ROLLOUT_FIRST_ID = 9_600_000
SOURCE = "rollout-scenario"
EXPECTED = {"better": "promote", "worse": "rollback"}
POLL_SECONDS = 1.0
ACTOR = "scenario"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bash run.sh scenario", description=__doc__.split("\n")[0])
    parser.add_argument("--rollout", required=True, choices=sorted(EXPECTED), help="the challenger's quality")
    parser.add_argument("--rate", default=20.0, type=_bounded(float, 1.0, MAX_RATE, "--rate"), help="bookings/s")
    parser.add_argument("--timeout", default=900.0, type=_bounded(float, 10.0, 24 * 3600.0, "--timeout"),
                        help="seconds to wait for the decision")
    parser.add_argument("--share", default=0.1, type=_bounded(float, 0.01, 0.5, "--share"))
    parser.add_argument("--drivers", default=200, type=_bounded(int, 10, 1000, "--drivers"))
    parser.add_argument("--label-delay", default=0.5, type=_bounded(float, 0.0, 60.0, "--label-delay"))
    parser.add_argument("--seed", default=0, type=int)
    return parser.parse_args(list(argv))


def plant(mlflow_client, settings: Settings, kind: str, seed: int) -> dict:
    """Register the scenario's champion (when it needs one) and challenger; what was there before."""
    from mlops_platform.model_registry import find_champion

    rows = planted_models.labelled_rows(planted_models.TRAINING_ROWS, seed)
    features = planted_models.champion_features(mlflow_client, settings)
    before = find_champion(mlflow_client, settings.model_name, settings.model_alias)
    champion = before.version if before else None
    if kind == "better":  # a weak champion, so that a well trained challenger is better
        champion = planted_models.register(mlflow_client, settings, rows, features, planted_models.PERMUTED, seed,
                                           settings.model_alias)
    elif champion is None:
        champion = planted_models.register(mlflow_client, settings, rows, features, planted_models.GOOD, seed,
                                           settings.model_alias)
    challenger_kind = planted_models.GOOD if kind == "better" else planted_models.PERMUTED
    challenger = planted_models.register(mlflow_client, settings, rows, features, challenger_kind, seed + 7,
                                         CHALLENGER_ALIAS)
    return {"champion_before": before.version if before else None, "champion": champion,
            "challenger": challenger, "challenger_kind": challenger_kind, "features": features}


def wait_until_serving(settings: Settings, target: str, driver_id: int, version: str, timeout: float) -> None:
    """Until the API answers with `version` (it re-reads the champion alias every MODEL_REFRESH_SECONDS)."""
    import time

    import httpx

    headers = {"Authorization": f"Bearer {settings.serving_api_token}"} if settings.serving_auth else {}
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            body = httpx.post(f"{target}/predict", json={"request_id": f"rollout-scenario-probe-{time.time_ns()}",
                                                         "driver_ids": [driver_id]}, headers=headers, timeout=10).json()
            seen = str(body["model"]["version"])
            if seen == version:
                return
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"the API at {target} still serves version {seen} after {timeout:.0f}s, expected {version}: "
                       "is `bash run.sh serving up` running on this platform?")


def find_decision(settings: Settings, rollout: Rollout) -> dict | None:
    """The promote or rollback event that ended `rollout`, once there is one."""
    from mlops_platform import rollout_store

    for event in rollout_store.history(settings, rollout.model_name, limit=20):
        if event["rollout_id"] == rollout.rollout_id and event["action"] in ("promote", "rollback"):
            return event
    return None


async def traffic_until_decided(settings: Settings, rollout: Rollout, config: TrafficConfig, drivers: dict,
                                target: str, timeout: float) -> dict | None:
    """Bookings on schedule while the monitoring service has not decided, for at most `timeout` seconds."""
    token = settings.serving_api_token if settings.serving_auth else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    traffic = asyncio.create_task(run_traffic(config, drivers, target, token))
    decision = None
    try:
        while decision is None and loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            decision = await asyncio.to_thread(find_decision, settings, rollout)
    finally:
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic
    return decision


def labelled_outcomes(settings: Settings, rollout_id: str, until: datetime | None) -> dict[str, int]:
    """variant -> labelled outcomes of the rollout observed by `until` (all of them without it)."""
    from mlops_platform.postgres import connect

    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select variant, count(*) from labeled_predictions where rollout_id = %s "
                    "and (%s::timestamptz is null or observed_at <= %s) group by variant order by variant",
                    (rollout_id, until, until))
        return {variant: count for variant, count in cur.fetchall()}


def report(kind: str, planted: dict, rollout: Rollout, decision: dict | None, outcomes: dict[str, int]) -> dict:
    decided_after = (decision["at"] - rollout.started_at).total_seconds() if decision else None
    return {"scenario": f"rollout-{kind}", "rollout_id": rollout.rollout_id, "mode": rollout.mode,
            "share": rollout.share,
            **{f"{key}_version": planted[key] for key in ("champion_before", "champion", "challenger")},
            "challenger_kind": planted["challenger_kind"], "features": planted["features"],
            "decision": decision["action"] if decision else None, "expected": EXPECTED[kind],
            "decided_by": decision["actor"] if decision else None, "reason": decision["reason"] if decision else None,
            "seconds_to_decision": round(decided_after, 1) if decided_after is not None else None,
            "labelled_outcomes": outcomes, "evidence": decision["evidence"] if decision else None}


def _version(version: str | None) -> str:
    return f"v{version}" if version else "none"


def print_report(summary: dict) -> None:
    if summary["decision"] is None:
        print(f"no decision: {summary['reason']}")
    else:
        print(f"decision: {summary['decision']} by {summary['decided_by']} after {summary['seconds_to_decision']} s "
              f"(expected {summary['expected']}): {summary['reason']}")
    print(f"  champion v{summary['champion_version']} vs challenger v{summary['challenger_version']} "
          f"({summary['challenger_kind']}), {summary['mode']} at {summary['share'] * 100:g} %; "
          f"champion before the scenario: {_version(summary['champion_before_version'])}")
    print("  labelled outcomes by then: " + (", ".join(f"{v} {n}" for v, n in summary["labelled_outcomes"].items())
                                             or "none"))
    print("  evidence: " + json.dumps(summary["evidence"], indent=2, default=str).replace("\n", "\n  "))
    print(json.dumps(summary, default=str))


def run(args: argparse.Namespace, settings: Settings) -> dict:
    from mlops_platform import model_registry, rollout_store

    target = check_target(settings.serving_url, settings)
    model_registry.check_server(settings.mlflow_tracking_uri)
    mlflow_client = model_registry.client(settings.mlflow_tracking_uri)
    running = rollout_store.current(settings, settings.model_name)
    if running is not None:
        raise RolloutError(f"a {running.mode} rollout of version {running.challenger_version} is running: end it "
                           "first (`bash run.sh rollout rollback`)")
    ids = range(ROLLOUT_FIRST_ID, ROLLOUT_FIRST_ID + args.drivers)
    stats = normal_stats(ids, np.random.default_rng(args.seed))
    write_driver_stats(settings, stats, datetime.now(UTC) - timedelta(seconds=1), SOURCE)
    planted = plant(mlflow_client, settings, args.rollout, args.seed)
    print(f"planted: champion v{planted['champion']}, {planted['challenger_kind']} challenger "
          f"v{planted['challenger']}; waiting for the API to serve the champion", flush=True)
    wait_until_serving(settings, target, ROLLOUT_FIRST_ID, planted["champion"], timeout=120)
    rollout = rollout_store.start(settings, mlflow_client, settings.model_name, "canary", share=args.share,
                                  challenger_version=planted["challenger"], actor=ACTOR,
                                  reason=f"rollout scenario: a {planted['challenger_kind']} challenger")
    print(f"canary {rollout.rollout_id} at {args.share * 100:g} %; bookings at {args.rate:g}/s until the monitoring "
          f"service decides (it evaluates every {settings.monitor_interval_seconds:g} s and needs "
          f"{settings.rollout_min_outcomes} labelled outcomes per variant), at most {args.timeout:g} s", flush=True)
    config = TrafficConfig(min(MAX_REQUESTS, int(args.rate * args.timeout) + 1), args.rate,
                           label_delay=args.label_delay, seed=args.seed)
    decision = asyncio.run(traffic_until_decided(settings, rollout, config, outcome_features(stats, False), target,
                                                 args.timeout))
    if decision is None:
        rollout_store.rollback(settings, mlflow_client, settings.model_name, ACTOR,
                               f"rollout scenario: no decision within {args.timeout:g} s",
                               rollout_id=rollout.rollout_id)
    summary = report(args.rollout, planted, rollout, decision,
                     labelled_outcomes(settings, rollout.rollout_id, decision["at"] if decision else None))
    if decision is None:
        summary["reason"] = (f"the monitoring service did not decide within {args.timeout:g} s (is it running, with "
                             "a short MONITOR_INTERVAL_SECONDS?); the scenario rolled the canary back")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = get_settings()
    try:
        summary = run(args, settings)
    except (RolloutError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(summary)
    return 0 if summary["decision"] == summary["expected"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
