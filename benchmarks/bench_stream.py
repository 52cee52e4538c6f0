"""Streaming: sustained events/s and freshness (produced -> visible in Redis) of the stream consumer.

Runs against the platform's broker, stores and running stream consumer (`bash run.sh kafka up`):

    .venv/bin/python -m benchmarks.bench_stream                       # 1,000 events/s for 30 s, then max rate
    .venv/bin/python -m benchmarks.bench_stream --rate 1000 --duration 30 --steps 2000 4000 8000

Freshness is measured twice. The consumer's own histogram (driver_stats_consumer_freshness_seconds)
times produced_at -> online push returned. An independent probe reads Redis through Feast for a sample
of drivers in a tight loop: each message carries a per-driver sequence number in avg_daily_trips, so the
first read showing version >= k dates version k's visibility. Both see the same clock (one machine).

The maximum sustained rate is found by open-loop steps of increasing rate: a step is sustained when the
producer held the rate and the consumer's lag was back to zero within DRAIN_LIMIT_SECONDS of the last send.
The producer runs on the same machine, so on few cores it competes with the consumer; the drain figure,
a backlog drained by the consumer alone, is the consumer's own ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import machine, print_table
from data_pipeline.stream_consumer import GROUP_ID
from feast_repo.features import FEATURE_SERVICE
from mlops_platform.feature_store import feature_store
from mlops_platform.health import CHECKS
from mlops_platform.settings import Settings, get_settings
from simulation.stream_producer import Summary, produce

FRESHNESS = "driver_stats_consumer_freshness_seconds"
CONSUMED = "driver_stats_consumer_messages_consumed_total"
DRAIN_LIMIT_SECONDS = 2.0
FRESHNESS_GOAL_SECONDS = 1.0
PROBE_DRIVERS = 50


# ---- the consumer's metrics -------------------------------------------------------------------
def consumer_metric_urls(settings: Settings) -> list[str]:
    """The /metrics URL of every running consumer of the group (`kafka up --consumers N`; local mode)."""
    from mlops_platform import instances
    from mlops_platform.local import main_pid
    from mlops_platform.services import BY_NAME

    members = instances.every(BY_NAME["stream-consumer"], settings)
    return [member.url(settings) for member in members if main_pid(settings, member.name)]


def scrape(settings: Settings) -> dict[str, Any]:
    """Cumulative freshness buckets and the consumed counter, summed over the group's consumers."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    consumed = 0.0
    for url in consumer_metric_urls(settings):
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == FRESHNESS + "_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name == CONSUMED:
                    consumed += sample.value
    return {"buckets": buckets, "consumed": consumed}


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over the increase between two scrapes (linear within a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = bound, cumulative
    return lower


class GroupLag:
    """Records the consumer group has not committed yet, over all partitions of the stats topic."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        self.admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        self.client = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
        self.partitions = [TopicPartition(settings.driver_stats_topic, p)
                           for p in self.client.partitions_for_topic(settings.driver_stats_topic)]

    def __call__(self) -> int:
        committed = self.admin.list_group_offsets({GROUP_ID: None})[GROUP_ID]
        ends = self.client.end_offsets(self.partitions)
        return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in self.partitions)

    def wait_for_zero(self, limit: float) -> float | None:
        """Seconds until the lag is zero, or None if it is not within `limit`."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if self() == 0:
                return time.monotonic() - started
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self.admin.close()
        self.client.close()


# ---- the load and the probe -------------------------------------------------------------------
@dataclass
class Versions:
    """Per driver: the send time of each version (avg_daily_trips = version number)."""

    sent_at: dict[int, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def versioned_rows(driver_ids: list[int], seed: int, versions: Versions) -> Iterator[dict[str, Any]]:
    """Random drivers; each message's avg_daily_trips is that driver's next version number."""
    rng = random.Random(seed)
    counters = dict.fromkeys(driver_ids, 0)
    while True:
        driver_id = rng.choice(driver_ids)
        counters[driver_id] += 1
        with versions.lock:
            versions.sent_at.setdefault(driver_id, []).append(time.time())
        yield {"driver_id": driver_id, "conv_rate": round(rng.random(), 4), "acc_rate": round(rng.random(), 4),
               "avg_daily_trips": counters[driver_id]}


class Probe(threading.Thread):
    """Reads the sample drivers' online values through Feast until stopped; dates each version's visibility."""

    def __init__(self, settings: Settings, driver_ids: list[int], versions: Versions) -> None:
        super().__init__(daemon=True)
        self.store = feature_store(settings)
        self.service = self.store.get_feature_service(FEATURE_SERVICE)
        self.driver_ids, self.versions = driver_ids, versions
        self.seen = dict.fromkeys(driver_ids, 0)
        self.freshness: list[float] = []
        self.reads = 0
        self.stop = threading.Event()

    def run(self) -> None:
        rows = [{"driver_id": d} for d in self.driver_ids]
        while not self.stop.is_set():
            values = self.store.get_online_features(features=self.service, entity_rows=rows).to_dict()
            now = time.time()
            self.reads += 1
            for driver_id, version in zip(values["driver_id"], values["avg_daily_trips"], strict=True):
                if version is None or version <= self.seen[driver_id]:
                    continue
                with self.versions.lock:
                    sent = self.versions.sent_at.get(driver_id, [])[self.seen[driver_id]:version]
                self.freshness.extend(now - t for t in sent)
                self.seen[driver_id] = version


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] if len(values) > 1 else values[0]


@dataclass
class Step:
    rate: float
    summary: Summary
    consumed_per_s: float
    drain_s: float | None
    consumer_p50: float
    consumer_p99: float
    probe: list[float]

    @property
    def sustained(self) -> bool:
        return self.summary.achieved_rate >= 0.95 * self.rate and self.drain_s is not None

    @property
    def within_goal(self) -> bool:
        return self.sustained and self.consumer_p99 < FRESHNESS_GOAL_SECONDS


def run_step(settings: Settings, rate: float, duration: float, drivers: int, seed: int, probe: bool) -> Step:
    first = random.SystemRandom().randrange(10**13, 10**14)
    driver_ids = list(range(first, first + drivers))
    versions = Versions()
    sampler = Probe(settings, random.Random(seed).sample(driver_ids, PROBE_DRIVERS), versions) if probe else None
    lag = GroupLag(settings)
    if lag.wait_for_zero(60) is None:
        raise SystemExit("the stream consumer still has a backlog after 60 s: is it running and healthy?")
    if sampler:
        sampler.start()
    before = scrape(settings)
    started = time.monotonic()
    summary = produce(settings, versioned_rows(driver_ids, seed, versions), rate, max(1, round(rate * duration)),
                      seed=seed, source="benchmark")
    during = scrape(settings)
    elapsed = time.monotonic() - started
    drain = lag.wait_for_zero(DRAIN_LIMIT_SECONDS + 60)
    lag.close()
    if sampler:
        time.sleep(0.2)  # let the probe see the last versions
        sampler.stop.set()
        sampler.join(timeout=10)
    after = scrape(settings)
    return Step(
        rate=rate, summary=summary,
        consumed_per_s=(during["consumed"] - before["consumed"]) / elapsed,
        drain_s=drain if drain is not None and drain <= DRAIN_LIMIT_SECONDS else None,
        consumer_p50=histogram_quantile(0.5, before["buckets"], after["buckets"]),
        consumer_p99=histogram_quantile(0.99, before["buckets"], after["buckets"]),
        probe=sampler.freshness if sampler else [],
    )


def drain_rate(settings: Settings, count: int, drivers: int) -> tuple[float, int]:
    """Consumer throughput on its own: a backlog sent as fast as possible, then timed until consumed."""
    first = random.SystemRandom().randrange(10**13, 10**14)
    lag = GroupLag(settings)
    rows = versioned_rows(list(range(first, first + drivers)), 3, Versions())
    produce(settings, rows, 1e9, count, source="benchmark")
    backlog, before, started = lag(), scrape(settings), time.monotonic()
    lag.wait_for_zero(300)
    elapsed = time.monotonic() - started
    lag.close()
    return (scrape(settings)["consumed"] - before["consumed"]) / elapsed, backlog


def ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:.0f} ms"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s of the sustained run")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of the sustained run")
    parser.add_argument("--drivers", type=int, default=1000)
    parser.add_argument("--steps", type=float, nargs="*", default=[2000, 3000, 4000, 6000, 8000, 12000],
                        help="rates tried for the maximum, in order; stops at the first not sustained")
    parser.add_argument("--step-duration", type=float, default=15.0)
    parser.add_argument("--backlog", type=int, default=40_000, help="messages of the drain measurement")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return parser.parse_args()


