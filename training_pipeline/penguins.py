"""`python -m training_pipeline.penguins`: one penguin training run without Airflow, the DAG's steps in order.

    python -m training_pipeline.penguins --epochs 60 --folds 5 --mode development

Logs are JSON lines on stdout; the last line is the outcome, one JSON object. Exit status: 0 when the run
completed (whatever the promotion decision), 2 on a bad configuration or an unreachable service, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from training_pipeline.cli import ARGUMENT_TYPES, run_from_cli
from training_pipeline.penguin_config import help_text, kind, options


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
    return run_from_cli(parser(), argv, "training_pipeline.penguin_flow", service="penguin-training",
                        what="penguin training run")


if __name__ == "__main__":
    sys.exit(main())
