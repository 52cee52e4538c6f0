"""A penguin training run's configuration: each option declared once, with its help and bounds.

The same Bounds and option() as the driver's TrainingConfig (config.py): the CLI flags
(`python -m training_pipeline.penguins`), the Params of the `penguin_training` DAG and the params logged
to MLflow come from these fields, and overrides are checked before any data is read, every problem at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from feast_repo import penguin_features as contract
from training_pipeline.config import MODES, PARSERS, SCHEMA_TYPES, Bounds, ConfigError, option


@dataclass(frozen=True)
class PenguinConfig:
    tracking_uri: str = option(help="MLflow server (default: from the platform settings)", dag_param=False,
                               logged=False)
    experiment: str = option(contract.MODEL_NAME, "MLflow experiment", not_empty=True, dag_param=False,
                             logged=False)
    model_name: str = option(contract.MODEL_NAME, "registered model", not_empty=True)
    feature_service: str = option(contract.FEATURE_SERVICE, "Feast feature service", not_empty=True,
                                  dag_param=False)
    # The course's network: 60 epochs of SGD at 0.01 in batches of 16 separate the three species of the
    # ~270 training rows (a holdout accuracy of ~0.95 to 1.0 against a majority baseline of ~0.44).
    epochs: int = option(60, "passes over the training rows", bounds=Bounds(1, 2000))
    batch_size: int = option(16, "rows per gradient step", bounds=Bounds(1, 4096))
    learning_rate: float = option(0.01, "SGD learning rate", bounds=Bounds(0, 1, low_open=True))
    folds: int = option(5, "stratified cross-validation folds", bounds=Bounds(2, 20, why="one part to train on, "
                                                                                          "one to test"))
    holdout_share: float = option(0.2, "share of labelled penguins kept out of CV and the final fit, stratified by "
                                       "species, for the comparison with the champion",
                                  bounds=Bounds(0, 0.5, low_open=True))
    min_rows: int = option(60, "fewest labelled penguins to train on", bounds=Bounds(10))
    mode: str = option("development", "development: seed 42; production: a seed from the clock", choices=MODES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PenguinConfig:
        return build_config(values, values["tracking_uri"])

    def logged_params(self, **resolved: Any) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in options() if f.metadata["logged"]}, **resolved}


DEFAULTS = PenguinConfig(tracking_uri="")
OVERRIDABLE = tuple(f.name for f in dataclasses.fields(PenguinConfig))


def options() -> Iterator[dataclasses.Field]:
    return iter(dataclasses.fields(PenguinConfig))


def kind(field: dataclasses.Field) -> str:
    """choice, integer, number or text: how an option is parsed, shown and typed as a Param."""
    default = getattr(DEFAULTS, field.name)
    if field.metadata["choices"]:
        return "choice"
    if isinstance(default, int):
        return "integer"
    return "number" if isinstance(default, float) else "text"


def help_text(field: dataclasses.Field) -> str:
    text, default = field.metadata["help"], getattr(DEFAULTS, field.name)
    return text if "default" in text or default in (None, "") else f"{text} (default {default})"


def param_schemas() -> dict[str, dict[str, Any]]:
    """name -> the JSON schema of the DAG's Param (default, type or enum, bounds, description)."""
    schemas = {}
    for field in options():
        if not field.metadata["dag_param"]:
            continue
        schema: dict[str, Any] = {"default": getattr(DEFAULTS, field.name), "description": help_text(field)}
        if kind(field) == "choice":
            schema["enum"] = list(field.metadata["choices"])
        else:
            schema["type"] = SCHEMA_TYPES[kind(field)]
        schemas[field.name] = {**schema, **(field.metadata["bounds"].schema() if field.metadata["bounds"] else {})}
    return schemas


def build_config(overrides: Mapping[str, Any], tracking_uri: str) -> PenguinConfig:
    """Defaults updated with `overrides`; raises ConfigError listing every problem."""
    problems: list[str] = []
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        problems.append(f"unknown configuration keys {unknown}; known keys: {', '.join(OVERRIDABLE)}")
    values: dict[str, Any] = {"tracking_uri": overrides.get("tracking_uri") or tracking_uri}
    for field in options():
        if field.name == "tracking_uri" or overrides.get(field.name) is None:
            continue
        values[field.name] = PARSERS[kind(field)](field.name, overrides[field.name], problems)
    config = dataclasses.replace(DEFAULTS, **{k: v for k, v in values.items() if v is not None})
    for field in options():
        value, bounds, choices = getattr(config, field.name), field.metadata["bounds"], field.metadata["choices"]
        if bounds and (problem := bounds.problem(field.name, value)):
            problems.append(problem)
        if choices and value not in choices:
            problems.append(f"{field.name} must be one of {', '.join(choices)}, got {value!r}")
        if field.metadata["not_empty"] and not str(value).strip():
            problems.append(f"{field.name} must not be empty")
    if not config.tracking_uri.startswith(("http://", "https://")):
        problems.append(f"tracking_uri must be an http(s) URL of the MLflow server, got {config.tracking_uri!r}")
    if problems:
        raise ConfigError("invalid penguin training configuration:\n  - " + "\n  - ".join(problems))
    return config
