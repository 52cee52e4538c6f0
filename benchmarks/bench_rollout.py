"""Online serving under each rollout mode: p50/p99 at a fixed rate and the maximum throughput, against `champion`.

Cells, in one run, on a registered model of the benchmark's own (MODEL below, so the platform's rollouts are
untouched), each with the API started fresh once the rollout state is set:

- champion: no rollout (the baseline every ratio is taken against);
- shadow: the challenger (an equally good pipeline) scores every request off the response path;
- canary 10 %, ab 50 %: that share of the requests answered by the challenger;
- shadow with a slow challenger (50 ms per scoring) and with a failing one (raises on every scoring);
- canary 10 % with the failing challenger (its requests fall back to the champion).

The load is benchmarks.serving_load's open loop (latency from each request's scheduled send time); each
cell runs --repeats runs at --rate (median of their p50/p99), then its ladder of growing rates gives the
highest rate held with p99 under --slo, no errors and >= 97 % delivered. A cell is measured only once the
API shows the rollout took effect (a challenger sample on its /metrics). The machine is shared, so the
table also gives the load average at the start of each cell.

Needs the platform's PostgreSQL, Redis, MLflow and Kafka (`bash run.sh kafka up && bash run.sh mlflow up`):

    .venv/bin/python -m benchmarks.bench_rollout [--seconds 5] [--repeats 3] [--rate 100] [--drivers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.common import print_table
from benchmarks.serving_load import MAX_IN_FLIGHT, REQUEST_TIMEOUT_SECONDS, Ladder, Run, climb, open_loop, ours_call
from benchmarks.serving_servers import HOST, PORTS, our_server
from mlops_platform.settings import Settings, get_settings

MODEL = "bench-rollout"
ACTOR = "benchmark"
SLOW_SECONDS = 0.05
# what, mode (None: no rollout), share, which challenger
CELLS = [("champion", None, None, None), ("shadow", "shadow", None, "good"), ("canary 10 %", "canary", 0.1, "good"),
         ("ab 50 %", "ab", 0.5, "good"), ("shadow, slow challenger", "shadow", None, "slow"),
         ("shadow, failing challenger", "shadow", None, "failing"),
         ("canary 10 %, failing challenger", "canary", 0.1, "failing")]


# ---- models and rollout state ----------------------------------------------------------------
def register_models(settings: Settings) -> dict[str, str]:
    """The champion and three challengers of MODEL: kind -> version (registered anew each run)."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.pipeline import Pipeline

    from benchmarks.rollout_models import TRUSTED_TYPES, FailStep, SleepStep
    from mlops_platform import model_registry
    from simulation.planted_models import GOOD, fit, labelled_rows
    from training_pipeline import tracking
    from training_pipeline.model import SKOPS_TRUSTED_TYPES, inputs

    client = model_registry.client(settings.mlflow_tracking_uri)
    rows = labelled_rows(2000, seed=5)
    features = ["conv_rate", "acc_rate", "avg_daily_trips"]
    x = inputs(rows, features)
    versions = {}
    for kind, seed in (("champion", 1), ("good", 2), ("slow", 3), ("failing", 4)):
        pipeline = fit(rows, features, GOOD, seed)
        signature = infer_signature(x, pipeline.predict(x))
        if kind in ("slow", "failing"):
            pipeline = Pipeline([("misbehave", SleepStep(SLOW_SECONDS) if kind == "slow" else FailStep()),
                                 *pipeline.steps])
        with mlflow.start_run(experiment_id=tracking.experiment_id(client, "benchmark-rollout"), run_name=kind):
            info = mlflow.sklearn.log_model(pipeline, name="model", signature=signature, registered_model_name=MODEL,
                                            skops_trusted_types=SKOPS_TRUSTED_TYPES + TRUSTED_TYPES)
        versions[kind] = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL, settings.model_alias, versions["champion"])
    return versions


def set_rollout(settings: Settings, mode: str | None, share: float | None, version: str | None) -> None:
    """End MODEL's running rollout, then start the cell's (none for champion)."""
    from mlops_platform import model_registry, rollout_store

    client = model_registry.client(settings.mlflow_tracking_uri)
    running = rollout_store.current(settings, MODEL)
    if running is not None:
        rollout_store.rollback(settings, client, MODEL, ACTOR, "next benchmark cell", rollout_id=running.rollout_id)
    if mode is not None:
        rollout_store.start(settings, client, MODEL, mode, share=share, challenger_version=version, actor=ACTOR,
                            reason="benchmark cell")


