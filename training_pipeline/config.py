"""A training run's configuration: declared once, with each option's help, type and bounds in its field.

The CLI flags (training_pipeline/cli.py), the DAG's Params (airflow/dags/training.py) and the params
logged to MLflow are generated from the fields of TrainingConfig. Overrides (DAG params or CLI flags)
are checked before data is read or an MLflow run is opened, and every problem is reported at once,
each saying what was expected, what was found and what to do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from feast_repo.features import FEATURE_SERVICE

MODES = ("development", "production")
RETRIEVALS = ("fast", "feast")
DEVELOPMENT_SEED = 42


class ConfigError(ValueError):
    """The run configuration is invalid; the message lists every problem found."""


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a number: its check's message and its JSON-schema keywords come from here."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # `>` instead of `>=`
    high_open: bool = False  # `<` instead of `<=`
    why: str = ""  # what the bound means, said in the error

    def problem(self, name: str, value: float) -> str | None:
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if not (below or above):
            return None
        return f"{name} must be {self.describe()}{f' ({self.why})' if self.why else ''}, got {value}"

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if not (self.low_open or self.high_open):
            return f"between {self.low} and {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def schema(self) -> dict[str, float]:
        keywords = {}
        if self.low is not None:
            keywords["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            keywords["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return keywords


def option(default: Any = dataclasses.MISSING, help: str = "", *, bounds: Bounds | None = None,
           choices: tuple[str, ...] = (), not_empty: bool = False, cli: bool = True, dag_param: bool = True,
           logged: bool = True) -> Any:
    """A configuration field: its default and everything the CLI, the DAG and MLflow derive from it.

    cli: a `--flag` of `python -m training_pipeline`; dag_param: a Param of the `training` DAG (any
    field can still be passed in --conf); logged: an MLflow param of the parent run.
    """
    metadata = {"help": help, "bounds": bounds, "choices": choices, "not_empty": not_empty, "cli": cli,
                "dag_param": dag_param, "logged": logged}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainingConfig:
    tracking_uri: str = option(help="MLflow server (default: from the platform settings)", dag_param=False,
                               logged=False)
    experiment: str = option("driver_trip_completion", "MLflow experiment", not_empty=True, dag_param=False,
                             logged=False)
    model_name: str = option("driver_trip_completion", "registered model", not_empty=True)
    feature_service: str = option(FEATURE_SERVICE, "Feast feature service", not_empty=True,
                                  dag_param=False)
    features: tuple[str, ...] = option((), "comma-separated subset of the feature service (default: all of it)")
    alpha: float = option(0.01, "ElasticNet penalty strength", bounds=Bounds(0, why="the ElasticNet penalty strength"))
    l1_ratio: float = option(0.5, "0 = ridge .. 1 = lasso", bounds=Bounds(0, 1, why="0 = ridge, 1 = lasso"))
    folds: int = option(5, "cross-validation folds, >= 2", bounds=Bounds(2, why="one part to train on, one to test"))
    # A constant prediction scores the label's standard deviation (about 0.47 on the generated data); a
    # useful model scores about 0.44.
    rmse_threshold: float = option(0.46, "register only below this mean CV RMSE", bounds=Bounds(0, low_open=True))
    promotion_margin: float = option(0.002, "holdout ROC AUC gain needed to replace the champion",
                                     bounds=Bounds(0, why="ROC AUC points"))
    # A champion needing a feature the feature service no longer serves cannot be compared (nor served).
    replace_unservable_champion: bool = option(
        False, "promote without a comparison when the champion needs features the service no longer serves "
               "(default: skip the comparison and keep the champion)", logged=False)
    holdout_share: float = option(0.2, "most recent share of labels, by time, kept out of CV and the final fit "
                                       "for the comparison", bounds=Bounds(0, 0.5, low_open=True))
    label_start: datetime | None = option(None, "first label time, ISO (default: label_end minus label_days)")
    label_end: datetime | None = option(None, "label times before this, ISO (default: when the run starts)")
    label_days: int = option(30, "window length without label_start", bounds=Bounds(1), logged=False)
    min_rows: int = option(1000, "fewest labels to train on", bounds=Bounds(1))
    # Labels whose driver had no stats within the feature view's TTL are dropped; more than this share of
    # them means the offline store is missing data, and the run fails.
    max_unmatched_share: float = option(0.05, "most labels allowed without features",
                                        bounds=Bounds(0, 1, high_open=True), dag_param=False)
    mode: str = option("development", "development: seed 42; production: a seed from the clock", choices=MODES)
    # "fast": the point-in-time join in one PostgreSQL query, checked against Feast on a sample;
    # "feast": Feast's get_historical_features for every label (minutes for a million labels).
    retrieval: str = option("fast", "point-in-time join: fast (one PostgreSQL query) or feast", choices=RETRIEVALS)
    feast_check_rows: int = option(500, "labels of a fast retrieval checked against Feast", bounds=Bounds(0),
                                   cli=False, dag_param=False, logged=False)

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The label window [start, end) in UTC."""
        end = self.label_end or _utc(now or datetime.now(UTC))
        start = self.label_start or end - timedelta(days=self.label_days)
        return start, end

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for XCom and MLflow params); from_dict reverses it."""
        values = dataclasses.asdict(self)
        values["features"] = list(self.features)
        for key in ("label_start", "label_end"):
            values[key] = values[key].isoformat() if values[key] else None
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingConfig:
        return build_config(values, values["tracking_uri"])

    def logged_params(self, **resolved: Any) -> dict[str, Any]:
        """The MLflow params of a run: every logged option, with the values the run resolved in their place
        (the label window, the features) and what the run adds (seed, commit)."""
        return {**{f.name: getattr(self, f.name) for f in options() if f.metadata["logged"]}, **resolved}


OVERRIDABLE = tuple(f.name for f in dataclasses.fields(TrainingConfig))
DEFAULTS = TrainingConfig(tracking_uri="")


def options() -> Iterator[dataclasses.Field]:
    return iter(dataclasses.fields(TrainingConfig))


def kind(field: dataclasses.Field) -> str:
    """How an option is read and shown: flag, integer, number, names, timestamp, choice or text."""
    default = getattr(DEFAULTS, field.name)
    if field.metadata["choices"]:
        return "choice"
    if isinstance(default, bool):  # before int: a bool is an int
        return "flag"
    if isinstance(default, int):
        return "integer"
    if isinstance(default, float):
        return "number"
    if isinstance(default, tuple):
        return "names"
    return "timestamp" if default is None else "text"


def help_text(field: dataclasses.Field) -> str:
    """The option's help, with its default unless the help already says what the default is."""
    text, default = field.metadata["help"], getattr(DEFAULTS, field.name)
    return text if "default" in text or default in (None, "") else f"{text} (default {default})"


