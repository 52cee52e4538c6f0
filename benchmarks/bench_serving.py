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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.common import machine, print_table
from benchmarks.serving_load import (
    DRIVERS,
    FIRST_ID,
    MAX_IN_FLIGHT,
    REQUEST_TIMEOUT_SECONDS,
    Ladder,
    Run,
    climb,
    composition_call,
    open_loop,
    ours_call,
)
from benchmarks.serving_servers import Server, feast_server, mlflow_server, our_server
from mlops_platform.settings import REPO_ROOT, Settings, get_settings

GOAL_RATE, GOAL_P99_MS, GOAL_RATIO = 200.0, 10.0, 3.0


# ---- data and model ---------------------------------------------------------------------------
def prepare_drivers(settings: Settings) -> None:
    """Fresh rows for the benchmark's own driver ids, materialized into Redis."""
    import io

    import numpy as np
    import pandas as pd

    from data_pipeline.materialize import materialize_interval
    from data_pipeline.offline_store import STATS_TABLE, ensure_schema
    from mlops_platform.postgres import connect

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

    from mlops_platform import model_registry

    client = model_registry.client(settings.mlflow_tracking_uri)
    champion = model_registry.find_champion(client, settings.model_name, settings.model_alias)
    if champion is not None:
        return champion.version
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


# ---- main -------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
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
    return parser.parse_args()


def check_same_rankings(settings: Settings, table: dict, log_dir: Path) -> None:
    """With one worker of ours and the default composition up, print whether both rank alike."""
    starters = table["ours-1"][2] + table["composition-default"][2]
    servers = [start() for start in starters]
    try:
        for server in servers:
            server.start(log_dir)
        print(f"same rankings from both ways: {'yes' if asyncio.run(same_rankings(settings)) else 'NO'}")
    finally:
        for server in reversed(servers):
            server.stop()


def measure_cell(system: tuple, size: int, args: argparse.Namespace, slos: list[float], log_dir: Path) -> Cell:
    """One system at one request size, once the machine is quiet; prints a line as it ends."""
    what, config, starters, call_factory = system
    began, load_start = time.monotonic(), wait_for_quiet(args.quiet_load, args.quiet_wait)
    at_goal, ladder = run_cell(starters, call_factory, size, args.seconds, max(slos), args.repeats, log_dir)
    cell = Cell(what, config, size, at_goal, ladder, (load_start, os.getloadavg()[0]))
    steps = ", ".join(f"{run.rate:.0f}/s p99 {run.quantile(0.99):.1f}" for run in ladder.steps)
    print(f"  {what} [{config}] {size} driver(s): at {GOAL_RATE:.0f}/s p50 {cell.goal_quantile(0.5):.2f} ms, "
          f"p99 {cell.goal_quantile(0.99):.2f} ms (runs: "
          f"{', '.join(f'{run.quantile(0.99):.1f}' for run in at_goal)}; errors "
          f"{sum(run.errors for run in at_goal)}); ladder: {steps}; load {cell.load[0]:.1f}-{cell.load[1]:.1f} "
          f"({time.monotonic() - began:.0f}s)", flush=True)
    return cell


def best_composition(cells: list[Cell], size: int, slo_ms: float) -> float:
    return max((c.ladder.max_rate(slo_ms) for c in cells if c.drivers == size and c.what.startswith("feast")),
               default=0.0)


def print_results(cells: list[Cell], slos: list[float], repeats: int) -> None:
    rows = []
    for cell in cells:
        maxima = [cell.ladder.max_rate(slo) for slo in slos]
        composition = best_composition(cells, cell.drivers, slos[-1])
        ratio = f"{maxima[-1] / composition:.1f}x" if composition else "-"
        errors = sum(run.errors for run in cell.at_goal)
        rows.append((cell.what, cell.config, cell.drivers, f"{GOAL_RATE:.0f}/s",
                     f"{cell.goal_quantile(0.5):.2f}", f"{cell.goal_quantile(0.99):.2f}", errors,
                     *[f"{m:.0f}/s" for m in maxima], ratio, f"{cell.load[0]:.1f}-{cell.load[1]:.1f}"))
    print_table(f"Online ranking: p50/p99 at {GOAL_RATE:.0f} req/s (median of {repeats} runs), highest rate held "
                f"with p99 under each bound; ratio at p99 <= {slos[-1]:.0f} ms vs the best composition",
                ("what", "config", "drivers", "rate", "p50 ms", "p99 ms", "errors",
                 *[f"max @p99<={slo:.0f}ms" for slo in slos], "ratio", "load"), rows)


def print_goals(cells: list[Cell], slos: list[float]) -> None:
    """Whether the latency goal (10 drivers) and the throughput goal (each size) were met."""
    ours10 = [c for c in cells if c.what.startswith("ours") and c.drivers == 10]
    if ours10:
        best = min(c.goal_quantile(0.99) for c in ours10)
        verdict = "met" if best < GOAL_P99_MS else "NOT met"
        print(f"goal p99 < {GOAL_P99_MS:.0f} ms at {GOAL_RATE:.0f}/s with 10 drivers: {verdict} (best {best:.2f} ms)")
    for size in sorted({c.drivers for c in cells}):
        ours_best = max((c.ladder.max_rate(slos[-1]) for c in cells if c.drivers == size
                         and c.what.startswith("ours")), default=0.0)
        composition_best = best_composition(cells, size, slos[-1])
        if ours_best and composition_best:
            ratio = ours_best / composition_best
            verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
            print(f"goal >= {GOAL_RATIO:.0f}x the composition's throughput at p99 <= {slos[-1]:.0f} ms, "
                  f"{size} driver(s): {verdict} ({ratio:.1f}x)")


def main() -> int:
    args = parse_args()
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
        check_same_rankings(settings, table, log_dir)

    slos = sorted(set(args.slo_ms))
    cells = [measure_cell(table[name], size, args, slos, log_dir) for size in args.drivers for name in chosen]
    print_results(cells, slos, args.repeats)
    load_after = os.getloadavg()
    print(f"machine: {machine()}; 1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          "client and servers share the machine")
    print_goals(cells, slos)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
