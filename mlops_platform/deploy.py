"""`bash run.sh deploy` in local mode: ship the checked-out code to the running platform.

It starts what it deploys to when that is not running (`up` is idempotent), applies the feature repo
if it changed, has Airflow re-read the DAG files now rather than at its next scan, reloads
Prometheus's rules and targets, and rolls the serving API and the prediction logger onto the new
code (stop, start, wait healthy).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

from mlops_platform import airflow_executor
from mlops_platform.errors import PlatformError
from mlops_platform.feast_apply import apply_if_changed
from mlops_platform.local import say
from mlops_platform.local_prepare import prepare_prometheus
from mlops_platform.local_service import stop
from mlops_platform.local_stacks import up
from mlops_platform.services import BY_NAME, airflow_env, merged_env
from mlops_platform.settings import get_settings


def main() -> int:
    settings = get_settings()
    try:
        settings = airflow_executor.choose(settings, None)  # the executor and workers this platform runs with
        for stack in ("feast", "airflow", "monitoring"):
            up(stack, settings, asked_alone=False)
        say("[deploy] feature repo")
        apply_if_changed(settings)
        say("[deploy] DAGs: reserializing")
        subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], check=True,
                       env=merged_env(airflow_env(settings)), stdout=subprocess.DEVNULL)
        say("[deploy] Prometheus: rules and targets")
        prepare_prometheus(settings)
        urllib.request.urlopen(urllib.request.Request(f"{settings.prometheus_url}/-/reload", method="POST"),
                               timeout=10).close()
        say("[deploy] serving")
        for name in ("prediction-logger", "serving"):
            stop(BY_NAME[name], settings)
        up("serving", settings, asked_alone=True)
    except (PlatformError, subprocess.CalledProcessError, urllib.error.URLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
