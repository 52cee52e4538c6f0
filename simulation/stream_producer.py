"""Replay driver statistics into the `driver_stats` topic at a fixed rate, as a live source would.

    python -m simulation.stream_producer --rate 1000 --duration 30
    python -m simulation.stream_producer --rate 200 --count 5000 --from-file landed.parquet
    python -m simulation.stream_producer --rate 50 --count 500 --invalid-share 0.1 --seed 7

Rows come from a parquet/CSV file of stats (cycled as often as needed) or, without --from-file, from
a small seeded generator. Every message is stamped event_timestamp = produced_at = send time: this is
a live replay, not a backfill. The schedule is open loop: message i is due at start + i/rate whatever
the previous sends cost, so a slow broker shows up as `max_behind_schedule_s`, not as a lower rate
silently. `--invalid-share` plants contract violations (for the demo and the tests), each of a known
kind. A JSON summary is printed at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from data_pipeline.stream_messages import message_key
from data_pipeline.stream_topics import ensure_topics
from feast_repo.features import FEATURE_NAMES, JOIN_KEY
from mlops_platform.messages import format_timestamp
from mlops_platform.settings import Settings, get_settings

FIRST_DRIVER_ID = 1001
STATS_FIELDS = (JOIN_KEY, *FEATURE_NAMES)
INVALID_KINDS = ("unparseable_json", "missing_field", "wrong_type", "out_of_range", "future_timestamp",
                 "bad_timestamp")


@dataclass
class Summary:
    topic: str
    source: str
    sent: int = 0
    valid: int = 0
    invalid_planted: int = 0
    invalid_by_kind: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    target_rate: float = 0.0
    achieved_rate: float = 0.0
    duration_s: float = 0.0
    max_behind_schedule_s: float = 0.0
    flush_s: float = 0.0
    offsets: dict[str, list[int]] = field(default_factory=dict)


def synthetic_rows(drivers: int, first_driver_id: int, seed: int) -> Iterator[dict[str, Any]]:
    """Endless plausible stats: each driver has a base level and drifts a little around it."""
    rng = random.Random(seed)
    base = {first_driver_id + i: (rng.betavariate(8, 3), rng.betavariate(9, 2), rng.randint(3, 30))
            for i in range(drivers)}
    ids = list(base)
    while True:
        driver_id = rng.choice(ids)
        conv, acc, trips = base[driver_id]
        yield {
            "driver_id": driver_id,
            "conv_rate": round(min(1.0, max(0.0, conv + rng.gauss(0, 0.03))), 4),
            "acc_rate": round(min(1.0, max(0.0, acc + rng.gauss(0, 0.03))), 4),
            "avg_daily_trips": max(0, trips + rng.randint(-2, 2)),
        }


def _plain(value: Any) -> Any:
    """numpy scalars to Python values; NaN to None (the consumer then refuses the message, as it should)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def file_rows(path: Path, drivers: int | None) -> Iterator[dict[str, Any]]:
    """The file's rows in order, cycled; with `drivers`, only the first N distinct drivers' rows."""
    import pandas as pd

    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise SystemExit(f"--from-file: expected a .parquet or .csv file, got {path}")
    missing = [name for name in STATS_FIELDS if name not in frame.columns]
    if missing:
        raise SystemExit(f"--from-file {path}: expected columns {', '.join(STATS_FIELDS)}; "
                         f"missing {', '.join(missing)} (found {', '.join(map(str, frame.columns))})")
    if drivers is not None:
        keep = list(dict.fromkeys(frame["driver_id"]))[:drivers]
        frame = frame[frame["driver_id"].isin(keep)]
    if frame.empty:
        raise SystemExit(f"--from-file {path}: expected at least one row, found none")
    rows = [{name: _plain(value) for name, value in zip(STATS_FIELDS, values, strict=True)}
            for values in frame[list(STATS_FIELDS)].itertuples(index=False, name=None)]
    return itertools.cycle(rows)


def valid_message(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        **row,
        "event_timestamp": format_timestamp(now, "microseconds"),
        "created": format_timestamp(now, "microseconds"),
        "produced_at": format_timestamp(now),
    }


