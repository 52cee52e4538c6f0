"""Online serving: latency and maximum throughput of the API against the stock composition.

Side by side, for 1 and 10 drivers per request, on this machine:

- ours: `python -m model_serving.api` with one uvicorn worker and with one per core;
- the composition a user would otherwise assemble: Feast's feature server (`feast serve`) for the
  features, then `mlflow models serve` (env-manager local) for the scores, called one after the other
  by the client, which also matches features by name and ranks. Once with both servers' defaults,
  once tuned (feast: --workers 2 --no-access-log --max-requests 0; mlflow: one worker per core).

Every server is started fresh for each cell (an overloaded composition stays slower afterwards).
The load is open loop: requests are sent at fixed times (rate R), whatever the answers do, and each
latency is measured from the request's scheduled send time, so a stalled server or client shows up
in the latency instead of silently lowering the rate. Each cell measures p50/p99 at the goal rate
(median of --repeats runs), then climbs a geometric ladder of rates until a step misses the largest
p99 bound twice in a row; the maximum throughput for a bound is the highest step held with p99 under
it, no errors and >= 97% of the rate delivered. Only 127.0.0.1 is ever called; every run is bounded
in count and time. The machine is shared: each cell first waits (bounded) for a low load average,
and the table reports the load during each cell.

Needs the platform's Redis, PostgreSQL, MLflow and Kafka (`bash run.sh kafka up && bash run.sh mlflow
up`) and a `champion` model (a tiny synthetic one is registered when there is none). The set-up runs
in a subprocess, so the load generator carries no MLflow, Feast or pandas:

    .venv/bin/python -m benchmarks.bench_serving
    .venv/bin/python -m benchmarks.bench_serving --drivers 10 --systems ours-1 composition-tuned
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.common import machine, print_table
from mlops_platform.settings import REPO_ROOT, Settings, get_settings

FIRST_ID = 60_000_000
DRIVERS = 2_000
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
FEATURE_SERVICE = "driver_trip_completion"
GOAL_RATE, GOAL_P99_MS, GOAL_RATIO = 200.0, 10.0, 3.0
REQUEST_TIMEOUT_SECONDS = 2.0
MAX_IN_FLIGHT = 1_000
START_TIMEOUT_SECONDS = 180.0
STABLE_SECONDS = 3.0
LADDER_START, LADDER_FACTOR, LADDER_MAX = 25.0, 1.4, 4_000.0
HOST = "127.0.0.1"
PORTS = {"ours": 24880, "feast": 24881, "mlflow": 24882}


# ---- data and model ---------------------------------------------------------------------------
def prepare_drivers(settings: Settings) -> None:
    """Fresh rows for the benchmark's own driver ids, materialized into Redis."""
    import io

    import numpy as np
    import pandas as pd

    from data_pipeline.materialize import materialize_interval
    from data_pipeline.offline_store import STATS_TABLE, connect, ensure_schema

    ensure_schema(settings)
    rng = np.random.default_rng(11)
    now = datetime.now(UTC).replace(microsecond=0)
    frame = pd.DataFrame({
        "driver_id": np.arange(FIRST_ID, FIRST_ID + DRIVERS), "event_timestamp": now - timedelta(minutes=5),
        "created": now, "conv_rate": rng.random(DRIVERS).astype(np.float32),
        "acc_rate": rng.random(DRIVERS).astype(np.float32), "avg_daily_trips": rng.integers(0, 60, DRIVERS),
        "source": "benchmark"})
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where driver_id between %s and %s",
                    (FIRST_ID, FIRST_ID + DRIVERS - 1))
        cur.copy_expert(f"COPY {STATS_TABLE} (driver_id, event_timestamp, created, conv_rate, acc_rate, "
                        "avg_daily_trips, source) FROM STDIN WITH (FORMAT csv)", buffer)
    materialize_interval(now - timedelta(minutes=10), now + timedelta(minutes=1), settings,
                         overlap=timedelta(0))