@dataclass
class Results:
    """The sustained run, the steps tried above it, and the drain of a backlog by the consumer alone."""

    main_step: Step
    best: Step | None  # the fastest step sustained (the sustained run when no step above it was)
    best_in_goal: Step | None  # the fastest one that also kept freshness p99 under the goal
    tried: list[Step]
    drained_per_s: float
    backlog: int
    load: str


def climb(settings: Settings, args: argparse.Namespace, main_step: Step) -> tuple[Step | None, Step | None, list[Step]]:
    """Steps of growing rate until one is not sustained: (best sustained, best within goal, every step tried)."""
    best = main_step if main_step.sustained else None
    best_in_goal = main_step if main_step.within_goal else None
    tried = []
    for rate in args.steps:
        step = run_step(settings, rate, args.step_duration, args.drivers, seed=2, probe=False)
        tried.append(step)
        print(f"step {rate:.0f}/s: produced {step.summary.achieved_rate:.0f}/s, consumed {step.consumed_per_s:.0f}/s, "
              f"drain {step.drain_s}, p99 {ms(step.consumer_p99)}", flush=True)
        if not step.sustained:
            break
        best = step
        best_in_goal = step if step.within_goal else best_in_goal
    return best, best_in_goal, tried


def table_rows(args: argparse.Namespace, results: Results) -> list[tuple[str, str, str, str]]:
    main_step, best, best_in_goal, tried = results.main_step, results.best, results.best_in_goal, results.tried
    cores = str(os.cpu_count())
    target = f"{args.rate:,.0f}/s"
    rows = [
        ("sustained rate (produced)", target, f"{main_step.summary.achieved_rate:,.0f}/s", cores),
        ("sustained rate (consumed)", target, f"{main_step.consumed_per_s:,.0f}/s", cores),
        ("drained after last send", f"<= {DRAIN_LIMIT_SECONDS:.0f} s",
         "no" if main_step.drain_s is None else f"{main_step.drain_s:.2f} s", cores),
        ("freshness p50, consumer histogram", "-", ms(main_step.consumer_p50), cores),
        ("freshness p99, consumer histogram", "< 1000 ms", ms(main_step.consumer_p99), cores),
        (f"freshness p50, probe ({len(main_step.probe)} versions)", "-", ms(percentile(main_step.probe, 0.5)), cores),
        ("freshness p99, probe", "< 1000 ms", ms(percentile(main_step.probe, 0.99)), cores),
        ("max sustained rate (producer on the same machine)", "-",
         f"{best.rate:,.0f}/s" if best else "below the sustained run", cores),
        ("max sustained rate with freshness p99 < 1 s", "-",
         f"{best_in_goal.rate:,.0f}/s" if best_in_goal else "below the sustained run", cores),
        (f"consumers alone, draining a {results.backlog:,} backlog", "-", f"{results.drained_per_s:,.0f}/s", cores),
        ("machine load average (1 min), start -> end", "-", results.load, cores),
    ]
    if tried and not tried[-1].sustained:
        last = tried[-1]
        rows.append((f"at {last.rate:,.0f}/s (not sustained)", "-",
                     f"produced {last.summary.achieved_rate:,.0f}/s, consumed {last.consumed_per_s:,.0f}/s", cores))
    return rows


