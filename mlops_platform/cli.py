"""Local-mode stack control, called by run.sh: `python -m mlops_platform.cli <stack|all> <verb> [flags]`."""

from __future__ import annotations

import argparse
import sys

from mlops_platform import airflow_executor, local, local_stacks
from mlops_platform.errors import PlatformError
from mlops_platform.local_service import delete_home
from mlops_platform.services import STACKS
from mlops_platform.settings import SettingsError, get_settings

VERBS = ("up", "down", "restart", "status", "logs")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run.sh", description="Local-mode stack control.")
    parser.add_argument("stack", choices=[*STACKS, "all"])
    parser.add_argument("verb", choices=VERBS)
    parser.add_argument("--volumes", action="store_true", help="with down: also delete the stack's data")
    parser.add_argument("--follow", "-f", action="store_true", help="with logs: keep following")
    parser.add_argument("--workers", type=int, help="with airflow up: CeleryExecutor with N workers, remembered "
                        "for this platform; 0 returns to AIRFLOW_EXECUTOR (mlops_platform.airflow_executor)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stacks = list(STACKS) if args.stack == "all" else [args.stack]
    try:
        if args.workers is not None and (args.stack not in ("airflow", "all") or args.verb not in ("up", "restart")):
            raise PlatformError("--workers scales Airflow's Celery workers: use it with `airflow up` or `all up`")
        settings = airflow_executor.choose(settings, args.workers)
        if args.verb in ("up", "restart") and "airflow" in stacks:
            airflow_executor.apply_change(settings)
        if args.verb in ("down", "restart"):
            for stack in reversed(stacks):
                local_stacks.down(stack, settings, volumes=args.volumes and args.verb == "down")
            if args.stack == "all":
                leftover = local.running_services(settings)
                if leftover:
                    raise PlatformError(f"still running after down: {', '.join(leftover)}")
                if args.volumes:
                    delete_home(settings)
        if args.verb in ("up", "restart"):
            for stack in stacks:
                local_stacks.up(stack, settings, asked_alone=args.stack != "all")
            local_stacks.print_status(stacks, settings)
        if args.verb == "status":
            return 0 if local_stacks.print_status(stacks, settings) else 1
        if args.verb == "logs":
            local_stacks.logs(stacks, settings, follow=args.follow)
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
