"""The app's handlers and middleware without services: a fitted model, stub online features, a real registry."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from model_serving.features import OnlineRows
from tests.unit.test_serving_api import FEATURES, fitted_model, settings

# Pipelines fitted on DataFrames and scored on matrices, as the API does on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


# ---------------------------------------------------------------------------------------------
# the app, with a fitted model and stub features (no services)
# ---------------------------------------------------------------------------------------------
class StubFeatures:
    def __init__(self, table: dict[int, tuple[float, float, int]], fail: str = "") -> None:
        self.table, self.fail = table, fail
        self.decoder = SimpleNamespace(spec=SimpleNamespace(features=FEATURES))

    async def read(self, ids, features):
        from model_serving.features import FeatureStoreUnavailable

        if self.fail:
            raise FeatureStoreUnavailable(self.fail)
        found = [d for d in ids if d in self.table]
        return OnlineRows(found, [self.table[d] for d in found], [d for d in ids if d not in self.table], 0)

    async def ping(self):
        await self.read([], FEATURES)


@pytest.fixture
def app_parts(monkeypatch):
    import logging

    import sklearn

    from model_serving.api import create_app

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    root = logging.getLogger()
    handlers, level, sklearn_config = root.handlers[:], root.level, sklearn.get_config()
    app = create_app(settings(SERVING_AUTH="on", SERVING_API_TOKEN="tok"), registry=CollectorRegistry())
    serving = app.state.serving
    serving.models._current = fitted_model("3")
    serving.features = StubFeatures({11: (0.9, 0.9, 30), 12: (0.1, 0.2, 3), 13: (0.9, 0.9, 30), 14: (0.5, 0.5, 9)})
    yield TestClient(app, raise_server_exceptions=False), serving
    root.handlers[:], root.level = handlers, level  # create_app configures the process's logging
    sklearn.set_config(**sklearn_config)


AUTH = {"Authorization": "Bearer tok"}


def test_predict_scores_in_request_order_and_ranks_best_first_ties_by_id(app_parts):
    client, serving = app_parts
    response = client.post("/predict", json={"driver_ids": [13, 99, 12, 11, 14], "request_id": "r-1"}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = serving.models.current.pipeline.predict(
        pd.DataFrame([(0.9, 0.9, 30), (0.1, 0.2, 3), (0.9, 0.9, 30), (0.5, 0.5, 9)], columns=list(FEATURES)))
    assert [s["driver_id"] for s in body["scores"]] == [13, 12, 11, 14]
    assert [s["score"] for s in body["scores"]] == expected.tolist()
    assert body["ranking"][:2] == [11, 13], "equal scores: smaller id first"
    assert body["best_driver_id"] == 11 and body["missing_driver_ids"] == [99]
    assert body["model"] == {"name": "driver_trip_completion", "version": "3", "run_id": "run-3",
                             "variant": "champion"}
    assert response.headers["x-model-variant"] == "champion"
    assert serving.recent.contains("r-1", 12) and not serving.recent.contains("r-1", 99)


def test_auth_guards_predict_and_feedback_but_not_the_probes(app_parts):
    client, _ = app_parts
    assert client.post("/predict", json={"driver_ids": [11]}).status_code == 401
    assert client.post("/feedback", json={"request_id": "r", "driver_id": 11, "trip_completed": 1}).status_code == 401
    assert client.get("/health").json() == {"alive": True}
    assert client.get("/ready").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_no_model_or_no_redis_is_a_503_with_the_reason(app_parts):
    client, serving = app_parts
    serving.features = StubFeatures({}, fail="online feature store (Redis 127.0.0.1:6379) unavailable: refused")
    for response in (client.post("/predict", json={"driver_ids": [11]}, headers=AUTH), client.get("/ready")):
        assert response.status_code == 503
        assert "Redis 127.0.0.1:6379" in json.dumps(response.json())
    serving.models._current = None
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["reason"].startswith("no model loaded")


def test_feedback_is_accepted_only_once_it_is_spooled_durably_else_503(app_parts, monkeypatch):
    client, serving = app_parts
    client.post("/predict", json={"driver_ids": [11], "request_id": "fb"}, headers=AUTH)
    monkeypatch.setattr(serving.publisher, "publish_durably", lambda record: True)
    response = client.post("/feedback", json={"request_id": "fb", "driver_id": 11, "trip_completed": 1},
                           headers=AUTH)
    assert response.status_code == 202 and response.json()["accepted"] is True
    monkeypatch.setattr(serving.publisher, "publish_durably", lambda record: False)
    serving.publisher.problem = "the event spool holds 10 of 10 bytes (EVENT_SPOOL_MAX_BYTES)"
    response = client.post("/feedback", json={"request_id": "fb", "driver_id": 11, "trip_completed": 1},
                           headers=AUTH)
    assert response.status_code == 503 and "EVENT_SPOOL_MAX_BYTES" in response.json()["detail"]


def openapi_validator(client, component: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(client.get("/openapi.json").json()["components"]["schemas"][component])


def test_the_schema_declares_driver_ids_unique_and_the_api_refuses_repeats(app_parts):
    client, _ = app_parts
    body = {"driver_ids": [11, 12, 11]}
    assert not openapi_validator(client, "PredictRequest").is_valid(body), "the schema must say repeats are invalid"
    response = client.post("/predict", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "driver_ids"] and "repeated: [11]" in error["msg"], error


def test_ids_written_as_integral_floats_are_valid_by_the_schema_and_accepted(app_parts):
    client, _ = app_parts
    body = b'{"driver_ids": [13.0, 12, 1.1e1]}'
    assert openapi_validator(client, "PredictRequest").is_valid(json.loads(body))
    response = client.post("/predict", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert [s["driver_id"] for s in response.json()["scores"]] == [13, 12, 11]
    assert '"driver_id":13,' in response.text, "answered with the integer id"
    fractional = client.post("/predict", json={"driver_ids": [13.5]}, headers=AUTH)
    assert fractional.status_code == 422 and fractional.json()["detail"][0]["loc"] == ["body", "driver_ids", 0]
    assert "fractional part" in fractional.json()["detail"][0]["msg"]


@pytest.mark.parametrize(("body", "problem"), [
    (b'{"driver_ids": [11', "Expecting"),
    (b'{"driver_ids": [11], "request_id": "\xff"}', "not UTF-8"),
    (b'{"driver_ids": [NaN]}', "NaN is not a JSON value"),
    (b'{"driver_ids": [-Infinity]}', "-Infinity is not a JSON value"),
    (b'{"driver_ids": [1e400]}', "1e400 is out of range"),
    (b'{"driver_ids": [' + b"9" * 5000 + b"]}", "out of range"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_a_body_that_is_not_json_is_the_documented_422_naming_the_problem(app_parts, body, problem):
    client, _ = app_parts
    documented = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["responses"]
    response = client.post("/predict", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422 and "422" in documented, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"][0] == "body" and problem in error["ctx"]["error"], error


def test_every_route_and_every_refusal_is_in_the_schema(app_parts):
    from fastapi.routing import APIRoute

    client, _ = app_parts
    schema = client.get("/openapi.json").json()
    from mlops_platform.projects import PROJECTS

    routes = {route.path for route in client.app.routes if isinstance(route, APIRoute) and route.include_in_schema}
    projects = {f"/models/{p.model_name}/{action}" for p in PROJECTS.values() for action in ("predict", "feedback")}
    assert set(schema["paths"]) == routes == {"/predict", "/feedback", "/health", "/ready", "/metrics", *projects}
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    for path, statuses in (("/predict", {"200", "401", "413", "422", "503"}),
                           ("/feedback", {"202", "401", "404", "413", "422", "503"})):
        assert set(schema["paths"][path]["post"]["responses"]) == statuses, path


def test_an_oversized_body_is_refused_before_parsing(app_parts):
    client, _ = app_parts
    response = client.post("/predict", content=b"[" + b"1," * 600_000 + b"1]", headers={**AUTH,
                           "content-type": "application/json"})
    assert response.status_code == 413


def test_the_request_metrics_label_endpoint_status_model_version_and_model(app_parts):
    client, serving = app_parts
    client.post("/predict", json={"driver_ids": [11, 12]}, headers=AUTH)
    client.post("/predict", json={"driver_ids": []}, headers=AUTH)
    client.get("/nowhere")
    text = client.get("/metrics").text
    model = 'model="driver_trip_completion"'
    assert f'serving_requests_total{{endpoint="/predict",{model},model_version="3",status="200"}} 1.0' in text
    assert f'serving_requests_total{{endpoint="/predict",{model},model_version="3",status="422"}} 1.0' in text
    assert 'serving_requests_total{endpoint="other",model="",model_version="3",status="404"} 1.0' in text
    assert 'serving_score_count{model_version="3"} 2.0' in text

