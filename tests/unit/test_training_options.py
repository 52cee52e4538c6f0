"""The training configuration is declared once (TrainingConfig's fields) and the CLI flags, the DAG's Params
and the params logged to MLflow are derived from it: same names as before, same types, same bounds."""

from __future__ import annotations

import dataclasses

import pytest

from training_pipeline.cli import parser
from training_pipeline.config import DEFAULTS, ConfigError, build_config, options, param_schemas

URI = "http://127.0.0.1:5000"
# The names users, scripts and tests already rely on.
CLI_FLAGS = {"--alpha", "--l1-ratio", "--folds", "--mode", "--rmse-threshold", "--promotion-margin",
             "--replace-unservable-champion", "--holdout-share", "--label-start", "--label-end", "--label-days",
             "--min-rows", "--max-unmatched-share", "--features", "--feature-service", "--model-name", "--experiment",
             "--tracking-uri", "--retrieval", "--run-name"}
DAG_PARAMS = {"alpha", "l1_ratio", "folds", "mode", "rmse_threshold", "promotion_margin", "replace_unservable_champion",
              "holdout_share", "label_start", "label_end", "label_days", "min_rows", "features", "model_name",
              "retrieval"}
LOGGED = {"alpha", "l1_ratio", "folds", "seed", "mode", "rmse_threshold", "promotion_margin", "decision_metric",
          "holdout_share", "label_start", "label_end", "min_rows", "max_unmatched_share", "feature_service", "features",
          "retrieval", "model_name", "git_commit"}
BOUNDED = [field for field in options() if field.metadata["bounds"]]


def test_the_cli_has_the_same_flags_and_they_reach_the_configuration():
    flags = {flag for action in parser()._actions for flag in action.option_strings} - {"-h", "--help"}
    assert flags == CLI_FLAGS
    args = vars(parser().parse_args(["--folds", "3", "--alpha", "0.1", "--replace-unservable-champion",
                                     "--features", "conv_rate,acc_rate", "--mode", "production"]))
    assert (args["folds"], args["alpha"], args["replace_unservable_champion"]) == (3, 0.1, True)
    config = build_config({k: v for k, v in args.items() if v is not None and k != "run_name"}, URI)
    assert (config.folds, config.mode, config.features) == (3, "production", ("conv_rate", "acc_rate"))
    with pytest.raises(SystemExit):  # choices come from the field: refused by argparse already
        parser().parse_args(["--retrieval", "slow"])


def test_the_dag_has_the_same_params_each_typed_described_and_defaulted_from_the_field(dagbag):
    dag = dagbag.dags["training"]
    assert set(dag.params) == DAG_PARAMS
    for name in DAG_PARAMS:
        param = dag.params.get_param(name)
        assert param.description, f"{name} has no description"
        assert "type" in param.schema or "enum" in param.schema, f"{name} has no type"
        default = getattr(DEFAULTS, name)
        assert param.value == (list(default) if isinstance(default, tuple) else default)


@pytest.mark.parametrize("field", BOUNDED, ids=lambda f: f.name)
def test_the_dag_param_and_the_check_refuse_the_same_values(field: dataclasses.Field):
    """One declaration of the bounds: what the Param refuses at trigger time, the check refuses too."""
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    bounds = field.metadata["bounds"]
    step = 1 if isinstance(getattr(DEFAULTS, field.name), int) else 0.001
    outside = [bounds.low - step] + ([bounds.high + step] if bounds.high is not None else [])
    outside += [bounds.low] if bounds.low_open else []
    for value in outside:
        with pytest.raises(ConfigError, match=f"{field.name} must be"):
            build_config({field.name: value}, URI)
        if field.name in param_schemas():
            with pytest.raises(ParamValidationError):
                Param(**param_schemas()[field.name]).resolve(value)
    inside = bounds.low if not bounds.low_open else bounds.low + step
    assert getattr(build_config({field.name: inside}, URI), field.name) == inside
    if field.name in param_schemas():
        assert Param(**param_schemas()[field.name]).resolve(inside) == inside


def test_the_logged_params_are_the_same_and_take_the_values_the_run_resolved():
    config = build_config({"alpha": 0.2, "features": "conv_rate"}, URI)
    logged = config.logged_params(seed=42, decision_metric="roc_auc", label_start="2022-01-01T00:00:00+00:00",
                                  label_end="2022-02-01T00:00:00+00:00", features=["conv_rate"], git_commit="abc")
    assert set(logged) == LOGGED
    assert logged["alpha"] == 0.2 and logged["label_start"] == "2022-01-01T00:00:00+00:00"
    assert logged["features"] == ["conv_rate"]


def test_every_option_is_declared_with_help():
    for field in options():
        assert field.metadata["help"], f"{field.name} has no help text"
