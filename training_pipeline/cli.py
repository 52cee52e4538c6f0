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

from training_pipeline.config import MODES, RETRIEVALS, TrainingConfig


def parser() -> argparse.ArgumentParser:
    defaults = TrainingConfig(tracking_uri="")
    p = argparse.ArgumentParser(prog="python -m training_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--alpha", type=float, help=f"ElasticNet penalty strength (default {defaults.alpha})")
    p.add_argument("--l1-ratio", type=float, help=f"0 = ridge .. 1 = lasso (default {defaults.l1_ratio})")
    p.add_argument("--folds", type=int, help=f"cross-validation folds, >= 2 (default {defaults.folds})")
    p.add_argument("--mode", choices=MODES, help="development: seed 42; production: a seed from the clock")
    p.add_argument("--rmse-threshold", type=float,
                   help=f"register only below this mean CV RMSE (default {defaults.rmse_threshold})")
    p.add_argument("--promotion-margin", type=float,
                   help=f"holdout ROC AUC gain needed to replace the champion (default {defaults.promotion_margin})")
    p.add_argument("--replace-unservable-champion", action="store_const", const=True,
                   help="promote without a comparison when the champion needs features the service no longer serves "
                        "(default: skip the comparison and keep the champion)")
    p.add_argument("--holdout-share", type=float,
                   help=f"most recent share of labels kept for the comparison (default {defaults.holdout_share})")
    p.add_argument("--label-start", help="first label time, ISO (default: label-end minus --label-days)")
    p.add_argument("--label-end", help="label times before this, ISO (default: now)")
    p.add_argument("--label-days", type=int,
                   help=f"window length without --label-start (default {defaults.label_days})")
    p.add_argument("--min-rows", type=int, help=f"fewest labels to train on (default {defaults.min_rows})")
    p.add_argument("--max-unmatched-share", type=float,
                   help=f"most labels allowed without features (default {defaults.max_unmatched_share})")
    p.add_argument("--features", help="comma-separated subset of the feature service (default: all of it)")
    p.add_argument("--feature-service", help=f"Feast feature service (default {defaults.feature_service})")
    p.add_argument("--model-name", help=f"registered model (default {defaults.model_name})")
    p.add_argument("--experiment", help=f"MLflow experiment (default {defaults.experiment})")
    p.add_argument("--tracking-uri", help="MLflow server (default: from the platform settings)")
    p.add_argument("--retrieval", choices=RETRIEVALS, help="point-in-time join: fast (default) or feast")
    p.add_argument("--run-name", help="parent MLflow run name (default: cli__<UTC time>__<random>)")
    return p


def main(argv: list[str] | None = None) -> int:
    # stdout carries the JSON outcome only, and MLflow's own messages go through our JSON logs.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlops_platform.logs import configure_logging
    from mlops_platform.settings import get_settings
    from training_pipeline import flow
    from training_pipeline.config import ConfigError
    from training_pipeline.tracking import TrackingUnavailable

    args = vars(parser().parse_args(argv))
    run_name = args.pop("run_name") or f"cli__{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z__{uuid.uuid4().hex[:6]}"
    overrides = {key: value for key, value in args.items() if value is not None}
    log = configure_logging("training-pipeline", get_settings().log_level)
    try:
        outcome = flow.run(overrides, run_name, source="cli")
    except (ConfigError, TrackingUnavailable) as error:
        log.error("training run refused", extra={"run_name": run_name, "error": str(error)})
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        log.exception("training run failed", extra={"run_name": run_name})
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(outcome, default=str))
    return 0