def figures_json(args: argparse.Namespace, results: Results) -> str:
    main_step, best, best_in_goal = results.main_step, results.best, results.best_in_goal
    return json.dumps({"rate": args.rate, "duration_s": args.duration, "drivers": args.drivers,
                       "produced_per_s": main_step.summary.achieved_rate, "consumed_per_s": main_step.consumed_per_s,
                       "drain_s": main_step.drain_s, "consumer_p50_s": main_step.consumer_p50,
                       "consumer_p99_s": main_step.consumer_p99, "probe_versions": len(main_step.probe),
                       "probe_p50_s": percentile(main_step.probe, 0.5),
                       "probe_p99_s": percentile(main_step.probe, 0.99),
                       "max_sustained_per_s": best.rate if best else None,
                       "max_within_goal_per_s": best_in_goal.rate if best_in_goal else None,
                       "drain_per_s": results.drained_per_s,
                       "load_average": results.load, "machine": machine()})


def main() -> int:
    args = parse_args()
    settings = get_settings()
    print(f"stream consumer: {CHECKS['stream-consumer'](settings)}", flush=True)
    load_before = os.getloadavg()[0]

    main_step = run_step(settings, args.rate, args.duration, args.drivers, seed=1, probe=True)
    print(f"sustained run: {json.dumps(main_step.summary.__dict__)}", flush=True)
    best, best_in_goal, tried = climb(settings, args, main_step)
    drained_per_s, backlog = drain_rate(settings, args.backlog, args.drivers)
    print(f"drain: backlog {backlog} consumed at {drained_per_s:.0f}/s", flush=True)

    results = Results(main_step, best, best_in_goal, tried, drained_per_s, backlog,
                      f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    consumers = len(consumer_metric_urls(settings))
    print_table(f"Stream consumer group of {consumers}: {args.rate:,.0f} events/s for {args.duration:.0f} s, "
                f"{args.drivers} drivers",
                ("what", "target", "measured", "cores"), table_rows(args, results))
    if args.json:
        print(figures_json(args, results))
    ok = main_step.within_goal and percentile(main_step.probe, 0.99) < FRESHNESS_GOAL_SECONDS
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
