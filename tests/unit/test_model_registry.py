"""The one champion lookup, against a real MLflow registry in a temporary SQLite database."""

from __future__ import annotations

import pytest

from mlops_platform import model_registry
from mlops_platform.model_registry import Champion, NoChampion
from tests.conftest import register_version

MODEL = "lookup-test-model"


@pytest.fixture(scope="module")
def registered(temporary_mlflow) -> Champion:
    """MODEL with two versions, `champion` on the second and no `challenger`."""
    register_version(temporary_mlflow, MODEL)
    version = register_version(temporary_mlflow, MODEL, alias="champion")
    return Champion(MODEL, version, temporary_mlflow.get_model_version(MODEL, version).run_id)


@pytest.fixture
def fluent_api():
    """mlflow, whose process-wide tracking and registry URIs are put back after the test."""
    import mlflow

    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield mlflow
    mlflow.set_tracking_uri(saved[0])
    mlflow.set_registry_uri(saved[1])


def test_the_client_points_the_fluent_api_at_the_same_registry(temporary_mlflow, fluent_api):
    uri = temporary_mlflow.tracking_uri
    client = model_registry.client(uri)
    assert (client.tracking_uri, fluent_api.get_tracking_uri(), fluent_api.get_registry_uri()) == (uri, uri, uri)


def test_the_alias_names_the_version_and_the_run_that_made_it(temporary_mlflow, registered):
    assert registered.run_id
    assert model_registry.champion(temporary_mlflow, MODEL, "champion") == registered
    assert model_registry.find_champion(temporary_mlflow, MODEL, "champion") == registered


@pytest.mark.parametrize(("name", "alias"), [(MODEL, "challenger"), ("no-such-model", "champion")],
                         ids=["alias missing", "model missing"])
def test_no_champion_says_which_model_and_alias_and_what_to_do(temporary_mlflow, registered, name, alias):
    with pytest.raises(NoChampion) as raised:
        model_registry.champion(temporary_mlflow, name, alias)
    message = str(raised.value)
    assert f"registered model {name!r}" in message and f"alias {alias!r}" in message
    assert "train and promote one first" in message and "MODEL_NAME" in message
    assert isinstance(raised.value, LookupError), "callers that catch LookupError keep working"
    assert model_registry.find_champion(temporary_mlflow, name, alias) is None


def test_training_loads_the_champion_through_the_same_lookup(temporary_mlflow, fluent_api):
    from training_pipeline import registry

    with pytest.raises(NoChampion, match="'no-such-model'"):
        registry.load_champion("no-such-model", tracking_uri=temporary_mlflow.tracking_uri)


def test_an_unreachable_server_is_reported_in_seconds_with_what_to_do():
    with pytest.raises(model_registry.TrackingUnavailable, match="does not answer .*bash run.sh mlflow up"):
        model_registry.check_server("http://127.0.0.1:9", timeout=1)


def test_a_polling_service_gives_up_on_a_request_fast_unless_told_otherwise(temporary_mlflow, fluent_api, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # recorded, so the test's value goes afterwards
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    client = model_registry.polling_client(temporary_mlflow.tracking_uri)
    assert client.tracking_uri == temporary_mlflow.tracking_uri
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    assert (MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_TIMEOUT.get()) == (1, 7)
