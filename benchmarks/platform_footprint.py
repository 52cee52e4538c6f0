"""Start-up time and idle memory of the whole local platform.

Times `bash run.sh all up` from nothing running to every service healthy, waits for the platform to
settle, then sums the resident memory (PSS, so shared pages count once) of every process in every
service's process group. Run it on a stopped platform:

    .venv/bin/python -m benchmarks.platform_footprint [--settle-seconds 30]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from benchmarks.common import print_table
from mlops_platform import local, process_tree
from mlops_platform.services import SERVICES, pid_file
from mlops_platform.settings import REPO_ROOT, get_settings


def pss_kib(pid: int) -> int:
    try:
        text = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    settings = get_settings()
    if local.running_services(settings):
        raise SystemExit("stop the platform first (bash run.sh all down): this measures a cold start")
    began = time.perf_counter()
    subprocess.run(["bash", str(REPO_ROOT / "run.sh"), "all", "up"], check=True, stdout=subprocess.DEVNULL)
    up_seconds = time.perf_counter() - began
    time.sleep(args.settle_seconds)  # let start-up work (DAG parsing, JIT, caches) finish before measuring idle
    rows, total = [], 0
    for service in SERVICES:
        path = pid_file(settings, service.name)
        if not path.exists():
            continue
        members = process_tree.group_members(int(path.read_text()))
        kib = sum(pss_kib(pid) for pid in members)
        total += kib
        rows.append((service.name, len(members), f"{kib / 1024:,.0f}"))
    rows.append(("total", sum(r[1] for r in rows), f"{total / 1024:,.0f}"))
    title = f"`bash run.sh all up`: {up_seconds:.1f} s to all healthy; idle after {args.settle_seconds:.0f} s"
    print_table(title, ("service", "processes", "PSS MiB"), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
