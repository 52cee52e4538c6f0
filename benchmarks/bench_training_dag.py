"""Wall time of each project's training DAG, run by Airflow's scheduler on the running platform.

For every project asked for, its training DAG (Project.training_dag) is triggered through the REST API,
as a person or the monitoring service would, and followed to its end. Printed per project: the run's
state and wall time (trigger to finish), the sum of its task durations (what one worker would take
end to end) and the slowest task. The driver DAG needs labels in its window: land data first
(`bash run.sh demo` does), or pass a window in --conf.

`--preload off on` measures each project once per value of AIRFLOW_PRELOAD (local mode): Airflow is
restarted with it (`bash run.sh airflow restart`), so the runs with the tasks' imports preloaded in the
scheduler (mlops_platform/airflow_preload.py) have their baseline from the same session.

    bash run.sh all up
    .venv/bin/python -m benchmarks.bench_training_dag --project penguins --conf '{"folds": 3}'
    .venv/bin/python -m benchmarks.bench_training_dag --project all --runs 2
    .venv/bin/python -m benchmarks.bench_training_dag --project drivers --preload off on
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import datetime

from benchmarks.common import print_table
from mlops_platform.airflow_client import AirflowClient
from mlops_platform.projects import PROJECTS
from mlops_platform.settings import REPO_ROOT


def task_durations(client: AirflowClient, dag_id: str, run_id: str) -> dict[str, float]:
    """Seconds per task instance (mapped ones as task[i]) of a finished run."""
    instances = client.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
    durations = {}
    for ti in instances["task_instances"]:
        if ti.get("start_date") and ti.get("end_date"):
            name = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            seconds = datetime.fromisoformat(ti["end_date"]) - datetime.fromisoformat(ti["start_date"])
            durations[name] = seconds.total_seconds()
    return durations


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default="penguins", choices=[*PROJECTS, "all"])
    parser.add_argument("--conf", default="{}", help="JSON conf passed to every run (the DAG's params)")
    parser.add_argument("--runs", type=int, default=1, help="runs per project, one after the other")
    parser.add_argument("--preload", nargs="+", choices=("on", "off"),
                        help="restart Airflow with each AIRFLOW_PRELOAD value in turn and measure each")
    args = parser.parse_args(argv)
    projects = list(PROJECTS.values()) if args.project == "all" else [PROJECTS[args.project]]
    rows = []
    for preload in args.preload or [None]:
        if preload:
            restart_airflow(preload)
        client = AirflowClient.from_settings()
        for project in projects:
            for n in range(args.runs):
                load = os.getloadavg()[0]
                began = time.monotonic()
                run_id = client.trigger(project.training_dag, conf=json.loads(args.conf), note="benchmark")
                state = client.wait(project.training_dag, run_id, timeout=1800)
                wall = time.monotonic() - began
                durations = task_durations(client, project.training_dag, run_id)
                slowest = max(durations, key=durations.get) if durations else "-"
                rows.append((project.name, preload or "as running", n + 1, state, f"{wall:.1f}",
                             f"{sum(durations.values()):.1f}", f"{slowest} {durations.get(slowest, 0):.1f}",
                             f"{load:.1f}"))
    print_table("Training DAG wall time, run by the scheduler",
                ("project", "preload", "run", "state", "wall s", "task s summed", "slowest task s", "load"), rows)


def restart_airflow(preload: str) -> None:
    """Airflow's services started again with AIRFLOW_PRELOAD=`preload` (local mode)."""
    print(f"bash run.sh airflow restart, AIRFLOW_PRELOAD={preload}", flush=True)
    subprocess.run(["bash", "run.sh", "airflow", "restart"], cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "AIRFLOW_PRELOAD": preload})


if __name__ == "__main__":
    main()
