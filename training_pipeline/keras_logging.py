"""Log a Keras model with MLflow's Keras flavour, input example included.

MLflow 3.17's `mlflow.keras.save_model` writes the input example before it creates the model's folder, so
`mlflow.keras.log_model(..., input_example=...)` fails with FileNotFoundError (.../model/input_example.json).
`log_keras_model` logs through the same `Model.log` with the same flavour, creating the folder first. The
saved model is the plain Keras flavour (`mlflow.keras.load_model`, `mlflow.pyfunc.load_model`).
"""

from __future__ import annotations

import os
from typing import Any

import mlops_platform.keras_backend  # noqa: F401  (before mlflow.keras imports keras)


class _KerasFlavour:
    """mlflow.keras for Model.log, with the model's folder made before saving into it."""

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def log_keras_model(model: Any, *, name: str = "model", signature=None, input_example=None,
                    pip_requirements: list[str] | None = None, metadata: dict[str, Any] | None = None,
                    tags: dict[str, Any] | None = None):
    """What mlflow.keras.log_model does (into the active run); returns its ModelInfo."""
    from mlflow.models import Model

    return Model.log(artifact_path=None, name=name, flavor=_KerasFlavour, model=model, signature=signature,
                     input_example=input_example, pip_requirements=pip_requirements, metadata=metadata, tags=tags)
