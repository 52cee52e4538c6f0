"""The online API's requests against real services: validation (422 naming the field), feedback, auth, metrics,
the health check, and schemathesis on every route of its OpenAPI schema. The running API: serving_api.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from xml.etree import ElementTree

import httpx
import pytest

from mlops_platform.projects import PROJECTS
from tests.conftest import REPO_ROOT, eventually, free_port
from tests.services.serving_api import (
    FRESH,
    STALE,
    UNKNOWN,
    metric,
    predict,
    ready_version,
)


# ---------------------------------------------------------------------------------------------
# Validation, feedback, auth, metrics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "location"), [
    ({"driver_ids": []}, ["body", "driver_ids"]),
    ({"driver_ids": "too-many"}, ["body", "driver_ids"]),
    ({"driver_ids": ["1001"]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [True]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [1001.5]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [0]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [2**53]}, ["body", "driver_ids", 0]),
    ({"driver_ids": [1001, 1002, 1001]}, ["body", "driver_ids"]),
    ({}, ["body", "driver_ids"]),
    ({"driver_ids": [1001], "request_id": ""}, ["body", "request_id"]),
    ({"driver_ids": [1001], "request_id": "x" * 65}, ["body", "request_id"]),
    ({"driver_ids": [1001], "request_id": "tab\there"}, ["body", "request_id"]),
    ({"driver_ids": [1001], "drivers": [1]}, ["body", "drivers"]),
])
def test_invalid_predict_bodies_get_422_naming_the_field(api, settings, body, location):
    if body.get("driver_ids") == "too-many":
        body = {"driver_ids": list(range(1, settings.serving_max_drivers + 2))}
    response = httpx.post(f"{api}/predict", json=body, timeout=10)
    assert response.status_code == 422, response.text
    assert location in [error["loc"] for error in response.json()["detail"]], response.json()


@pytest.mark.parametrize("flag", [2, -1, True, "1", 0.5, None])
def test_feedback_needs_trip_completed_0_or_1(api, flag):
    response = httpx.post(f"{api}/feedback", json={"request_id": "r", "driver_id": 1001, "trip_completed": flag})
    assert response.status_code == 422, response.text
    assert ["body", "trip_completed"] in [error["loc"] for error in response.json()["detail"]]


def test_numbers_written_with_a_fraction_of_zero_are_the_integers_the_schema_says_they_are(api):
    """JSON Schema's `integer` is a number without a fractional part, however written: 1001.0 is 1001."""
    request_id = f"floats-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{api}/predict", content=f'{{"request_id": "{request_id}", "driver_ids": '
                                                   f'[{FRESH[6]}.0, {FRESH[7]}, {UNKNOWN}e0]}}',
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.text.count(f'"driver_id":{FRESH[6]},') == 1, "answered as the integer id"
    assert [s["driver_id"] for s in response.json()["scores"]] == [FRESH[6], FRESH[7]]
    assert response.json()["missing_driver_ids"] == [UNKNOWN]
    feedback = httpx.post(f"{api}/feedback", content=f'{{"request_id": "{request_id}", "driver_id": {FRESH[6]}.0, '
                                                     '"trip_completed": 1.0}',
                          headers={"content-type": "application/json"}, timeout=10)
    assert feedback.status_code == 202, feedback.text
    assert feedback.json() == {"request_id": request_id, "driver_id": FRESH[6], "accepted": True}


@pytest.mark.parametrize("body", [b'{"driver_ids": [1001', b'{"driver_ids": [NaN]}', b'{"driver_ids": [1e999]}',
                                  b'{"driver_ids": [1001], "request_id": "\xff"}'])
def test_a_body_that_is_not_json_is_a_422_naming_the_problem(api, body):
    response = httpx.post(f"{api}/predict", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"][0] == "body" and error["ctx"]["error"], error


def test_feedback_is_accepted_only_for_a_served_request_and_driver(api):
    body = predict(api, [FRESH[4], UNKNOWN], request_id=f"fb-{uuid.uuid4().hex[:8]}").json()
    request_id = body["request_id"]
    accepted = httpx.post(f"{api}/feedback", json={"request_id": request_id, "driver_id": FRESH[4],
                                                   "trip_completed": 0})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"request_id": request_id, "driver_id": FRESH[4], "accepted": True}

    for unknown_request, driver_id in ((f"never-{uuid.uuid4().hex}", FRESH[4]), (request_id, UNKNOWN),
                                       (request_id, FRESH[5])):
        response = httpx.post(f"{api}/feedback", json={"request_id": unknown_request, "driver_id": driver_id,
                                                       "trip_completed": 1}, timeout=10)
        assert response.status_code == 404, response.text
        detail = response.json()["detail"]
        assert unknown_request in detail and str(driver_id) in detail


