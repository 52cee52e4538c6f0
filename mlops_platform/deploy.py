"""`bash run.sh deploy` in local mode: ship the checked-out code to the running platform.

Three steps, each a no-op where there is nothing to do: apply the feature repo if it changed,
have Airflow re-read the DAG files now rather than at its next scan, and roll the serving API and
the prediction logger onto the new code (stop, start, wait healthy).
"""

from __future__ import annotations

import subprocess
import sys

from mlops_platform import local
from mlops_platform.feast_apply import apply_if_changed
from mlops_platform.services import BY_NAME, airflow_env, merged_env
from mlops_platform.settings import get_settings


def main() -> int:
    settings = get_settings()
    try:
        if local.read_pid(settings, "postgres") is None:
            raise local.PlatformError("PostgreSQL is not running: `bash run.sh all up` first")
        local.say("[deploy] feature repo")
        apply_if_changed(settings)
        if local.read_pid(settings, "airflow-dag-processor") is not None:
            local.say("[deploy] DAGs: reserializing")
            subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], check=True,
                           env=merged_env(airflow_env(settings)), stdout=subprocess.DEVNULL)
        else:
            local.say("[deploy] DAGs: Airflow is not running; it reads them when it starts")
        local.say("[deploy] serving")
        for name in ("prediction-logger", "serving"):
            local.stop(BY_NAME[name], settings)
        local.up("serving", settings, asked_alone=True)
    except (local.PlatformError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