def ensure_champion(settings: Settings) -> str:
    """The champion's version; registers a tiny synthetic pipeline when the registry has none."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    client = MlflowClient(settings.mlflow_tracking_uri)
    try:
        return str(client.get_model_version_by_alias(settings.model_name, settings.model_alias).version)
    except MlflowException:
        pass
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    from training_pipeline.model import SKOPS_TRUSTED_TYPES, make_model

    rng = np.random.default_rng(5)
    x = pd.DataFrame({"conv_rate": rng.random(500), "acc_rate": rng.random(500),
                      "avg_daily_trips": rng.integers(0, 60, 500).astype(np.float64)})
    y = ((x.conv_rate + 0.5 * x.acc_rate + rng.normal(0, 0.2, 500)) > 0.8).astype(np.float64)
    pipeline = make_model(0.001, 0.5, 5).fit(x, y)
    mlflow.set_experiment("benchmark-serving")
    with mlflow.start_run(run_name="benchmark-model"):
        info = mlflow.sklearn.log_model(pipeline, name="model", signature=infer_signature(x, pipeline.predict(x)),
                                        input_example=x.head(3), registered_model_name=settings.model_name,
                                        skops_trusted_types=SKOPS_TRUSTED_TYPES)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    print(f"no {settings.model_alias!r} model in the registry: registered a synthetic one as version {version}")
    return version


# ---- servers ----------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    cwd: Path = REPO_ROOT
    process: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, log_dir: Path, attempts: int = 3) -> None:
        """Start and wait until ready and still up a few seconds later: `feast serve --workers N` sometimes
        loses a worker at boot (its registry connection is shared across the fork) and then exits."""
        for attempt in range(1, attempts + 1):
            self._start_once(log_dir)
            time.sleep(STABLE_SECONDS)
            if self.process is not None and self.process.poll() is None and _answers(self.ready_url):
                return
            print(f"  {self.name} did not stay up after start (attempt {attempt}); see {self.log}", flush=True)
            self.stop()
        raise RuntimeError(f"{self.name} did not stay up after {attempts} starts; see {self.log}")

    def _start_once(self, log_dir: Path) -> None:
        self.log = log_dir / f"{self.name}.log"
        # The venv's bin first: `mlflow models serve` runs `uvicorn` found on the PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env={**os.environ, "PATH": path, **self.env},
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} during start-up; see {self.log}")
            if _answers(self.ready_url):
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.ready_url} within {START_TIMEOUT_SECONDS:.0f}s; "
                           f"see {self.log}")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        self.process = None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def our_server(settings: Settings, workers: int, home: Path) -> Server:
    port = PORTS["ours"]
    env = {"SERVING_PORT": str(port), "SERVING_WORKERS": str(workers), "SERVING_AUTH": "off",
           "PLATFORM_HOME": str(home), "LOG_LEVEL": "WARNING", "LISTEN_ADDRESS": HOST,
           "PYTHONPATH": str(REPO_ROOT)}
    return Server(f"ours-{workers}w", [sys.executable, "-m", "model_serving.api"], env,
                  f"http://{HOST}:{port}/ready")


def feast_server(settings: Settings, tuned: bool) -> Server:
    port = PORTS["feast"]
    argv = [str(Path(sys.executable).parent / "feast"), "-c", str(REPO_ROOT / "feast_repo"), "serve",
            "-h", HOST, "-p", str(port)]
    if tuned:
        argv += ["--workers", str(os.cpu_count() or 1), "--no-access-log", "--max-requests", "0"]
    return Server(f"feast-serve{'-tuned' if tuned else ''}", argv, settings.feast_environment(),
                  f"http://{HOST}:{port}/health")


def mlflow_server(settings: Settings, workers: int) -> Server:
    port = PORTS["mlflow"]
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", settings.model_uri, "--env-manager", "local",
            "-h", HOST, "-p", str(port), "-w", str(workers)]
    return Server(f"mlflow-serve-{workers}w", argv, {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri},
                  f"http://{HOST}:{port}/ping")


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


# ---- cells ------------------------------------------------------------------------------------
@dataclass
class Cell:
    what: str
    config: str
    drivers: int
    at_goal: list[Run]
    ladder: Ladder
    load: tuple[float, float]  # 1-minute load average at the start and at the end of the cell

    def goal_quantile(self, q: float) -> float:
        """Median over the repeated goal-rate runs of their q-quantile."""
        return statistics.median(run.quantile(q) for run in self.at_goal)


async def measure(call_factory, size: int, seconds: float, slo_ms: float, repeats: int) -> tuple[list[Run], Ladder]:
    import httpx

    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        call = call_factory(client)
        await open_loop(call, 25, 2, size, seed=99)  # warm-up: connections, caches, first model call
        at_goal = [await open_loop(call, GOAL_RATE, seconds, size, seed=7 + i) for i in range(repeats)]
        ladder = await climb(call, size, seconds, slo_ms)
    return at_goal, ladder


async def same_rankings(settings: Settings) -> bool:
    """Both ways must rank the same drivers the same way (same features, same model)."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        ids = [FIRST_ID + i for i in range(0, 200, 7)]
        return await ours_call(client)(ids) == await composition_call(client)(ids)


