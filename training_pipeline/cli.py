"""`python -m training_pipeline`: one training run without Airflow, through the same steps as the DAG.

    python -m training_pipeline --alpha 0.01 --l1-ratio 0.5 --folds 5 --mode development
    python -m training_pipeline --label-start 2026-10-01 --label-end 2026-11-01 --model-name my_experiment

Logs are JSON lines on stdout; the last line is the outcome, one JSON object. Exit status: 0 when the run completed
(whatever the promotion decision), 2 on a bad configuration or an unreachable service, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import UTC, datetime

from training_pipeline.config import help_text, kind, options

ARGUMENT_TYPES = {"integer": int, "number": float}


def parser() -> argparse.ArgumentParser:
    """One flag per option of TrainingConfig (its help, type and choices come from the field), and --run-name."""
    p = argparse.ArgumentParser(prog="python -m training_pipeline", description=__doc__.split("\n\n")[0])
    for field in options():
        if not field.metadata["cli"]:
            continue
        flag, kind_of = "--" + field.name.replace("_", "-"), kind(field)
        if kind_of == "flag":
            p.add_argument(flag, action="store_const", const=True, help=help_text(field))
        else:
            p.add_argument(flag, type=ARGUMENT_TYPES.get(kind_of), choices=field.metadata["choices"] or None,
                           help=help_text(field))
    p.add_argument("--run-name", help="parent MLflow run name (default: cli__<UTC time>__<random>)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_from_cli(parser(), argv, "training_pipeline.flow", service="training-pipeline", what="training run")


def run_from_cli(arg_parser: argparse.ArgumentParser, argv: list[str] | None, flow_module: str, *, service: str,
                 what: str) -> int:
    """Parse the flags, run `<flow_module>.run(overrides, run_name, source="cli")`, print its outcome as JSON.

    Shared by every project's training CLI: exit 2 on a bad configuration or an unreachable MLflow, 1 on any
    other failure, 0 when the run completed.
    """
    # stdout carries the JSON outcome only, and MLflow's own messages go through our JSON logs.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import importlib

    from mlops_platform.logs import configure_logging
    from mlops_platform.model_registry import TrackingUnavailable
    from mlops_platform.settings import get_settings
    from training_pipeline.config import ConfigError

    args = vars(arg_parser.parse_args(argv))
    run_name = args.pop("run_name") or f"cli__{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z__{uuid.uuid4().hex[:6]}"
    overrides = {key: value for key, value in args.items() if value is not None}
    log = configure_logging(service, get_settings().log_level)
    try:
        outcome = importlib.import_module(flow_module).run(overrides, run_name, source="cli")
    except (ConfigError, TrackingUnavailable) as error:
        log.error(f"{what} refused", extra={"run_name": run_name, "error": str(error)})
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        log.exception(f"{what} failed", extra={"run_name": run_name})
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(outcome, default=str))
    return 0
