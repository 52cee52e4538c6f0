"""Simulated bookings against the running API, with outcomes reported back: live traffic and live labels.

    python -m simulation.traffic --requests 500 --rate 20 [--drivers-per-request 5] [--label-delay 2] [--seed 0]

Each booking asks POST /predict to rank K candidate drivers (drawn from the drivers with stats within
the feature TTL, the ones the online store can know), assigns the best one, and `--label-delay`
seconds later posts /feedback with whether that driver completed the trip. The outcome is drawn the
way the data generator draws its labels (simulation.generate): P(completed) =
sigmoid(completion_logit(driver's latest stats) + N(0, 0.5)), so live labels carry the same signal
the model was trained on, and live ROC AUC means something.

Bounded in count (`--requests`, at most MAX_REQUESTS) and time (the schedule plus the label delay and
two HTTP timeouts; what is still pending then is abandoned and counted). It only targets this
machine (127.0.0.1, localhost) or the configured SERVING_HOST. Prints one JSON summary; exits 1 when no
/predict request got a 2xx answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

import numpy as np

from feast_repo.features import FEATURE_TTL
from mlops_platform.settings import Settings, get_settings
from simulation.generate import completion_logit

MAX_REQUESTS = 100_000
MAX_RATE = 1_000.0
MAX_LABEL_DELAY = 3_600.0
LABEL_NOISE = 0.5  # the label noise simulation.generate.generate_orders draws with by default
RECENT = FEATURE_TTL  # older stats are not served online
HTTP_TIMEOUT_SECONDS = 10.0
MAX_IN_FLIGHT = 64
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

Features = tuple[float, float, float]  # conv_rate, acc_rate, avg_daily_trips


@dataclass(frozen=True)
class TrafficConfig:
    requests: int
    rate: float
    drivers_per_request: int = 5
    label_delay: float = 2.0
    seed: int = 0
    http_timeout: float = HTTP_TIMEOUT_SECONDS
    max_in_flight: int = MAX_IN_FLIGHT

    def time_budget(self) -> float:
        """Seconds after which whatever is pending is abandoned: the schedule, the delay, two timeouts."""
        return self.requests / self.rate + self.label_delay + 2 * self.http_timeout + 1.0


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------
def check_target(url: str, settings: Settings) -> str:
    """The API's base URL, if it is on this machine or the configured serving host; ValueError otherwise."""
    parts = urlsplit(url)
    allowed = sorted(LOOPBACK | {settings.serving_host})
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL such as {settings.serving_url}, got {url!r}")
    if parts.hostname not in allowed:
        raise ValueError(f"expected the serving API on one of {', '.join(allowed)}, got host {parts.hostname!r}: "
                         "this tool only sends traffic to this platform's own API")
    return url.rstrip("/")


def sample_candidates(rng: random.Random, driver_ids: Sequence[int], k: int) -> list[int]:
    """K distinct drivers for one booking (all of them when fewer are known)."""
    return rng.sample(list(driver_ids), min(k, len(driver_ids)))


def completion_probability(features: Features, noise: float = 0.0) -> float:
    """P(trip completed) for a driver's stats, the generator's link plus the booking's own noise draw."""
    conv_rate, acc_rate, trips = features
    logit = float(completion_logit(np.float64(conv_rate), np.float64(acc_rate), np.float64(trips))) + noise
    return 1.0 / (1.0 + math.exp(-logit))


def draw_outcome(features: Features, noise: float, uniform: float) -> int:
    """1 when the trip is completed: `uniform` in [0, 1) falls below the probability."""
    return int(uniform < completion_probability(features, noise))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (a value that was observed); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def status_class(status: int | None) -> str:
    """'2xx', '4xx', '5xx', or 'error' for no HTTP answer at all (refused, timed out)."""
    if status is None:
        return "error"
    return f"{status // 100}xx" if status // 100 in (2, 3, 4, 5) else "error"


@dataclass
class Tally:
    """What happened, as the bookings go."""

    responses: dict[str, int] = field(default_factory=lambda: {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "error": 0})
    latencies_ms: list[float] = field(default_factory=list)
    assigned: int = 0
    unassigned: int = 0
    missing_drivers: int = 0
    feedback_sent: int = 0
    feedback_failed: int = 0
    trips_completed: int = 0
    abandoned: int = 0
    began: float = field(default_factory=time.monotonic)
    last_answer: float | None = None

    def answered(self, status: int | None, seconds: float) -> None:
        self.responses[status_class(status)] += 1
        self.last_answer = time.monotonic()
        if status is not None:
            self.latencies_ms.append(seconds * 1000.0)

    def summary(self, config: TrafficConfig, target: str, seconds: float) -> dict:
        sent = sum(self.responses.values())
        predicting = (self.last_answer - self.began) if self.last_answer is not None else 0.0

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "target": target,
            "requests": sent,
            "requested": config.requests,
            "responses": dict(self.responses),
            "latency_ms": {"p50": ms(percentile(self.latencies_ms, 50)), "p99": ms(percentile(self.latencies_ms, 99)),
                           "max": ms(max(self.latencies_ms, default=None))},
            "assigned": self.assigned,
            "unassigned": self.unassigned,
            "missing_drivers": self.missing_drivers,
            "feedback_sent": self.feedback_sent,
            "feedback_failed": self.feedback_failed,
            "trips_completed": self.trips_completed,
            "abandoned": self.abandoned,
            "seconds": round(seconds, 3),
            # /predict requests per second, up to the last answer (the label delay is not traffic)
            "achieved_rate": round(sent / predicting, 2) if predicting > 0 else None,
        }