@pytest.fixture
def authenticated_api(api, settings, tmp_path):
    """A second API process with SERVING_AUTH=on, on a port of its own; (url, token)."""
    port, token = free_port(), uuid.uuid4().hex
    env = {**os.environ, "SERVING_AUTH": "on", "SERVING_API_TOKEN": token, "SERVING_PORT": str(port),
           "SERVING_WORKERS": "1", "PLATFORM_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    with open(tmp_path / "api.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "model_serving.api"], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: ready_version(url), timeout=90, what=f"second API ready (log: {tmp_path / 'api.log'})")
        yield url, token
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_auth_on_requires_the_bearer_token_on_predict_and_feedback_only(authenticated_api):
    url, token = authenticated_api
    for path, body in (("/predict", {"driver_ids": FRESH[:2]}),
                       ("/feedback", {"request_id": "r", "driver_id": FRESH[0], "trip_completed": 1})):
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {token}"},
                        {"Authorization": token}):
            response = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=10)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    good = {"Authorization": f"Bearer {token}"}
    served = httpx.post(f"{url}/predict", json={"driver_ids": FRESH[:2]}, headers=good, timeout=10)
    assert served.status_code == 200, served.text
    feedback = {"request_id": served.json()["request_id"], "driver_id": FRESH[0], "trip_completed": 1}
    assert httpx.post(f"{url}/feedback", json=feedback, headers=good, timeout=10).status_code == 202
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path


def test_metrics_cover_requests_scores_missing_features_reloads_and_events(api, settings, registry):
    predict(api, [*FRESH[:5], UNKNOWN, STALE])
    _client, version_a, _ = registry
    assert metric(api, "serving_requests_total", endpoint="/predict", status="200", model_version=version_a) >= 1
    assert metric(api, "serving_request_duration_seconds_count", endpoint="/predict", status="200") >= 1
    assert metric(api, "serving_score_count", model_version=version_a) >= 5
    assert metric(api, "serving_missing_features_total", reason="not_found") >= 1
    assert metric(api, "serving_missing_features_total", reason="expired") >= 1
    assert metric(api, "serving_model_reloads_total") >= 1
    assert metric(api, "serving_model_info", model_version=version_a) == 1
    assert metric(api, "serving_events_delivered_total", topic=settings.predictions_topic) >= 1
    assert metric(api, "serving_events_spooled_total", topic=settings.predictions_topic) >= 5
    assert metric(api, "serving_event_spool_limit_bytes") == settings.event_spool_max_bytes
    for reason in ("spool_full", "spool_error", "corrupt"):
        assert metric(api, "serving_events_dropped_total", reason=reason) == 0


def test_the_platform_health_check_reports_ready(api):
    result = subprocess.run([sys.executable, "-m", "mlops_platform.health", "serving"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "serving: healthy: ready" in result.stdout, result.stdout + result.stderr


# What schemathesis accepts as the answer to a request the schema calls valid, and to one it calls invalid:
# a valid /feedback may name a pair this API never scored (404, documented); anything invalid is a 422.
FUZZ_CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "404"]

[checks.negative_data_rejection]
expected-statuses = ["422"]
"""
FUZZ_OPERATIONS = {"POST /predict", "POST /feedback", "GET /health", "GET /ready", "GET /metrics",
                   *(f"POST /models/{project.model_name}/{route}" for project in PROJECTS.values()
                     for route in ("predict", "feedback"))}


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_every_route_keeps_the_contract_its_openapi_schema_states(request, api, settings, auth, tmp_path,
                                                                  trained_penguins):  # a champion each
    """schemathesis with every check, in both modes (schema-valid and schema-invalid data), on every route:
    a valid request is answered 2xx (or /feedback's documented 404), an invalid one 422, and every status,
    content type and body is the one the schema documents. With auth on, also that a request without the
    token is refused. Deterministic: `--generation-deterministic` derandomizes generation (a fixed seed
    per operation) and keeps no example database; a fixed number of examples, a few seconds a run."""
    pytest.importorskip("schemathesis", reason="schemathesis is not installed: the fuzz run needs it")
    url, token = request.getfixturevalue("authenticated_api") if auth else (api, settings.serving_api_token)
    headers = ["--header", f"Authorization: Bearer {token}"] if auth or settings.serving_auth else []
    config, junit = tmp_path / "schemathesis.toml", tmp_path / "junit.xml"
    config.write_text(FUZZ_CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
         "--checks", "all", "--mode", "all", "--max-examples", "100", "--generation-deterministic",
         "--workers", "1", "--request-timeout", "10", "--continue-on-failure", "--no-color",
         "--report", "junit", "--report-junit-path", str(junit), *headers],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.services.schemathesis_hooks",
             "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))})
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-2000:]
    tested = {case.get("name") for case in ElementTree.parse(junit).iter("testcase")}
    assert tested == FUZZ_OPERATIONS, f"schemathesis tested {sorted(tested)}: a route is missing from the schema"