SCHEMA_TYPES = {"flag": "boolean", "integer": "integer", "number": "number", "names": "array",
                "timestamp": ["null", "string"], "text": "string"}


def param_schemas() -> dict[str, dict[str, Any]]:
    """name -> the JSON schema of the DAG's Param (default, type or enum, bounds, description)."""
    schemas = {}
    for field in options():
        if not field.metadata["dag_param"]:
            continue
        kind_of = kind(field)
        default = getattr(DEFAULTS, field.name)
        schema: dict[str, Any] = {"default": list(default) if kind_of == "names" else default,
                                  "description": help_text(field)}
        if kind_of == "choice":
            schema["enum"] = list(field.metadata["choices"])
        else:
            schema["type"] = SCHEMA_TYPES[kind_of]
        schemas[field.name] = {**schema, **(field.metadata["bounds"].schema() if field.metadata["bounds"] else {})}
    return schemas


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _number(name: str, raw: Any, problems: list[str], kind: type = float):
    if isinstance(raw, bool):
        problems.append(f"{name} must be a number, got {raw!r}")
        return None
    try:
        value = kind(raw)
        if kind is int and isinstance(raw, float) and raw != int(raw):
            raise ValueError
    except (TypeError, ValueError):
        problems.append(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}")
        return None
    if kind is float and not math.isfinite(value):
        problems.append(f"{name} must be a finite number, got {raw!r}")
        return None
    return value


