"""The projects' route under load: p50/p99 of `POST /models/penguin_species/predict` at a fixed rate.

Runs against the platform's running API (SERVING_URL of the settings), open loop as benchmarks.bench_serving
(latency from each request's scheduled send time), with instances sent inline (raw fields, encoded by the
API) so that no penguin data needs to be in the online store. The driver route `/predict` is measured the same
way beside it when its champion serves. Needs a `penguin_species@champion` (a small Keras one is registered
when there is none) and `bash run.sh all up`:

    .venv/bin/python -m benchmarks.bench_project_serving [--rate 200] [--seconds 10] [--instances 1 10]

A first row measures GET /health at the same rate: on a shared machine it tells how much of the tail is the
machine's and the HTTP stack's, not the route's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import print_table
from benchmarks.serving_load import Ranked, open_loop

REQUEST_TIMEOUT_SECONDS = 2.0


def ensure_champion(settings) -> str:
    from mlops_platform import model_registry
    from mlops_platform.projects import PENGUINS

    client = model_registry.client(settings.mlflow_tracking_uri)
    champion = model_registry.find_champion(client, PENGUINS.model_name, settings.model_alias)
    if champion is not None:
        return champion.version
    from tests.services.test_project_serving import penguin_rows, register_keras_champion

    return register_keras_champion(settings, penguin_rows())


def penguin_call(client, url: str, instances: list[dict] | None):
    """A call of the route, or with `instances` None a GET of `url` (the /health baseline: what the machine and
    the HTTP stack alone cost at the same rate)."""
    async def call(_ids: list[int]) -> list[int]:
        if instances is None:
            response = await client.get(url)
            if response.status_code != 200:
                raise Ranked(f"answered {response.status_code}")
            return [0]
        response = await client.post(url, json={"instances": instances})
        if response.status_code != 200:
            raise Ranked(f"answered {response.status_code}: {response.text[:200]}")
        return [p["penguin_id"] for p in response.json()["predictions"]]
    return call


async def measure(url: str, instances: list[dict] | None, rate: float, seconds: float, repeats: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, limits=limits) as client:
        call = penguin_call(client, url, instances)
        await open_loop(call, 20, 1.0, 1)  # warm-up: connections, the first requests' imports
        runs = [await open_loop(call, rate, seconds, 1, seed=i) for i in range(repeats)]
    return {"p50_ms": statistics.median(r.quantile(0.5) for r in runs),
            "p99_ms": statistics.median(r.quantile(0.99) for r in runs),
            "errors": sum(r.errors for r in runs), "achieved_rps": statistics.median(r.achieved for r in runs),
            "load": os.getloadavg()[0]}


def prepare() -> dict:
    """The champion's version and the route's URL, from a subprocess: the load generator then carries no MLflow
    (nor its threads and garbage), only httpx."""
    command = [sys.executable, "-m", "benchmarks.bench_project_serving", "--prepare-only"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 10], help="instances per request")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_only:
        from mlops_platform.projects import PENGUINS
        from mlops_platform.settings import get_settings

        settings = get_settings()
        print(json.dumps({"version": ensure_champion(settings), "model": PENGUINS.model_name,
                          "url": f"{settings.serving_url}/models/{PENGUINS.model_name}/predict"}))
        return 0
    prepared = prepare()
    version, url = prepared["version"], prepared["url"]
    gc.freeze()
    raw = {"island": "Biscoe", "bill_length_mm": 46.5, "bill_depth_mm": 15.2, "flipper_length_mm": 215.0,
           "body_mass_g": 5200.0, "sex": "female"}
    rows = []
    health = url.split("/models/")[0] + "/health"
    cells = [("GET /health (baseline)", health, None)]
    cells += [(f"{prepared['model']} v{version}", url, [{"penguin_id": i + 1, **raw} for i in range(count)])
              for count in args.instances]
    for name, target, instances in cells:
        result = asyncio.run(measure(target, instances, args.rate, args.seconds, args.repeats))
        rows.append([name, len(instances or ()), args.rate, f"{result['achieved_rps']:.0f}", f"{result['p50_ms']:.1f}",
                     f"{result['p99_ms']:.1f}", result["errors"], f"{result['load']:.1f}"])
    print_table(f"POST /models/{prepared['model']}/predict, inline instances, open loop",
                ("model", "instances", "rate", "achieved", "p50 ms", "p99 ms", "errors", "load"), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