def invalid_payload(kind: str, row: dict[str, Any], now: datetime) -> bytes:
    """A message that breaks the contract in one known way."""
    message = valid_message(row, now)
    if kind == "unparseable_json":
        return json.dumps(message).encode()[:-7]
    if kind == "missing_field":
        del message["conv_rate"]
    elif kind == "wrong_type":
        message["avg_daily_trips"] = "seventeen"
    elif kind == "out_of_range":
        message["acc_rate"] = 1.5
    elif kind == "future_timestamp":
        message["event_timestamp"] = format_timestamp(now + timedelta(days=3))
    elif kind == "bad_timestamp":
        message["event_timestamp"] = "yesterday at noon"
    else:
        raise ValueError(f"unknown invalid kind {kind!r}; expected one of {', '.join(INVALID_KINDS)}")
    return json.dumps(message).encode()


def produce(settings: Settings, rows: Iterator[dict[str, Any]], rate: float, count: int, invalid_share: float = 0.0,
            seed: int = 0, topic: str | None = None, source: str = "synthetic") -> Summary:
    """Send `count` messages at `rate` per second on an open-loop schedule; returns what happened."""
    from kafka import KafkaProducer

    topic = topic or settings.driver_stats_topic
    ensure_topics(settings)
    rng = random.Random(seed + 1)
    planted = set(rng.sample(range(count), round(count * invalid_share)))
    summary = Summary(topic=topic, source=source, target_rate=rate)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=5,
                             client_id="driver-stats-replay")
    producer.partitions_for(topic)  # fetch the topic's metadata now, not during the first timed send
    futures = []
    start = last_send = time.perf_counter()
    try:
        for i in range(count):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                summary.max_behind_schedule_s = max(summary.max_behind_schedule_s, -wait)
            row = next(rows)
            now = datetime.now(UTC)
            if i in planted:
                kind = INVALID_KINDS[summary.invalid_planted % len(INVALID_KINDS)]
                payload = invalid_payload(kind, row, now)
                summary.invalid_planted += 1
                summary.invalid_by_kind[kind] = summary.invalid_by_kind.get(kind, 0) + 1
            else:
                payload = json.dumps(valid_message(row, now)).encode()
                summary.valid += 1
            key = message_key(row["driver_id"]) if row.get("driver_id") is not None else None
            futures.append(producer.send(topic, value=payload, key=key))
            last_send = time.perf_counter()
        flush_started = time.perf_counter()
        producer.flush(timeout=60)
        summary.flush_s = round(time.perf_counter() - flush_started, 3)
    finally:
        producer.close(timeout=10)
    for future in futures:
        try:
            metadata = future.get(timeout=10)
        except Exception:  # counted and reported; the summary says how many did not arrive
            summary.errors += 1
            continue
        span = summary.offsets.setdefault(str(metadata.partition), [metadata.offset, metadata.offset])
        span[0], span[1] = min(span[0], metadata.offset), max(span[1], metadata.offset)
    summary.sent = len(futures) - summary.errors
    summary.duration_s = round(last_send - start, 3)
    if futures:  # n messages on schedule span (n - 1) / rate seconds: n / that + 1/rate is the rate itself
        summary.achieved_rate = round(len(futures) / (last_send - start + 1 / rate), 1)
    summary.max_behind_schedule_s = round(summary.max_behind_schedule_s, 3)
    return summary


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value
    return parse


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulation.stream_producer", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=_positive(float), required=True, help="events per second")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--count", type=_positive(int), help="messages to send")
    amount.add_argument("--duration", type=_positive(float), help="seconds to send for (count = rate x duration)")
    parser.add_argument("--drivers", type=_positive(int), default=None,
                        help="drivers to replay (synthetic default 100; with --from-file, the first N of the file)")
    parser.add_argument("--first-driver-id", type=_positive(int), default=FIRST_DRIVER_ID,
                        help="first synthetic driver id (ids are consecutive)")
    parser.add_argument("--from-file", type=Path, help="parquet or CSV of stats rows to replay")
    parser.add_argument("--invalid-share", type=_share, default=0.0, help="share of messages made invalid on purpose")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--topic", help="default: DRIVER_STATS_TOPIC")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    count = args.count if args.count is not None else max(1, round(args.rate * args.duration))
    if args.from_file is not None:
        rows, source = file_rows(args.from_file, args.drivers), str(args.from_file)
    else:
        rows, source = synthetic_rows(args.drivers or 100, args.first_driver_id, args.seed), "synthetic"
    summary = produce(get_settings(), rows, args.rate, count, args.invalid_share, args.seed, args.topic, source)
    print(json.dumps(asdict(summary)), flush=True)
    return 0 if summary.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
