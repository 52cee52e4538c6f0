"""Open-loop load for the serving benchmark (benchmarks.bench_serving): the two ways to rank drivers, runs at
a fixed rate whose latencies count from each request's scheduled send time, and the ladder of growing rates."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from benchmarks.serving_servers import HOST, PORTS
from feast_repo.features import FEATURE_NAMES, FEATURE_SERVICE

FIRST_ID = 60_000_000
DRIVERS = 2_000
FEATURES = list(FEATURE_NAMES)
REQUEST_TIMEOUT_SECONDS = 2.0
MAX_IN_FLIGHT = 1_000
LADDER_START, LADDER_FACTOR, LADDER_MAX = 25.0, 1.4, 4_000.0


# ---- the two ways to rank drivers -------------------------------------------------------------
class Ranked(Exception):
    """A response that is not a ranking."""


def ours_call(client) -> Callable[[list[int]], Awaitable[list[int]]]:
    url = f"http://{HOST}:{PORTS['ours']}/predict"

    async def call(ids: list[int]) -> list[int]:
        response = await client.post(url, json={"driver_ids": ids})
        if response.status_code != 200:
            raise Ranked(f"/predict answered {response.status_code}: {response.text[:200]}")
        return response.json()["ranking"]
    return call


def composition_call(client) -> Callable[[list[int]], Awaitable[list[int]]]:
    """Features from the feature server, matched by name, scored by the model server, ranked here."""
    features_url = f"http://{HOST}:{PORTS['feast']}/get-online-features"
    model_url = f"http://{HOST}:{PORTS['mlflow']}/invocations"

    async def call(ids: list[int]) -> list[int]:
        response = await client.post(features_url, json={"feature_service": FEATURE_SERVICE,
                                                         "entities": {"driver_id": ids}})
        if response.status_code != 200:
            raise Ranked(f"feature server answered {response.status_code}: {response.text[:200]}")
        body = response.json()
        names = body["metadata"]["feature_names"]
        columns = {name: body["results"][i]["values"] for i, name in enumerate(names)}
        rows, scored = [], []
        for position, driver_id in enumerate(columns["driver_id"]):
            row = [columns[f][position] for f in FEATURES]
            if None not in row:
                rows.append(row)
                scored.append(driver_id)
        if not rows:
            return []
        response = await client.post(model_url, json={"dataframe_split": {"columns": FEATURES, "data": rows}})
        if response.status_code != 200:
            raise Ranked(f"model server answered {response.status_code}: {response.text[:200]}")
        scores = response.json()["predictions"]
        return [d for _, d in sorted(zip(scores, scored, strict=True), key=lambda p: (-p[0], p[1]))]
    return call


# ---- open-loop load ---------------------------------------------------------------------------
@dataclass
class Run:
    rate: float
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str = ""

    def quantile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("inf")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def achieved(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def held(self, slo_ms: float) -> bool:
        return self.errors == 0 and self.quantile(0.99) <= slo_ms and self.achieved >= 0.97 * self.rate


async def open_loop(call: Callable[[list[int]], Awaitable[list[int]]], rate: float, seconds: float, size: int,
                    seed: int = 1) -> Run:
    """Send `rate` requests a second for `seconds`; each latency counts from its scheduled send time."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    count = max(1, int(rate * seconds))
    run = Run(rate, 0, 0, 0, 0.0)
    in_flight: set[asyncio.Task] = set()
    start = loop.time() + 0.05
    last_done = start

    async def one(scheduled: float, ids: list[int]) -> None:
        nonlocal last_done
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                ranking = await call(ids)
            if size and not ranking:
                raise Ranked("empty ranking")
            run.ok += 1
            done = loop.time()
            run.latencies_ms.append((done - scheduled) * 1000)
            last_done = max(last_done, done)
        except Exception as exc:  # timeouts, refused connections, bad answers: all are errors of the run
            run.errors += 1
            run.first_error = run.first_error or f"{type(exc).__name__}: {exc}"[:200]

    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= MAX_IN_FLIGHT:
            run.errors += 1
            run.first_error = run.first_error or f"more than {MAX_IN_FLIGHT} requests in flight"
            continue
        ids = [FIRST_ID + j for j in rng.sample(range(DRIVERS), size)]
        task = asyncio.create_task(one(scheduled, ids))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        run.sent += 1
    if in_flight:
        await asyncio.wait(in_flight)
    run.seconds = max(last_done - start, count / rate)
    return run


@dataclass
class Ladder:
    """Open-loop steps of growing rate until one fails even when retried; every step is kept."""

    steps: list[Run] = field(default_factory=list)

    def max_rate(self, slo_ms: float) -> float:
        """The highest rate held (p99 <= slo_ms, no errors, >= 97% delivered) before the first step that was not."""
        best = 0.0
        for run in self.steps:
            if not run.held(slo_ms):
                break
            best = run.rate
        return best


async def climb(call, size: int, seconds: float, slo_ms: float) -> Ladder:
    """Rates LADDER_START * LADDER_FACTOR^k until a step misses `slo_ms` twice in a row (a retry absorbs a
    stall caused by another job on the machine; the retry is what is recorded)."""
    ladder, rate = Ladder(), LADDER_START
    while rate <= LADDER_MAX:
        run = await open_loop(call, rate, seconds, size, seed=int(rate))
        if not run.held(slo_ms):
            await asyncio.sleep(1.0)
            run = await open_loop(call, rate, seconds, size, seed=int(rate) + 1)
        ladder.steps.append(run)
        if not run.held(slo_ms):
            break
        rate = round(rate * LADDER_FACTOR)
    return ladder
