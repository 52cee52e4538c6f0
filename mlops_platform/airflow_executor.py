"""Local mode's choice of Airflow executor: `bash run.sh airflow up --workers N` and what it leaves behind.

`--workers N` (N >= 1) switches this platform to CeleryExecutor with N workers and remembers it in
`<PLATFORM_HOME>/airflow/celery-workers.json`, so every later `up`, `status`, `restart` and `down` of this
platform sees the same executor and workers without the flag. `--workers 0` forgets it: AIRFLOW_EXECUTOR
(LocalExecutor by default) applies again. The choice reaches every service as the AIRFLOW_EXECUTOR and
AIRFLOW_WORKERS variables of this process, which local mode hands to the processes it starts.

The scheduler runs the executor: an `up` that finds it running with the other one restarts it. The other
Airflow components do not depend on the executor and keep running.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlops_platform import instances, supervisor
from mlops_platform.airflow_config import CELERY
from mlops_platform.errors import PlatformError
from mlops_platform.local import say
from mlops_platform.services import BY_NAME, airflow_home, pid_file
from mlops_platform.settings import Settings, get_settings


def choice_file(settings: Settings) -> Path:
    return airflow_home(settings) / "celery-workers.json"


def remembered_workers(settings: Settings) -> int | None:
    """The workers an earlier `--workers N` chose for this platform, or None."""
    try:
        return int(json.loads(choice_file(settings).read_text())["workers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def choose(settings: Settings, workers: int | None) -> Settings:
    """Apply `--workers` (None: not given) and the remembered choice; the settings of this run."""
    if workers is not None:
        if workers < 0:
            raise PlatformError(f"--workers needs a number of Celery workers >= 0, got {workers}")
        if workers == 0:
            if settings.airflow_executor == CELERY:
                raise PlatformError("--workers 0 returns to AIRFLOW_EXECUTOR, which is CeleryExecutor here, and "
                                    "CeleryExecutor needs at least one worker: ask for --workers 1 or more, or set "
                                    "AIRFLOW_EXECUTOR=LocalExecutor in .env")
            choice_file(settings).unlink(missing_ok=True)
        else:
            choice_file(settings).parent.mkdir(parents=True, exist_ok=True)
            choice_file(settings).write_text(json.dumps({"executor": CELERY, "workers": workers}) + "\n")
    remembered = remembered_workers(settings)
    if remembered is None:
        return settings
    os.environ["AIRFLOW_EXECUTOR"] = CELERY
    os.environ["AIRFLOW_WORKERS"] = str(remembered)
    get_settings.cache_clear()
    return get_settings()


def running_executor(settings: Settings) -> str | None:
    """The executor the supervised scheduler started with, or None when it does not run."""
    program = supervisor.programs(settings).get("airflow-scheduler")
    if program is None or program.state not in ("STARTING", "RUNNING", "BACKOFF"):
        return None
    try:
        env = json.loads(supervisor.launch_file(settings, "airflow-scheduler").read_text())["env"]
    except (OSError, ValueError, KeyError):
        return None
    return env.get("AIRFLOW_EXECUTOR", "LocalExecutor")


def apply_change(settings: Settings) -> None:
    """Before `up`: a scheduler running with the other executor is stopped (`up` starts it with this one);
    without CeleryExecutor, no worker is left running."""
    from mlops_platform.local_service import stop

    running = running_executor(settings)
    if running is not None and running != settings.airflow_executor:
        say(f"  airflow: executor {running} -> {settings.airflow_executor}, restarting airflow-scheduler")
        stop(BY_NAME["airflow-scheduler"], settings)
    if settings.airflow_executor != CELERY:
        worker = BY_NAME["airflow-worker"]
        # Instance 1 carries the service's own name: with no worker planned, name it here.
        for one in [instances.instance(worker, settings, 1), *instances.every(worker, settings)]:
            if pid_file(settings, one.name).exists():  # started once and not stopped since
                stop(one, settings)
