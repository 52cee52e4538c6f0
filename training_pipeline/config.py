"""A training run's configuration: defaults, overrides (DAG params or CLI flags) and validation.

Everything is checked before data is read or an MLflow run is opened, and every problem is reported
at once, each saying what was expected, what was found and what to do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MODES = ("development", "production")
RETRIEVALS = ("fast", "feast")
DEVELOPMENT_SEED = 42


class ConfigError(ValueError):
    """The run configuration is invalid; the message lists every problem found."""


@dataclass(frozen=True)
class TrainingConfig:
    tracking_uri: str
    experiment: str = "driver_trip_completion"
    model_name: str = "driver_trip_completion"
    feature_service: str = "driver_trip_completion"
    # Empty: every feature of the service, in the service's order.
    features: tuple[str, ...] = ()
    alpha: float = 0.01
    l1_ratio: float = 0.5
    folds: int = 5
    # Register only when the mean CV RMSE is below this. A constant prediction scores the label's
    # standard deviation (about 0.47 on the generated data); a useful model scores about 0.44.
    rmse_threshold: float = 0.46
    # The challenger's holdout ROC AUC must beat the champion's by at least this much.
    promotion_margin: float = 0.002
    # A champion needing a feature the feature service no longer serves cannot be compared (nor served).
    # False: the comparison is skipped and the champion kept; True: the challenger replaces it.
    replace_unservable_champion: bool = False
    # The most recent share of labels, by time, kept out of CV and the final fit for the comparison.
    holdout_share: float = 0.2
    label_start: datetime | None = None
    label_end: datetime | None = None  # None: the moment the run starts
    label_days: int = 30  # window length when label_start is not given
    min_rows: int = 1000
    # Labels whose driver had no stats within the feature view's TTL are dropped; more than this
    # share of them means the offline store is missing data, and the run fails.
    max_unmatched_share: float = 0.05
    mode: str = "development"
    # "fast": the point-in-time join in one PostgreSQL query, checked against Feast on a sample;
    # "feast": Feast's get_historical_features for every label (minutes for a million labels).
    retrieval: str = "fast"
    feast_check_rows: int = 500

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


OVERRIDABLE = tuple(f.name for f in dataclasses.fields(TrainingConfig))


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


def _features(raw: Any, problems: list[str]) -> tuple[str, ...]:
    if raw in (None, ""):
        return ()
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list | tuple) or not all(isinstance(f, str) for f in raw):
        problems.append(f"features must be a list of feature names, got {raw!r}")
        return ()
    names = tuple(f.strip() for f in raw if f.strip())
    if len(set(names)) != len(names):
        problems.append(f"features must not repeat a name, got {list(names)}")
    return names


def build_config(overrides: Mapping[str, Any], tracking_uri: str) -> TrainingConfig:
    """Defaults updated with `overrides`; raises ConfigError listing every problem."""
    problems: list[str] = []
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        problems.append(f"unknown configuration keys {unknown}; known keys: {', '.join(OVERRIDABLE)}")
    values: dict[str, Any] = {"tracking_uri": overrides.get("tracking_uri") or tracking_uri}
    defaults = TrainingConfig(tracking_uri=tracking_uri)
    for key in OVERRIDABLE:
        if key not in overrides or key == "tracking_uri" or overrides[key] is None:
            continue
        raw = overrides[key]
        default = getattr(defaults, key)
        if key == "features":
            values[key] = _features(raw, problems)
        elif key in ("label_start", "label_end"):
            values[key] = _timestamp(key, raw, problems)
        elif isinstance(default, bool):  # before int: a bool is an int
            values[key] = _flag(key, raw, problems)
        elif isinstance(default, int):
            values[key] = _number(key, raw, problems, int)
        elif isinstance(default, float):
            values[key] = _number(key, raw, problems, float)
        else:
            values[key] = str(raw)
    values = {k: v for k, v in values.items() if v is not None}
    config = dataclasses.replace(defaults, **values)
    problems += check(config)
    if problems:
        raise ConfigError("invalid training configuration:\n  - " + "\n  - ".join(problems))
    return config


def check(config: TrainingConfig) -> list[str]:
    """Every range problem of a configuration, as messages (empty when valid)."""
    problems = []
    if config.folds < 2:
        problems.append(f"folds must be >= 2 (one part to train on, one to test), got {config.folds}")
    if config.alpha < 0:
        problems.append(f"alpha must be >= 0 (the ElasticNet penalty strength), got {config.alpha}")
    if not 0.0 <= config.l1_ratio <= 1.0:
        problems.append(f"l1_ratio must be between 0 and 1 (0 = ridge, 1 = lasso), got {config.l1_ratio}")
    if config.rmse_threshold <= 0:
        problems.append(f"rmse_threshold must be > 0, got {config.rmse_threshold}")
    if config.promotion_margin < 0:
        problems.append(f"promotion_margin must be >= 0 (ROC AUC points), got {config.promotion_margin}")
    if not 0.0 < config.holdout_share <= 0.5:
        problems.append(f"holdout_share must be in (0, 0.5], got {config.holdout_share}")
    if config.min_rows < 1:
        problems.append(f"min_rows must be >= 1, got {config.min_rows}")
    if not 0.0 <= config.max_unmatched_share < 1.0:
        problems.append(f"max_unmatched_share must be in [0, 1), got {config.max_unmatched_share}")
    if config.label_days < 1:
        problems.append(f"label_days must be >= 1, got {config.label_days}")
    if config.mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}, got {config.mode!r}")
    if config.retrieval not in RETRIEVALS:
        problems.append(f"retrieval must be one of {', '.join(RETRIEVALS)}, got {config.retrieval!r}")
    if config.feast_check_rows < 0:
        problems.append(f"feast_check_rows must be >= 0, got {config.feast_check_rows}")
    if config.label_start and config.label_end and config.label_start >= config.label_end:
        problems.append(f"label_start must be before label_end, got {config.label_start.isoformat()} >= "
                        f"{config.label_end.isoformat()}")
    if not config.tracking_uri.startswith(("http://", "https://")):
        problems.append(f"tracking_uri must be an http(s) URL of the MLflow server, got {config.tracking_uri!r}")
    for name in ("experiment", "model_name", "feature_service"):
        if not getattr(config, name).strip():
            problems.append(f"{name} must not be empty")
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
