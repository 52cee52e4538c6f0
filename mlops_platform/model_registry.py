"""MLflow, the one way in: the tracking server check, the client, and the one champion lookup.

Training registers versions and moves the alias; serving, batch scoring and monitoring all ask here
which version the alias names, and all get the same answer for "none yet": `NoChampion`, whose
message says which model and alias were asked for and what to do.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass

HEALTH_TIMEOUT_SECONDS = 3.0
# What MLflow answers when the registered model, or the alias on it, does not exist (server or local store).
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer."""


class NoChampion(LookupError):
    """The registered model has no version under the alias serving, batch scoring and monitoring follow."""


@dataclass(frozen=True)
class Champion:
    """The registry coordinates of the version an alias names."""

    name: str
    version: str
    run_id: str


def check_server(tracking_uri: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
    """GET <uri>/health with a short timeout: fail in seconds, not after MLflow's minutes of retries."""
    url = f"{tracking_uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} does not answer {url} within {timeout:.0f}s "
            f"({getattr(exc, 'reason', exc)}): start it with `bash run.sh mlflow up`, or point "
            "MLFLOW_HOST/MLFLOW_PORT (or tracking_uri) at a running server") from None
    if status != 200:
        raise TrackingUnavailable(f"MLflow tracking server {tracking_uri} answered {url} with HTTP {status}, "
                                  "expected 200: see `bash run.sh mlflow logs`")


def client(tracking_uri: str):
    """An MlflowClient on the server, and the fluent API (log_model, load_model, models:/ URIs) pointed at it too."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def polling_client(tracking_uri: str):
    """`client()` for a service that asks the registry again on its own schedule: one HTTP retry and a 20 s
    timeout instead of MLflow's minutes of retries (process-wide defaults; variables already set win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return client(tracking_uri)


def champion(mlflow_client, name: str, alias: str) -> Champion:
    """The version `alias` names on registered model `name`; NoChampion when the model or the alias is missing."""
    from mlflow.exceptions import MlflowException

    try:
        version = mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND_CODES:
            raise
        raise NoChampion(
            f"expected registered model {name!r} to have a version under alias {alias!r}, found none "
            f"({exc.message}): train and promote one first (`airflow dags trigger training` or "
            "`python -m training_pipeline`), or set MODEL_NAME and MODEL_ALIAS to a model that has one") from None
    return Champion(name, str(version.version), str(version.run_id or ""))


def find_champion(mlflow_client, name: str, alias: str) -> Champion | None:
    """`champion()`, or None when there is none yet: for callers that wait for one to appear."""
    try:
        return champion(mlflow_client, name, alias)
    except NoChampion:
        return None
