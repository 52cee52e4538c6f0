"""A numpy form of the platform's Keras classifiers: Normalization -> Dense layers, as plain matrix products.

`keras.Model.predict` costs a few milliseconds a call on this machine (JAX dispatch, batching, a
progress callback), whatever the number of rows, while the arithmetic of a 9-10-8-3 network on ten rows
takes microseconds. For a Sequential-like model made only of a Normalization layer and Dense layers
with relu, linear or softmax activations, `dense_form` returns a function doing the same operations with
the model's own weights (in float64: within rounding of Keras's float32). It proves the form on probe
matrices against the model's own predict before it is used (MAX_DIFFERENCE), and returns None for any
other shape of model, in which case the caller scores with Keras.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

PROBE_SIZES = (1, 3, 17, 64)
MAX_DIFFERENCE = 1e-5  # a probability may differ from Keras's by this much at most
EPSILON = 1e-7  # keras.backend.epsilon(): the floor of a Normalization layer's standard deviation


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"relu": _relu, "softmax": _softmax,
                                                               "linear": lambda x: x}


def _layers(model: Any) -> list[Any] | None:
    """The model's layers in order (a model whose graph is not this chain fails the probes in `dense_form`)."""
    layers = [layer for layer in getattr(model, "layers", []) if type(layer).__name__ != "InputLayer"]
    return layers or None


def _step(layer: Any, width: int) -> tuple[Callable[[np.ndarray], np.ndarray], int] | None:
    """One layer as a numpy function of its input and its output width, or None when not of a known kind."""
    kind = type(layer).__name__
    if kind == "Normalization":
        if layer.invert or layer.axis not in ((-1,), [-1], -1):
            return None
        mean = np.asarray(layer.mean, dtype=np.float64).reshape(-1)
        std = np.maximum(np.sqrt(np.asarray(layer.variance, dtype=np.float64).reshape(-1)), EPSILON)
        if mean.shape != (width,) or std.shape != (width,):
            return None
        return (lambda x: (x - mean) / std), width
    if kind == "Dense":
        activation = getattr(layer.activation, "__name__", "")
        if activation not in ACTIVATIONS or getattr(layer, "lora_enabled", False):
            return None
        kernel = np.asarray(layer.kernel, dtype=np.float64)
        bias = np.asarray(layer.bias, dtype=np.float64) if layer.use_bias else np.zeros(kernel.shape[1])
        if kernel.ndim != 2 or kernel.shape[0] != width:
            return None
        act = ACTIVATIONS[activation]
        return (lambda x: act(x @ kernel + bias)), kernel.shape[1]
    return None


def dense_form(model: Any, n_features: int, seed: int = 0) -> Callable[[np.ndarray], np.ndarray] | None:
    """The model's predict as numpy operations, or None when the model is not of this shape or the form
    differs from `model.predict` by more than MAX_DIFFERENCE on random probes (drawn around the training
    rows' mean and spread when the model starts with a Normalization layer)."""
    layers = _layers(model)
    if layers is None:
        return None
    centre = spread = None
    if type(layers[0]).__name__ == "Normalization" and layers[0].mean is not None:
        centre = np.asarray(layers[0].mean, dtype=np.float64).reshape(-1)
        spread = np.sqrt(np.asarray(layers[0].variance, dtype=np.float64).reshape(-1))
    steps: list[Callable[[np.ndarray], np.ndarray]] = []
    width = n_features
    for layer in layers:
        step = _step(layer, width)
        if step is None:
            return None
        steps.append(step[0])
        width = step[1]

    def predict(matrix: np.ndarray) -> np.ndarray:
        x = np.asarray(matrix, dtype=np.float64)
        for step in steps:
            x = step(x)
        return x

    return predict if matches(predict, model, n_features, seed, centre, spread) else None


def matches(form: Callable[[np.ndarray], np.ndarray], model: Any, n_features: int, seed: int = 0,
            centre: np.ndarray | None = None, spread: np.ndarray | None = None) -> bool:
    """Whether `form` reproduces `model.predict` within MAX_DIFFERENCE on random float32 probes."""
    rng = np.random.default_rng(seed)
    middle = np.zeros(n_features) if centre is None or centre.shape != (n_features,) else centre
    scale = np.ones(n_features) if spread is None or spread.shape != (n_features,) else np.maximum(spread, 1e-3)
    for size in PROBE_SIZES:
        probe = (middle + scale * rng.normal(0.0, 1.5, (size, n_features))).astype(np.float32)
        expected = np.asarray(model.predict(probe, verbose=0), dtype=np.float64)
        found = form(probe)
        if found.shape != expected.shape or not np.all(np.abs(found - expected) <= MAX_DIFFERENCE):
            return False
    return True
