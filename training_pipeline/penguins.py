"""`python -m training_pipeline.penguins`: one penguin training run without Airflow, the DAG's steps in order.

    python -m training_pipeline.penguins --epochs 60 --folds 5 --mode development

Logs are JSON lines on stdout; the last line is the outcome, one JSON object. Exit status: 0 when the run
completed (whatever the promotion decision), 2 on a bad configuration or an unreachable service, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import UTC, datetime

from training_pipeline.penguin_config import help_text, kind, options

ARGUMENT_TYPES = {"integer": int, "number": float}


def parser() -> argparse.ArgumentParser:
    """One flag per option of PenguinConfig (help, type and choices from the field), and --run-name."""
    p = argparse.ArgumentParser(prog="python -m training_pipeline.penguins", description=__doc__.split("\n\n")[0])
    for field in options():
        if field.metadata["cli"]:
            p.add_argument("--" + field.name.replace("_", "-"), type=ARGUMENT_TYPES.get(kind(field)),
                           choices=field.metadata["choices"] or None, help=help_text(field))
    p.add_argument("--run-name", help="parent MLflow run name (default: cli__<UTC time>__<random>)")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlops_platform.logs import configure_logging
    from mlops_platform.model_registry import TrackingUnavailable
    from mlops_platform.settings import get_settings
    from training_pipeline import penguin_flow
    from training_pipeline.config import ConfigError

    args = vars(parser().parse_args(argv))
    run_name = args.pop("run_name") or f"cli__{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z__{uuid.uuid4().hex[:6]}"
    overrides = {key: value for key, value in args.items() if value is not None}
    log = configure_logging("penguin-training", get_settings().log_level)
    try:
        outcome = penguin_flow.run(overrides, run_name, source="cli")
    except (ConfigError, TrackingUnavailable) as error:
        log.error("penguin training run refused", extra={"run_name": run_name, "error": str(error)})
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        log.exception("penguin training run failed", extra={"run_name": run_name})
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(outcome, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
