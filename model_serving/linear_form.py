"""An exact numpy form of the platform's model pipelines: imputer -> scaler -> linear regressor.

sklearn checks its input on every call (type, shape, feature names, fitted state): for a 10x3 matrix
that costs 0.3-0.8 ms on this machine, about half of a /predict request's CPU, while the arithmetic
takes microseconds. For a pipeline made of exactly these steps, `exact_form` returns a function doing
the same operations, in the same order, on the same memory layout, with the pipeline's own fitted
arrays, so its results are identical to `Pipeline.predict` to the last bit. It proves that on probe
matrices before it is used, and returns None for any other pipeline (the caller then uses
`Pipeline.predict`). Inputs holding NaN are the imputer's business and always go to the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

PROBE_SIZES = (1, 2, 10, 33, 500)


def _steps(pipeline: Any) -> list[Any] | None:
    steps = getattr(pipeline, "steps", None)
    if not isinstance(steps, list):
        return None
    return [step for _, step in steps]


def _plain_imputer(step: Any) -> bool:
    from sklearn.impute import SimpleImputer

    missing = getattr(step, "missing_values", None)
    return (type(step) is SimpleImputer and not step.add_indicator and isinstance(missing, float)
            and math.isnan(missing) and not np.isnan(np.asarray(step.statistics_, dtype=np.float64)).any())


def _dense_scaler(step: Any) -> bool:
    from sklearn.preprocessing import StandardScaler

    return type(step) is StandardScaler


def _linear_regressor(step: Any) -> bool:
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge

    return (type(step) in (ElasticNet, Lasso, LinearRegression, Ridge) and np.ndim(step.coef_) == 1
            and np.ndim(step.intercept_) == 0)


def exact_form(pipeline: Any, n_features: int, seed: int = 0) -> Callable[[np.ndarray], np.ndarray] | None:
    """The pipeline's predict as numpy operations, or None when the pipeline is not of this shape or
    the form does not reproduce `pipeline.predict` bit for bit on the probes."""
    steps = _steps(pipeline)
    if not steps or len(steps) != 3:
        return None
    imputer, scaler, regressor = steps
    if not (_plain_imputer(imputer) and _dense_scaler(scaler) and _linear_regressor(regressor)):
        return None
    mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
    scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None
    coef = np.asarray(regressor.coef_, dtype=np.float64)
    intercept = regressor.intercept_
    if coef.shape != (n_features,):
        return None

    def predict(matrix: np.ndarray) -> np.ndarray:
        # StandardScaler.transform on its own copy: X -= mean_; X /= scale_. Then X @ coef_ + intercept_.
        x = matrix.copy(order="K")
        if mean is not None:
            x -= mean
        if scale is not None:
            x /= scale
        return x @ coef + intercept

    rng = np.random.default_rng(seed)
    centre = mean if mean is not None else np.zeros(n_features)
    spread = scale if scale is not None else np.ones(n_features)
    for size in PROBE_SIZES:
        probe = np.asfortranarray(centre + spread * rng.normal(0.0, 2.0, (size, n_features)))
        if not np.array_equal(predict(probe), np.asarray(pipeline.predict(probe), dtype=np.float64)):
            return None
    return predict