# ---------------------------------------------------------------------------------------------
# The drivers, and the traffic
# ---------------------------------------------------------------------------------------------
def recent_drivers(settings: Settings, within: timedelta = RECENT, limit: int = 10_000) -> dict[int, Features]:
    """Each driver with stats in the last `within`, and its newest stats (what the online store serves)."""
    from data_pipeline.offline_store import STATS_TABLE
    from mlops_platform.postgres import connect

    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select distinct on (driver_id) driver_id, conv_rate, acc_rate, avg_daily_trips "
                    f"from {STATS_TABLE} where event_timestamp >= now() - %s and event_timestamp <= now() "
                    f"order by driver_id, event_timestamp desc, created desc limit %s", (within, limit))
        return {row[0]: (float(row[1]), float(row[2]), float(row[3])) for row in cur.fetchall()}


async def _booking(client, config: TrafficConfig, tally: Tally, gate: asyncio.Semaphore, candidates: list[int],
                   drivers: Mapping[int, Features], noise: float, uniform: float) -> None:
    import httpx

    async with gate:
        started = time.perf_counter()
        try:
            response = await client.post("/predict", json={"request_id": str(uuid.uuid4()), "driver_ids": candidates})
        except httpx.HTTPError:
            tally.answered(None, time.perf_counter() - started)
            return
        tally.answered(response.status_code, time.perf_counter() - started)
    if not 200 <= response.status_code < 300:
        return
    body = response.json()
    tally.missing_drivers += len(body.get("missing_driver_ids") or [])
    best = body.get("best_driver_id")
    if best is None or best not in drivers:
        tally.unassigned += 1
        return
    tally.assigned += 1
    completed = draw_outcome(drivers[best], noise, uniform)
    await asyncio.sleep(config.label_delay)  # the trip happens
    async with gate:
        try:
            feedback = await client.post("/feedback", json={"request_id": body["request_id"], "driver_id": best,
                                                            "trip_completed": completed})
            ok = 200 <= feedback.status_code < 300
        except httpx.HTTPError:
            ok = False
    if ok:
        tally.feedback_sent += 1
        tally.trips_completed += completed
    else:
        tally.feedback_failed += 1


async def run_traffic(config: TrafficConfig, drivers: Mapping[int, Features], target: str,
                      token: str | None = None) -> dict:
    """Send the bookings on schedule, wait for their feedback within the time budget; the summary."""
    import httpx

    if not drivers:
        raise ValueError("expected drivers to sample candidates from, got none")
    rng = random.Random(config.seed)
    draws = np.random.default_rng(config.seed)
    ids = sorted(drivers)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    tally = Tally()
    gate = asyncio.Semaphore(config.max_in_flight)
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadline = began + config.time_budget()
    async with httpx.AsyncClient(base_url=target, headers=headers, timeout=config.http_timeout) as client:
        tasks = []
        for i in range(config.requests):
            await asyncio.sleep(max(0.0, began + i / config.rate - loop.time()))
            candidates = sample_candidates(rng, ids, config.drivers_per_request)
            # Drawn here, in booking order, so a seed gives the same outcomes however answers interleave.
            noise, uniform = float(draws.normal(0.0, LABEL_NOISE)), float(draws.random())
            tasks.append(asyncio.create_task(
                _booking(client, config, tally, gate, candidates, drivers, noise, uniform)))
        _done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        for task in pending:
            task.cancel()
        tally.abandoned = len(pending)
        if pending:
            await asyncio.wait(pending)
    return tally.summary(config, target, loop.time() - began)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def _bounded(kind, low, high, name: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a {kind.__name__}, got {text!r}") from None
        if not low <= value <= high or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{name}: expected a value in [{low}, {high}], got {text}")
        return value
    return parse


def parse_args(argv: Sequence[str], settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulation.traffic",
                                     description="Simulated bookings and their outcomes against the serving API.")
    parser.add_argument("--requests", required=True, type=_bounded(int, 1, MAX_REQUESTS, "--requests"))
    parser.add_argument("--rate", required=True, type=_bounded(float, 0.01, MAX_RATE, "--rate"),
                        help="bookings per second")
    parser.add_argument("--drivers-per-request", default=5,
                        type=_bounded(int, 1, settings.serving_max_drivers, "--drivers-per-request"))
    parser.add_argument("--label-delay", default=2.0, type=_bounded(float, 0.0, MAX_LABEL_DELAY, "--label-delay"),
                        help="seconds between a booking and its feedback")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--url", default=settings.serving_url, help="default: the configured serving URL")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    settings = get_settings()
    args = parse_args(sys.argv[1:] if argv is None else argv, settings)
    try:
        target = check_target(args.url, settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    drivers = recent_drivers(settings)
    if not drivers:
        print(f"error: expected drivers with stats in the last {RECENT}, found none in the offline store: "
              "ingest or stream fresh stats first (`python -m simulation.generate`, the data_ingestion DAG)",
              file=sys.stderr)
        return 1
    config = TrafficConfig(args.requests, args.rate, args.drivers_per_request, args.label_delay, args.seed)
    token = settings.serving_api_token if settings.serving_auth else None
    summary = asyncio.run(run_traffic(config, drivers, target, token))
    print(json.dumps(summary))
    return 0 if summary["responses"]["2xx"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
