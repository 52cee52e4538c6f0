"""A drift scenario to watch the monitoring react: traffic through the running API on drivers of its own.

    bash run.sh scenario --drifted|--normal --requests N --rate R [--drivers 100] [--seed 0]
    (python -m simulation.drift_scenario ... in local mode; run.sh runs it in the container in docker mode)

It writes fresh stats for drivers SCENARIO_FIRST_ID.. into the offline and the online store, then runs
bookings (simulation.traffic) against the configured serving URL with those drivers as candidates.
`--normal` draws stats the way the data generator does and outcomes from the generator's link, so
drift stays low and live error is the model's usual. `--drifted` pushes conv_rate up to 0.9-1.0,
acc_rate down to 0.05-0.2 and avg_daily_trips up to 50-80, far from any training reference, so a
champion drifts whichever of the features it was trained on, and reports outcomes as if every driver
were the worst one (P(completed) about 0.07): the model's scores no longer fit and live RMSE rises.
Bounded like the traffic tool (count, rate, time) and only aimed at the configured serving URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from feast_repo.features import CREATED_FIELD, FEATURE_NAMES, JOIN_KEY, TIMESTAMP_FIELD
from mlops_platform.settings import Settings, get_settings
from simulation.traffic import MAX_RATE, TrafficConfig, _bounded, check_target, run_traffic

SCENARIO_FIRST_ID = 9_500_000
MAX_DRIVERS = 1_000
SOURCE = "monitoring-scenario"
WORST = (0.0, 0.0, 0.0)  # the features whose generator outcome is a failed trip 93% of the time
MAX_SCENARIO_REQUESTS = 10_000


def normal_stats(driver_ids: Sequence[int], rng: np.random.Generator) -> pd.DataFrame:
    """Stats as simulation.generate draws them for one hour: what a model trained on it has seen."""
    quality = rng.normal(0.0, 1.0, len(driver_ids))
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    return pd.DataFrame({
        "driver_id": np.asarray(driver_ids, dtype=np.int64),
        "conv_rate": sigmoid(-0.4 + 0.9 * quality + rng.normal(0, 0.3, len(driver_ids))).round(4),
        "acc_rate": sigmoid(1.0 + 0.6 * quality + rng.normal(0, 0.3, len(driver_ids))).round(4),
        "avg_daily_trips": rng.poisson(np.exp(2.5 + 0.25 * quality)).astype(np.int64),
    })


def drifted_stats(driver_ids: Sequence[int], rng: np.random.Generator) -> pd.DataFrame:
    """The same drivers with every feature far outside the training distribution (trips about 12 there), so a
    champion trained on any subset of the features sees drift."""
    stats = normal_stats(driver_ids, rng)
    stats["conv_rate"] = rng.uniform(0.9, 1.0, len(stats)).round(4)
    stats["acc_rate"] = rng.uniform(0.05, 0.2, len(stats)).round(4)
    stats["avg_daily_trips"] = rng.integers(50, 81, len(stats)).astype(np.int64)
    return stats


def write_driver_stats(settings: Settings, stats: pd.DataFrame, at: datetime, source: str = SOURCE) -> int:
    """Store the stats as the drivers' newest row at `at`, offline and online; returns rows written online."""
    from data_pipeline.materialize import write_rows
    from data_pipeline.offline_store import STATS_COLUMNS, STATS_TABLE, ensure_schema
    from mlops_platform.feature_store import feature_store
    from mlops_platform.postgres import connect

    ensure_schema(settings)
    offline = stats.assign(**{TIMESTAMP_FIELD: at, CREATED_FIELD: at})[list(STATS_COLUMNS)]
    rows = [(*values, source) for values in offline.astype(object).itertuples(index=False, name=None)]
    with connect(settings) as conn, conn.cursor() as cur:
        cur.executemany(f"insert into {STATS_TABLE} ({', '.join(STATS_COLUMNS)}, source) "
                        f"values ({', '.join(['%s'] * (len(STATS_COLUMNS) + 1))})", rows)
    online = stats.assign(event_us=int(at.timestamp() * 1_000_000))[[JOIN_KEY, "event_us", *FEATURE_NAMES]]
    written, _older = write_rows(feature_store(settings), online)
    return written


def outcome_features(stats: pd.DataFrame, drifted: bool) -> dict[int, tuple[float, float, float]]:
    """driver -> the features its outcomes are drawn from: its own stats, or WORST when drifted."""
    return {int(r.driver_id): WORST if drifted else (float(r.conv_rate), float(r.acc_rate), float(r.avg_daily_trips))
            for r in stats.itertuples()}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulation.drift_scenario", description=__doc__.split("\n")[0])
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--drifted", action="store_true", help="shifted features, outcomes that defy the model")
    kind.add_argument("--normal", action="store_true", help="features and outcomes as in training")
    parser.add_argument("--requests", required=True, type=_bounded(int, 1, MAX_SCENARIO_REQUESTS, "--requests"))
    parser.add_argument("--rate", required=True, type=_bounded(float, 0.01, MAX_RATE, "--rate"))
    parser.add_argument("--drivers", default=100, type=_bounded(int, 5, MAX_DRIVERS, "--drivers"))
    parser.add_argument("--label-delay", default=1.0, type=_bounded(float, 0.0, 60.0, "--label-delay"))
    parser.add_argument("--seed", default=0, type=int)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    settings = get_settings()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    target = check_target(settings.serving_url, settings)
    rng = np.random.default_rng(args.seed)
    ids = range(SCENARIO_FIRST_ID, SCENARIO_FIRST_ID + args.drivers)
    stats = drifted_stats(ids, rng) if args.drifted else normal_stats(ids, rng)
    # Just before now, and newer than any earlier scenario's row, so the online store takes it.
    written = write_driver_stats(settings, stats, datetime.now(UTC) - timedelta(seconds=1))
    config = TrafficConfig(args.requests, args.rate, label_delay=args.label_delay, seed=args.seed)
    token = settings.serving_api_token if settings.serving_auth else None
    summary = asyncio.run(run_traffic(config, outcome_features(stats, args.drifted), target, token))
    print(json.dumps({"scenario": "drifted" if args.drifted else "normal", "drivers": args.drivers,
                      "online_rows_written": written, **summary}))
    return 0 if summary["responses"]["2xx"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