def systems(settings: Settings, home: Path) -> dict[str, tuple[str, str, list[Callable[[], Server]], Callable]]:
    cores = os.cpu_count() or 1
    return {
        "ours-1": ("ours (API)", "1 worker", [lambda: our_server(settings, 1, home)], ours_call),
        f"ours-{cores}": ("ours (API)", f"{cores} workers", [lambda: our_server(settings, cores, home)], ours_call),
        "composition-default": ("feast serve + mlflow serve", "defaults, 1 worker each",
                                [lambda: feast_server(settings, False), lambda: mlflow_server(settings, 1)],
                                composition_call),
        "composition-tuned": ("feast serve + mlflow serve", f"tuned, {cores} workers each",
                              [lambda: feast_server(settings, True), lambda: mlflow_server(settings, cores)],
                              composition_call),
    }


def wait_for_quiet(max_load: float, timeout: float) -> float:
    """Wait (at most `timeout` s) until the 1-minute load average is below `max_load`; returns it."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def run_cell(starters: list[Callable[[], Server]], call_factory, size: int, seconds: float, slo_ms: float,
             repeats: int, log_dir: Path) -> tuple[list[Run], Ladder]:
    servers = [start() for start in starters]
    try:
        for server in servers:
            server.start(log_dir)
        return asyncio.run(measure(call_factory, size, seconds, slo_ms, repeats))
    finally:
        for server in reversed(servers):
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, nargs="+", default=[1, 10], help="drivers per request")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs at the goal rate per cell (median reported)")
    parser.add_argument("--slo-ms", type=float, nargs="+", default=[25.0, 50.0],
                        help="p99 bounds for maximum throughput; the ladder climbs until the largest is missed")
    parser.add_argument("--quiet-load", type=float, default=1.5, help="before each cell, wait until the 1-minute "
                        "load average is below this (other jobs share the machine)")
    parser.add_argument("--quiet-wait", type=float, default=120.0, help="longest wait for a quiet machine, seconds")
    parser.add_argument("--systems", nargs="+", default=None, help="subset of: ours-1 ours-N composition-default "
                        "composition-tuned")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = get_settings()
    if args.prepare_only:
        ensure_champion(settings)
        prepare_drivers(settings)
        return 0
    load_before = os.getloadavg()
    # In a process of its own: MLflow, Feast and pandas (and their threads) stay out of the load generator.
    subprocess.run([sys.executable, "-m", "benchmarks.bench_serving", "--prepare-only"], cwd=REPO_ROOT, check=True)
    table = systems(settings, Path(tempfile.mkdtemp(prefix="bench-serving-")))
    gc.collect()
    gc.freeze()
    chosen = args.systems or list(table)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-serving-logs-"))
    print(f"server logs: {log_dir}")

    if any(name.startswith("composition") for name in chosen) and any(name.startswith("ours") for name in chosen):
        starters = table["ours-1"][2] + table["composition-default"][2]
        servers = [start() for start in starters]
        try:
            for server in servers:
                server.start(log_dir)
            print(f"same rankings from both ways: {'yes' if asyncio.run(same_rankings(settings)) else 'NO'}")
        finally:
            for server in reversed(servers):
                server.stop()

    cells: list[Cell] = []
    slos = sorted(set(args.slo_ms))
    for size in args.drivers:
        for name in chosen:
            what, config, starters, call_factory = table[name]
            began, load_start = time.monotonic(), wait_for_quiet(args.quiet_load, args.quiet_wait)
            at_goal, ladder = run_cell(starters, call_factory, size, args.seconds, max(slos), args.repeats, log_dir)
            cell = Cell(what, config, size, at_goal, ladder, (load_start, os.getloadavg()[0]))
            cells.append(cell)
            steps = ", ".join(f"{run.rate:.0f}/s p99 {run.quantile(0.99):.1f}" for run in ladder.steps)
            print(f"  {what} [{config}] {size} driver(s): at {GOAL_RATE:.0f}/s p50 {cell.goal_quantile(0.5):.2f} ms, "
                  f"p99 {cell.goal_quantile(0.99):.2f} ms (runs: "
                  f"{', '.join(f'{run.quantile(0.99):.1f}' for run in at_goal)}; errors "
                  f"{sum(run.errors for run in at_goal)}); ladder: {steps}; load {cell.load[0]:.1f}-{cell.load[1]:.1f} "
                  f"({time.monotonic() - began:.0f}s)", flush=True)

    rows = []
    for cell in cells:
        maxima = [cell.ladder.max_rate(slo) for slo in slos]
        best_composition = max((c.ladder.max_rate(slos[-1]) for c in cells if c.drivers == cell.drivers
                                and c.what.startswith("feast")), default=0.0)
        ratio = f"{maxima[-1] / best_composition:.1f}x" if best_composition else "-"
        errors = sum(run.errors for run in cell.at_goal)
        rows.append((cell.what, cell.config, cell.drivers, f"{GOAL_RATE:.0f}/s",
                     f"{cell.goal_quantile(0.5):.2f}", f"{cell.goal_quantile(0.99):.2f}", errors,
                     *[f"{m:.0f}/s" for m in maxima], ratio, f"{cell.load[0]:.1f}-{cell.load[1]:.1f}"))
    print_table(f"Online ranking: p50/p99 at {GOAL_RATE:.0f} req/s (median of {args.repeats} runs), highest rate held "
                f"with p99 under each bound; ratio at p99 <= {slos[-1]:.0f} ms vs the best composition",
                ("what", "config", "drivers", "rate", "p50 ms", "p99 ms", "errors",
                 *[f"max @p99<={slo:.0f}ms" for slo in slos], "ratio", "load"), rows)
    load_after = os.getloadavg()
    print(f"machine: {machine()}; 1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          "client and servers share the machine")
    ours10 = [c for c in cells if c.what.startswith("ours") and c.drivers == 10]
    if ours10:
        best = min(c.goal_quantile(0.99) for c in ours10)
        verdict = "met" if best < GOAL_P99_MS else "NOT met"
        print(f"goal p99 < {GOAL_P99_MS:.0f} ms at {GOAL_RATE:.0f}/s with 10 drivers: {verdict} (best {best:.2f} ms)")
    for size in sorted({c.drivers for c in cells}):
        ours_best = max((c.ladder.max_rate(slos[-1]) for c in cells if c.drivers == size
                         and c.what.startswith("ours")), default=0.0)
        composition_best = max((c.ladder.max_rate(slos[-1]) for c in cells if c.drivers == size
                                and c.what.startswith("feast")), default=0.0)
        if ours_best and composition_best:
            ratio = ours_best / composition_best
            verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
            print(f"goal >= {GOAL_RATIO:.0f}x the composition's throughput at p99 <= {slos[-1]:.0f} ms, "
                  f"{size} driver(s): {verdict} ({ratio:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