def _flag(name: str, raw: Any, problems: list[str]) -> bool | None:
    """A boolean from a DAG param (a bool) or from text ("true"/"false", "1"/"0", "yes"/"no")."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    problems.append(f"{name} must be true or false, got {raw!r}")
    return None


def _timestamp(name: str, raw: Any, problems: list[str]) -> datetime | None:
    if raw in (None, ""):
        return None
    if isinstance(raw, datetime):
        return _utc(raw)
    try:
        return _utc(datetime.fromisoformat(str(raw).replace("Z", "+00:00")))
    except ValueError:
        problems.append(f"{name} must be an ISO timestamp like 2026-11-01T00:00:00+00:00, got {raw!r}")
        return None


def _features(name: str, raw: Any, problems: list[str]) -> tuple[str, ...]:
    if raw in (None, ""):
        return ()
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list | tuple) or not all(isinstance(f, str) for f in raw):
        problems.append(f"{name} must be a list of feature names, got {raw!r}")
        return ()
    names = tuple(f.strip() for f in raw if f.strip())
    if len(set(names)) != len(names):
        problems.append(f"{name} must not repeat a name, got {list(names)}")
    return names


PARSERS = {
    "flag": _flag,
    "integer": lambda name, raw, problems: _number(name, raw, problems, int),
    "number": _number,
    "names": _features,
    "timestamp": _timestamp,
    "choice": lambda name, raw, problems: str(raw),
    "text": lambda name, raw, problems: str(raw),
}


def build_config(overrides: Mapping[str, Any], tracking_uri: str) -> TrainingConfig:
    """Defaults updated with `overrides`; raises ConfigError listing every problem."""
    problems: list[str] = []
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        problems.append(f"unknown configuration keys {unknown}; known keys: {', '.join(OVERRIDABLE)}")
    values: dict[str, Any] = {"tracking_uri": overrides.get("tracking_uri") or tracking_uri}
    for field in options():
        key = field.name
        if key not in overrides or key == "tracking_uri" or overrides[key] is None:
            continue
        values[key] = PARSERS[kind(field)](key, overrides[key], problems)
    values = {k: v for k, v in values.items() if v is not None}
    config = dataclasses.replace(DEFAULTS, **values)
    problems += check(config)
    if problems:
        raise ConfigError("invalid training configuration:\n  - " + "\n  - ".join(problems))
    return config


def check(config: TrainingConfig) -> list[str]:
    """Every range problem of a configuration, as messages (empty when valid)."""
    problems = []
    for field in options():
        value, bounds, choices = getattr(config, field.name), field.metadata["bounds"], field.metadata["choices"]
        if bounds and (problem := bounds.problem(field.name, value)):
            problems.append(problem)
        if choices and value not in choices:
            problems.append(f"{field.name} must be one of {', '.join(choices)}, got {value!r}")
        if field.metadata["not_empty"] and not value.strip():
            problems.append(f"{field.name} must not be empty")
    if config.label_start and config.label_end and config.label_start >= config.label_end:
        problems.append(f"label_start must be before label_end, got {config.label_start.isoformat()} >= "
                        f"{config.label_end.isoformat()}")
    if not config.tracking_uri.startswith(("http://", "https://")):
        problems.append(f"tracking_uri must be an http(s) URL of the MLflow server, got {config.tracking_uri!r}")
    return problems


def check_features(requested: tuple[str, ...], served: list[str], service: str) -> list[str]:
    """The features to train on, in the service's order; raises ConfigError on an unknown name."""
    if not requested:
        return list(served)
    unknown = [name for name in requested if name not in served]
    if unknown:
        raise ConfigError(
            f"unknown feature(s) {unknown}: feature service {service!r} serves {served}; "
            "pick from those, or add the feature to feast_repo/features.py and apply the repo")
    return [name for name in served if name in requested]


def seed_for(mode: str, now: datetime | None = None) -> int:
    """42 in development (repeatable runs); the start time's seconds in production (fresh each run)."""
    if mode == "development":
        return DEVELOPMENT_SEED
    return int((now or datetime.now(UTC)).timestamp()) % (2**31 - 1)