# ---- cells -----------------------------------------------------------------------------------
@dataclass
class Cell:
    what: str
    at_rate: list[Run]
    ladder: Ladder
    load: float

    def quantile(self, q: float) -> float:
        return statistics.median(run.quantile(q) for run in self.at_rate)

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.at_rate)


def challenger_seen(port: int) -> bool:
    """Whether the API's /metrics holds a sample of the challenger (it scored, failed, or fell back)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        return 'variant="challenger"' in response.read().decode()


async def measure(args: argparse.Namespace, expect_challenger: bool) -> tuple[list[Run], Ladder]:
    import httpx

    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        call = ours_call(client)
        deadline = time.monotonic() + 60
        while True:  # warm-up until the rollout took effect in the API (the challenger loads on its own thread)
            await open_loop(call, 25, 2, args.drivers, seed=99)
            if not expect_challenger or await asyncio.to_thread(challenger_seen, PORTS["ours"]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the API never showed the challenger on /metrics within 60 s")
        at_rate = [await open_loop(call, args.rate, args.seconds, args.drivers, seed=7 + i)
                   for i in range(args.repeats)]
        ladder = await climb(call, args.drivers, args.seconds, args.slo)
    return at_rate, ladder


def run_cell(settings: Settings, versions: dict[str, str], cell: tuple, args: argparse.Namespace,
             home: Path) -> Cell:
    what, mode, share, kind = cell
    set_rollout(settings, mode, share, versions.get(kind))
    load = os.getloadavg()[0]
    server = our_server(settings, args.workers, home)
    server.env.update({"MODEL_NAME": MODEL, "ROLLOUT_REFRESH_SECONDS": "1"})
    server.name = f"ours-{what.replace(' ', '-').replace('%', 'pct').replace(',', '')}"
    server.start(home)
    try:
        at_rate, ladder = asyncio.run(measure(args, mode is not None))
    finally:
        server.stop()
    print(f"  {what}: p99 {statistics.median(r.quantile(0.99) for r in at_rate):.1f} ms, "
          f"max {ladder.max_rate(args.slo):.0f}/s", flush=True)
    return Cell(what, at_rate, ladder, load)


def print_results(cells: list[Cell], args: argparse.Namespace) -> None:
    base = cells[0]
    base_max = base.ladder.max_rate(args.slo)
    rows = []
    for cell in cells:
        top = cell.ladder.max_rate(args.slo)
        rows.append((cell.what, f"{cell.quantile(0.5):.1f}", f"{cell.quantile(0.99):.1f}",
                     f"{cell.quantile(0.99) / base.quantile(0.99):.2f}", cell.errors, f"{top:.0f}",
                     f"{top / base_max:.2f}" if base_max else "-", f"{cell.load:.2f}"))
    print_table(f"API by rollout mode: {args.drivers} drivers a request, {args.workers} worker(s), "
                f"{args.rate:g} req/s x {args.seconds:g} s x {args.repeats}; max rate at p99 <= {args.slo:g} ms",
                ("mode", "p50 ms", "p99 ms", "p99 / champion", "errors", "max req/s", "max / champion", "load"),
                rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each open-loop run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s of the fixed-rate runs")
    parser.add_argument("--drivers", type=int, default=10, help="drivers per request")
    parser.add_argument("--slo", type=float, default=50.0, help="p99 bound (ms) of the throughput ladder")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return parser.parse_args()


def main() -> int:
    from benchmarks.bench_serving import prepare_drivers

    args = parse_args()
    settings = replace(get_settings(), model_name=MODEL)
    prepare_drivers(settings)
    versions = register_models(settings)
    print(f"{MODEL}: champion v{versions['champion']}, challengers good v{versions['good']}, "
          f"slow v{versions['slow']}, failing v{versions['failing']}", flush=True)
    cells = []
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as folder:
        try:
            cells = [run_cell(settings, versions, cell, args, Path(folder)) for cell in CELLS]
        finally:
            set_rollout(settings, None, None, None)
    print_results(cells, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
