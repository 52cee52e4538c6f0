"""The projects' routes (/models/{model_name}/predict and /feedback) without services: a small Keras model,
stub online features, the real app; the numpy form of Keras models; the projects' event contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

import mlops_platform.keras_backend  # noqa: F401  (before any keras import below)
from feast_repo import penguin_features as contract
from mlops_platform.projects import PENGUINS, PROJECTS
from model_serving.events import ModelFeedbackRecord, ModelPredictionRecord, messages_from_wire
from model_serving.model_messages import (
    ModelGroundTruth,
    ModelPrediction,
    validate_model_ground_truth,
    validate_model_prediction,
)
from tests.unit.test_serving_api import fitted_model, settings
from tests.unit.test_serving_handlers import StubFeatures

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")
AUTH = {"Authorization": "Bearer tok"}
N = len(contract.FEATURE_NAMES)
ADELIE = {"island": "Torgersen", "bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181.0,
          "body_mass_g": 3750.0, "sex": "male"}


@pytest.fixture(scope="module")
def keras_model():
    """The contract's model shape (Normalization, Dense 10 relu, Dense 8 relu, Dense 3 softmax), trained a little:
    fitting and predicting add nodes to the layers' graph, which must not hide the numpy form."""
    import keras


    rng = np.random.default_rng(7)
    rows = np.column_stack([rng.normal(44, 5, 200), rng.normal(17, 2, 200), rng.normal(200, 14, 200),
                            rng.normal(4200, 800, 200), rng.integers(0, 2, (200, 5))]).astype("float32")
    keras.utils.set_random_seed(7)
    normalization = keras.layers.Normalization()
    normalization.adapt(rows)
    model = keras.Sequential([keras.Input((N,)), normalization, keras.layers.Dense(10, activation="relu"),
                              keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(rows, rng.integers(0, 3, len(rows)), epochs=2, verbose=0)
    model.predict(rows[:2], verbose=0)
    return model, rows


def test_the_numpy_form_equals_keras_predict_within_1e_5_on_random_inputs(keras_model):
    from model_serving.keras_form import dense_form

    model, rows = keras_model
    form = dense_form(model, N)
    assert form is not None, "the contract's model shape must get its numpy form"
    rng = np.random.default_rng(11)
    for size in (1, 5, 300):
        probe = (rows.mean(0) + rows.std(0) * rng.normal(0, 2, (size, N))).astype("float32")
        assert np.abs(form(probe) - model.predict(probe, verbose=0)).max() <= 1e-5


def test_a_model_of_another_shape_gets_no_numpy_form_and_scores_with_keras(keras_model):
    import keras

    from model_serving.keras_form import dense_form
    from model_serving.project_models import keras_scorer

    model, rows = keras_model
    other = keras.Sequential([keras.Input((N,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(3, activation="softmax")])
    assert dense_form(other, N) is None
    scorer, path = keras_scorer(other, N)
    assert path == "keras" and np.allclose(scorer(rows[:3]), other.predict(rows[:3], verbose=0))


@pytest.fixture
def app_parts(monkeypatch, keras_model, tmp_path):
    import logging

    import sklearn

    from model_serving.api import create_app
    from model_serving.project_models import ProjectModel, keras_scorer

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    root = logging.getLogger()
    handlers, level, sklearn_config = root.handlers[:], root.level, sklearn.get_config()
    app = create_app(settings(SERVING_AUTH="on", SERVING_API_TOKEN="tok", SERVING_MAX_DRIVERS="4"),
                     registry=CollectorRegistry())
    serving = app.state.serving
    serving.models._current = fitted_model("3")
    serving.features = StubFeatures({11: (0.9, 0.9, 30)})
    model, rows = keras_model
    scorer, path = keras_scorer(model, N)
    slot = serving.projects[PENGUINS.model_name]
    slot.store._current = ProjectModel(PENGUINS.model_name, "2", "run-2", PENGUINS.features, PENGUINS.classes,
                                       scorer, path, 0.0)
    slot.own_features = StubFeatures({1: tuple(float(v) for v in rows[0]), 2: tuple(float(v) for v in rows[1])})
    yield TestClient(app, raise_server_exceptions=False), serving, model, rows
    root.handlers[:], root.level = handlers, level
    sklearn.set_config(**sklearn_config)


def predict(client, body, model_name=PENGUINS.model_name):
    return client.post(f"/models/{model_name}/predict", json=body, headers=AUTH)


def test_instances_from_the_online_store_and_inline_are_scored_as_keras_scores_them(app_parts):
    client, serving, model, rows = app_parts
    response = predict(client, {"request_id": "r-1", "instances": [
        {"penguin_id": 2}, {"penguin_id": 7, **ADELIE}, {"penguin_id": 99}, {"penguin_id": 1}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "penguin_species", "version": "2", "run_id": "run-2", "variant": "champion"}
    assert [p["penguin_id"] for p in body["predictions"]] == [2, 7, 1]
    assert [p["features_from"] for p in body["predictions"]] == ["online_store", "request", "online_store"]
    assert body["missing"] == [99], "a key without online features is reported, not scored"
    inline = [ADELIE[f] for f in contract.MEASUREMENT_NAMES]
    inline += list(contract.encode_categories(ADELIE["island"], ADELIE["sex"]).values())
    expected = model.predict(np.array([rows[1], inline, rows[0]], dtype="float32"), verbose=0)
    for prediction, probabilities in zip(body["predictions"], expected, strict=True):
        found = [prediction["probabilities"][c] for c in contract.CLASSES]
        assert np.abs(np.array(found) - probabilities).max() <= 1e-5
        assert prediction["label"] == contract.CLASSES[int(np.argmax(probabilities))]
    slot = serving.projects[PENGUINS.model_name]
    assert slot.recent.contains("r-1", 7) and not slot.recent.contains("r-1", 99)


def test_the_driver_model_answers_on_its_project_route_too(app_parts):
    client, serving, *_ = app_parts
    response = predict(client, {"instances": [{"driver_id": 11}, {"driver_id": 12}]}, "driver_trip_completion")
    assert response.status_code == 200, response.text
    [prediction] = response.json()["predictions"]
    expected = serving.models.current.predict(np.array([[0.9, 0.9, 30]], dtype=np.float64))[0]
    assert prediction == {"driver_id": 11, "score": expected, "features_from": "online_store"}
    assert response.json()["missing"] == [12]


def test_an_instance_with_some_raw_fields_names_each_missing_one(app_parts):
    client, *_ = app_parts
    response = predict(client, {"instances": [{"penguin_id": 1, "island": "Dream"}]})
    assert response.status_code == 422, response.text
    missing = {tuple(error["loc"][-1:]) for error in response.json()["detail"] if error["type"] == "missing"}
    assert missing == {("bill_length_mm",), ("bill_depth_mm",), ("flipper_length_mm",), ("body_mass_g",)}


@pytest.mark.parametrize("instances, where, problem", [
    ([], ["instances"], "at least 1 item"),
    ([{"penguin_id": i} for i in range(1, 6)], ["instances"], "at most 4 items"),
    ([{"penguin_id": 1}, {"penguin_id": 1}], ["instances"], "repeated: [1]"),
    ([{"penguin_id": "1"}], ["instances", 0, "key", "penguin_id"], "integer"),
    ([{"penguin_id": 1.5}], ["instances", 0, "key", "penguin_id"], "integer"),
    ([{"penguin_id": 1, "beak_colour": "red"}], ["instances", 0, "key", "beak_colour"], "Extra inputs"),
    ([{"penguin_id": 1, "species": "Adelie"}], ["instances", 0, "key"], "species is not an input"),
    ([{"penguin_id": 1, **ADELIE, "island": "Mars"}], ["instances", 0, "measured", "island"], "'Biscoe', 'Dream' or"),
    ([{"penguin_id": 1, **ADELIE, "sex": "other"}], ["instances", 0, "measured", "sex"], "'female', 'male'"),
    ([{"penguin_id": 1, **ADELIE, "body_mass_g": None}], ["instances", 0, "measured", "body_mass_g"], "a number"),
    ([{"penguin_id": 1, **ADELIE, "body_mass_g": 90000}], ["instances", 0, "measured", "body_mass_g"], "7000"),
    ([{"penguin_id": 1, **ADELIE, "bill_depth_mm": "deep"}], ["instances", 0, "measured", "bill_depth_mm"], "a number"),
])
def test_a_bad_body_is_a_422_naming_the_field_and_the_problem(app_parts, instances, where, problem):
    client, *_ = app_parts
    response = predict(client, {"instances": instances})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", *where] and problem in error["msg"], error


def test_an_unknown_model_is_a_404_naming_the_known_ones(app_parts):
    client, *_ = app_parts
    for action in ("predict", "feedback"):
        response = client.post(f"/models/emperor_penguins/{action}", json={"instances": []}, headers=AUTH)
        assert response.status_code == 404
        assert all(p.model_name in response.json()["detail"] for p in PROJECTS.values()), response.text


def test_a_project_without_a_model_answers_503_naming_it_while_the_others_serve(app_parts):
    client, serving, *_ = app_parts
    slot = serving.projects[PENGUINS.model_name]
    slot.store._current, slot.store.problem = None, "registered model 'penguin_species' has no alias 'champion' yet"
    response = predict(client, {"instances": [{"penguin_id": 1}]})
    assert response.status_code == 503 and "penguin_species" in response.json()["detail"]
    assert client.post("/predict", json={"driver_ids": [11]}, headers=AUTH).status_code == 200


def test_an_online_store_that_does_not_answer_is_a_503_but_inline_instances_need_none(app_parts):
    client, serving, *_ = app_parts
    serving.projects[PENGUINS.model_name].own_features = StubFeatures({}, fail="Redis 127.0.0.1:1 refused")
    assert predict(client, {"instances": [{"penguin_id": 1}]}).status_code == 503
    assert predict(client, {"instances": [{"penguin_id": 1, **ADELIE}]}).status_code == 200


def test_feedback_of_a_served_prediction_is_accepted_and_a_bad_label_refused(app_parts, monkeypatch):
    client, serving, *_ = app_parts
    spooled = []
    monkeypatch.setattr(serving.publisher, "publish_durably", lambda record: spooled.append(record) or True)
    assert predict(client, {"request_id": "r-9", "instances": [{"penguin_id": 1}]}).status_code == 200
    url = f"/models/{PENGUINS.model_name}/feedback"
    response = client.post(url, json={"request_id": "r-9", "penguin_id": 1, "label": "Gentoo"}, headers=AUTH)
    assert response.status_code == 202 and response.json()["accepted"] is True, response.text
    assert [(r.model_name, r.request_id, r.entity_key, r.label) for r in spooled] == [
        ("penguin_species", "r-9", 1, "Gentoo")]
    response = client.post(url, json={"request_id": "r-9", "penguin_id": 1, "label": "Emperor"}, headers=AUTH)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "label"]


def test_the_request_metrics_of_the_project_routes_carry_the_model(app_parts):
    client, *_ = app_parts
    predict(client, {"instances": [{"penguin_id": 1}]})
    predict(client, {"instances": []})
    client.post("/models/nothing/predict", json={}, headers=AUTH)
    text = client.get("/metrics").text
    endpoint = 'endpoint="/models/{model_name}/predict"'
    assert f'serving_requests_total{{{endpoint},model="penguin_species",model_version="2",status="200"}} 1.0' in text
    assert f'serving_requests_total{{{endpoint},model="penguin_species",model_version="2",status="422"}} 1.0' in text
    assert f'serving_requests_total{{{endpoint},model="unknown",model_version="3",status="404"}} 1.0' in text


# ---------------------------------------------------------------------------------------------
# the events of the project routes, through the wire form to the logger's validation
# ---------------------------------------------------------------------------------------------
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


def test_a_prediction_record_becomes_one_valid_message_per_entity():
    record = ModelPredictionRecord("model_predictions", "r-1", "penguin_species", "2", contract.FEATURE_NAMES,
                                   [5, 6], [[40.0] * N, [41.0] * N], ["Adelie", "Gentoo"],
                                   [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], contract.CLASSES, NOW.timestamp(), 1.5)
    messages = messages_from_wire(record.to_wire())
    assert messages.topic == "model_predictions" and messages.key == b"r-1" and messages.count == 2
    parsed = [validate_model_prediction(value, NOW) for value in messages.values]
    assert all(isinstance(p, ModelPrediction) for p in parsed), parsed
    assert [p.entity_key for p in parsed] == ["5", "6"] and parsed[1].prediction == "Gentoo"
    assert parsed[1].probabilities == {"Adelie": 0.1, "Chinstrap": 0.1, "Gentoo": 0.8}
    row = parsed[0].row()
    assert row[:5] == ("penguin_species", "r-1", "5", "champion", "2") and json.loads(row[7])["Adelie"] == 0.8


def test_a_feedback_record_becomes_a_valid_ground_truth_message():
    record = ModelFeedbackRecord("model_ground_truth", "penguin_species", "r-1", 5, "Chinstrap", NOW.timestamp())
    [value] = messages_from_wire(record.to_wire()).values
    truth = validate_model_ground_truth(value, NOW)
    assert isinstance(truth, ModelGroundTruth) and truth.row()[:4] == ("penguin_species", "r-1", "5", "Chinstrap")


@pytest.mark.parametrize("change, field", [
    ({"model_name": "emperor"}, "model_name"),
    ({"prediction": "Emperor"}, "prediction"),
    ({"probabilities": {"Adelie": 1.0}}, "probabilities"),
    ({"probabilities": {"Adelie": 2.0, "Chinstrap": 0.0, "Gentoo": 0.0}}, "probabilities"),
    ({"entity_key": "penguin-5"}, "entity_key"),
    ({"features": {"bill_length_mm": "long"}}, "bill_length_mm"),
])
def test_a_prediction_message_breaking_the_contract_is_refused_naming_the_field(change, field):
    message = {"model_name": "penguin_species", "request_id": "r", "entity_key": "5", "model_version": "2",
               "features": {"bill_length_mm": 40.0}, "prediction": "Adelie",
               "probabilities": {"Adelie": 0.8, "Chinstrap": 0.1, "Gentoo": 0.1},
               "predicted_at": "2026-05-01T12:00:00+00:00"}
    assert isinstance(validate_model_prediction(json.dumps(message).encode(), NOW), ModelPrediction)
    rejection = validate_model_prediction(json.dumps({**message, **change}).encode(), NOW)
    assert getattr(rejection, "field", None) == field, rejection


# ---------------------------------------------------------------------------------------------
# the project model store follows the alias (a real registry: MLflow on SQLite), and the batch rows
# ---------------------------------------------------------------------------------------------
def test_the_project_store_follows_the_alias_and_names_a_missing_champion(temporary_mlflow, monkeypatch):
    from dataclasses import replace

    from mlops_platform import model_registry
    from model_serving.project_models import ProjectModel, ProjectModelStore
    from tests.conftest import build_settings, register_version

    project = replace(PENGUINS, model_name=f"penguins_{id(temporary_mlflow)}")
    monkeypatch.setattr(model_registry, "polling_client", lambda uri: temporary_mlflow)
    loads = []

    def loader(project, version, run_id, uri):
        loads.append(version)
        return ProjectModel(project.model_name, version, run_id, project.features, project.classes,
                            lambda m: np.full((len(m), 3), 1 / 3), "numpy form", 0.0)

    store = ProjectModelStore(project, build_settings(), loader=loader)
    assert not store.refresh() and store.current is None and project.model_name in store.problem
    first = register_version(temporary_mlflow, project.model_name, alias="champion")
    assert store.refresh() and store.current.version == first and store.problem == ""
    assert not store.refresh() and loads == [first], "the same version is not loaded twice"
    second = register_version(temporary_mlflow, project.model_name, alias="champion")
    assert store.refresh() and store.current.version == second


def test_batch_rows_carry_the_argmax_label_and_the_probabilities():
    from model_serving.project_batch import rows_of

    at = datetime(2026, 5, 1, tzinfo=UTC)
    rows = rows_of(PENGUINS, "run-1", "2", np.array([4, 9]), np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]), at)
    assert [(r[2], r[4]) for r in rows] == [("4", "Chinstrap"), ("9", "Adelie")]
    assert json.loads(rows[0][5]) == {"Adelie": 0.1, "Chinstrap": 0.7, "Gentoo": 0.2}
    assert rows[0][:2] == ("run-1", "penguin_species") and rows[0][3] == "2" and rows[0][6] == at
