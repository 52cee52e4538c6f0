"""Entry point of our Python services: `python -m mlops_platform.exec <service>`.

docker-compose.yml uses it as the command of each container and local mode spawns it as a process,
so both modes run the same command with the same configuration. It replaces itself with the real
server (exec), so signals reach the server directly.
"""

from __future__ import annotations

import os
import sys

from mlops_platform.airflow_config import worker_refusal
from mlops_platform.services import BY_NAME, merged_env, python_command, write_airflow_passwords
from mlops_platform.settings import get_settings


def main(argv: list[str]) -> int:
    names = sorted(name for name, svc in BY_NAME.items() if svc.launch == "python" and not svc.docker_only)
    if len(argv) != 1 or argv[0] not in names:
        print(f"usage: python -m mlops_platform.exec <{'|'.join(names)}>", file=sys.stderr)
        return 2
    name = argv[0]
    settings = get_settings()
    if name in ("airflow-init", "airflow-api-server"):
        write_airflow_passwords(settings)
    refusal = worker_refusal(settings) if name == "airflow-worker" else ""
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    command = python_command(name, settings)
    sys.stdout.flush()
    os.execve(command.argv[0], command.argv, merged_env(command.env))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
