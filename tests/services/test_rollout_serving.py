"""Rollouts in the running API: sticky canary assignment at the configured share, shadow mode that changes no
response, challengers that fail without failing a request, mode switches without a restart, and a rollout
that outlives an API restart. Rollouts are started with mlops_platform.rollout_store.start, as `run.sh rollout`
does; the API, its versions and drivers are serving_api.py's, and the prediction logger stores the events.
"""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
import psycopg2
import pytest

from mlops_platform import local_service, rollout_store
from mlops_platform.rollout import AB, CANARY, CHALLENGER, CHAMPION, SHADOW, Rollout
from mlops_platform.services import BY_NAME
from model_serving.prediction_store import PREDICTIONS_TABLE
from tests.conftest import eventually, run_sh
from tests.services.serving_api import FRESH, metric, predict, ready_version, train

ACTOR = "test-rollout-serving"
DRIVERS = FRESH[:3]


@pytest.fixture(scope="module")
def logged(api, settings):
    """The prediction logger, so that the API's events land in prediction_log."""
    from mlops_platform.health import CHECKS

    local_service.start(BY_NAME["prediction-logger"], settings)
    eventually(lambda: CHECKS["prediction-logger"](settings), timeout=120, what="prediction logger healthy")
    return api


@pytest.fixture
def client(registry, settings):
    """The MLflow client; any rollout a test leaves running is rolled back after it."""
    mlflow_client = registry[0]
    yield mlflow_client
    end_rollout(settings, mlflow_client)


def end_rollout(settings, mlflow_client) -> None:
    if rollout_store.current(settings, settings.model_name) is not None:
        rollout_store.rollback(settings, mlflow_client, settings.model_name, ACTOR, "test cleanup")


def start(settings, mlflow_client, mode: str, version: str, share: float | None = None) -> Rollout:
    end_rollout(settings, mlflow_client)
    return rollout_store.start(settings, mlflow_client, settings.model_name, mode, share, challenger_version=version,
                               actor=ACTOR, reason="service test")


def variant(url: str, key: str, **body) -> str:
    response = predict(url, DRIVERS, customer_id=key, **body)
    assert response.status_code == 200, response.text
    assert response.json()["model"]["variant"] == response.headers["x-model-variant"]
    return response.json()["model"]["variant"]


def keys_of(wanted: str, rollout: Rollout, count: int) -> list[str]:
    keys = (f"customer-{uuid.uuid4().hex[:12]}" for _ in range(100_000))
    found = []
    for key in keys:
        if rollout.answering_variant(key) == wanted:
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError(f"fewer than {count} keys of {wanted}")


def applied(url: str, rollout: Rollout) -> None:
    """Until the API answers a key of each variant as the rollout assigns it (every worker: a few tries each)."""
    probes = keys_of(CHALLENGER, rollout, 4) + keys_of(CHAMPION, rollout, 4)
    eventually(lambda: all(variant(url, k) == rollout.answering_variant(k) for k in probes), timeout=60,
               what=f"{rollout.mode} at {rollout.share} applied")


def challenger_in_every_worker(url: str, keys: list[str], version: str) -> None:
    """Until requests keyed `keys` are all tried by the challenger `version` (answered, shadowed or failed): a
    worker still without the rollout (its challenger loading) would leave one out."""
    def tried() -> bool:
        before = metric(url, "serving_variant_requests_total", variant=CHALLENGER, model_version=version)
        for key in keys:
            assert predict(url, DRIVERS, customer_id=key).status_code == 200
        return eventually(lambda: metric(url, "serving_variant_requests_total", variant=CHALLENGER,
                                         model_version=version) - before >= len(keys), timeout=10,
                          what=f"{len(keys)} requests tried by the challenger")

    eventually(tried, timeout=90, what=f"challenger version {version} in every worker")


def log_rows(settings, request_ids: list[str]) -> list[tuple]:
    conn = psycopg2.connect(settings.postgres_dsn(settings.feast_db))
    try:
        with conn.cursor() as cur:
            cur.execute(f"select request_id, driver_id, variant, served, rollout_id, model_version, score, error, "
                        f"latency_ms from {PREDICTIONS_TABLE} where request_id = any(%s) "
                        "order by request_id, driver_id, variant", (request_ids,))
            return cur.fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# canary and A/B: sticky by key, at the configured share
# ---------------------------------------------------------------------------------------------
def test_canary_assignment_is_sticky_and_its_measured_share_is_the_configured_one(logged, client, registry,
                                                                                  settings):
    _, version_a, version_b = registry
    rollout = start(settings, client, CANARY, version_b, share=0.2)
    applied(logged, rollout)

    keys = [f"share-{uuid.uuid4().hex}" for _ in range(500)]  # 4 sd of the share: +-36 keys of 100
    answered = {k: variant(logged, k) for k in keys}
    assert answered == {k: rollout.answering_variant(k) for k in keys}, "every worker assigns as the rollout does"
    on_challenger = sum(v == CHALLENGER for v in answered.values())
    n, share = len(keys), rollout.share
    assert abs(on_challenger - n * share) <= 4 * math.sqrt(n * share * (1 - share)), on_challenger

    sticky = keys[:30]
    for _ in range(3):  # again, on new connections (any worker)
        assert {k: variant(logged, k) for k in sticky} == {k: answered[k] for k in sticky}

    # Without a customer id, the request id is the key; the version answering is the variant's.
    request_id = keys_of(CHALLENGER, rollout, 1)[0]
    body = predict(logged, DRIVERS, request_id=request_id).json()
    assert (body["model"]["variant"], body["model"]["version"]) == (CHALLENGER, version_b)
    eventually(lambda: len(log_rows(settings, [request_id])) == len(DRIVERS), timeout=60, what="challenger logged")
    assert {row[2:6] for row in log_rows(settings, [request_id])} == {
        (CHALLENGER, True, rollout.rollout_id, version_b)}
    assert metric(logged, "serving_rollout_info", mode=CANARY, rollout_id=rollout.rollout_id) == 1
    assert metric(logged, "serving_variant_requests_total", variant=CHALLENGER, outcome="ok") > 0


def test_a_mode_switch_and_the_end_of_a_rollout_take_effect_without_a_restart(logged, client, registry, settings):
    _, _, version_b = registry
    canary = start(settings, client, CANARY, version_b, share=0.1)
    applied(logged, canary)
    ab = rollout_store.start(settings, client, settings.model_name, AB, 0.5, challenger_version=version_b,
                             actor=ACTOR, reason="service test: wider")
    assert ab.rollout_id == canary.rollout_id
    moved = [k for k in keys_of(CHAMPION, canary, 200) if ab.answering_variant(k) == CHALLENGER][:5]
    assert moved, "raising the share moves some champion keys to the challenger"
    eventually(lambda: all(variant(logged, k) == CHALLENGER for k in moved), timeout=60, what="ab applied")
    stayed = keys_of(CHALLENGER, canary, 5)
    assert all(variant(logged, k) == CHALLENGER for k in stayed), "keys on the challenger stay there"

    rollout_store.rollback(settings, client, settings.model_name, ACTOR, "service test: end")
    eventually(lambda: all(variant(logged, k) == CHAMPION for k in moved + stayed), timeout=60,
               what="rollout ended in every worker")
    assert metric(logged, "serving_rollout_info", mode=CHAMPION, rollout_id="") == 1


# ---------------------------------------------------------------------------------------------
# shadow: the response is the champion's, unchanged; the challenger is logged, not served
# ---------------------------------------------------------------------------------------------
def test_shadow_mode_never_changes_a_response_and_logs_the_challenger_unserved(logged, client, registry, settings):
    _, version_a, version_b = registry
    request_ids = [f"shadow-{uuid.uuid4().hex}" for _ in range(30)]
    before = {r: predict(logged, FRESH, request_id=r, customer_id=r).content for r in request_ids}
    rollout = start(settings, client, SHADOW, version_b)
    challenger_in_every_worker(logged, [f"probe-{i}" for i in range(12)], version_b)
    during = {r: predict(logged, FRESH, request_id=r, customer_id=r) for r in request_ids}
    for request_id, response in during.items():
        assert response.status_code == 200 and response.headers["x-model-variant"] == CHAMPION
        assert response.content == before[request_id], "shadow mode returns byte for byte what champion mode did"

    def shadow_rows():
        return [row for row in log_rows(settings, request_ids) if row[2] == CHALLENGER]

    eventually(lambda: len(shadow_rows()) == len(request_ids) * len(FRESH), timeout=60, what="shadow rows logged")
    rows = shadow_rows()
    assert {(served, rollout_id, version) for _, _, _, served, rollout_id, version, *_ in rows} == {
        (False, rollout.rollout_id, version_b)}
    assert all(score is not None and error is None and latency >= 0 for *_, score, error, latency in rows)
    champion_scores = {(r[0], r[1]): r[6] for r in log_rows(settings, request_ids) if r[2] == CHAMPION}
    assert any(champion_scores[(r[0], r[1])] != r[6] for r in rows), "the challenger's own scores, not a copy"


# ---------------------------------------------------------------------------------------------
# a challenger that fails never fails a request; its failures are logged
# ---------------------------------------------------------------------------------------------
def register_pipeline(settings, x: pd.DataFrame, pipeline, run_name: str) -> str:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from mlops_platform import model_registry
    from training_pipeline import tracking
    from training_pipeline.model import SKOPS_TRUSTED_TYPES

    experiment = tracking.experiment_id(model_registry.client(settings.mlflow_tracking_uri), "serving-tests")
    with mlflow.start_run(run_name=run_name, experiment_id=experiment):
        info = mlflow.sklearn.log_model(pipeline, name="model", signature=infer_signature(x, pipeline.predict(x)),
                                        input_example=x.head(3), registered_model_name=settings.model_name,
                                        skops_trusted_types=SKOPS_TRUSTED_TYPES)
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def broken_versions(registry, settings):
    """(a version needing a feature the online store lacks, a version whose scores are NaN)."""
    x, pipeline = train(5)
    unknown = x.rename(columns={"avg_daily_trips": "trips_today"})
    _, needs_unknown = train(5)
    needs_unknown.fit(unknown, pipeline.predict(x))
    nan_model = train(6)[1]
    nan_model.named_steps["regress"].coef_ = np.full_like(nan_model.named_steps["regress"].coef_, np.nan)
    return (register_pipeline(settings, unknown, needs_unknown, "serving-test-unknown-feature"),
            register_pipeline(settings, x, nan_model, "serving-test-nan"))


@pytest.mark.parametrize("which", [0, 1], ids=["needs-a-feature-the-store-lacks", "scores-nan"])
def test_a_failing_challenger_never_fails_a_request_and_its_error_rows_are_logged(logged, client, registry, settings,
                                                                                 broken_versions, which):
    _, version_a, _ = registry
    broken = broken_versions[which]
    rollout = start(settings, client, CANARY, broken, share=0.5)
    keys = keys_of(CHALLENGER, rollout, 20)
    challenger_in_every_worker(logged, keys[:12], broken)
    request_ids = [f"broken-{uuid.uuid4().hex}" for _ in keys]
    for key, request_id in zip(keys, request_ids, strict=True):
        response = predict(logged, DRIVERS, customer_id=key, request_id=request_id)
        assert response.status_code == 200, response.text
        assert (response.json()["model"]["variant"], response.json()["model"]["version"]) == (CHAMPION, version_a)
        assert len(response.json()["scores"]) == len(DRIVERS)
    expected = len(request_ids) * len(DRIVERS) * 2
    eventually(lambda: len(log_rows(settings, request_ids)) == expected, timeout=60, what="both variants logged")
    rows = log_rows(settings, request_ids)
    failed = [row for row in rows if row[2] == CHALLENGER]
    assert len(failed) == expected // 2
    assert all(not served and version == broken and score is None and error
               for _, _, _, served, _, version, score, error, _ in failed)
    assert all(served and score is not None and error is None
               for _, _, variant_, served, _, _, score, error, _ in rows if variant_ == CHAMPION)
    words = "trips_today" if which == 0 else "non-finite"
    assert all(words in row[7] for row in failed), failed[0]


# ---------------------------------------------------------------------------------------------
# restarts
# ---------------------------------------------------------------------------------------------
def test_postgresql_down_keeps_the_last_rollout_state_and_fails_no_request(logged, client, registry, settings):
    from mlops_platform.services import log_file

    _, _, version_b = registry
    rollout = start(settings, client, CANARY, version_b, share=0.3)
    applied(logged, rollout)
    log = log_file(settings, "serving")
    offset = log.stat().st_size

    def lines(words: str) -> list[str]:
        with log.open(errors="replace") as handle:
            handle.seek(offset)
            return [line for line in handle if words in line]

    keys = keys_of(CHALLENGER, rollout, 5) + keys_of(CHAMPION, rollout, 5)
    postgres = BY_NAME["postgres"]
    local_service.stop(postgres, settings)
    try:
        eventually(lambda: lines("rollout state not readable"), timeout=60, what="the outage noticed")
        for _ in range(3):  # answered, each by the variant the rollout assigned before the outage
            assert {k: variant(logged, k) for k in keys} == {k: rollout.answering_variant(k) for k in keys}
    finally:
        local_service.start(postgres, settings)
    eventually(lambda: lines("rollout state readable again"), timeout=60, what="the state read again")
    assert len(lines("rollout state not readable")) <= settings.serving_workers, "logged once per worker and outage"
    assert not lines("rollout state changed"), "the outage changed no worker's rollout"
    applied(logged, rollout)


def test_a_rollout_survives_an_api_restart(logged, client, registry, settings):
    _, version_a, version_b = registry
    rollout = start(settings, client, CANARY, version_b, share=0.3)
    applied(logged, rollout)
    run_sh("serving", "restart")
    eventually(lambda: ready_version(settings.serving_url) == version_a, timeout=120, what="API back after restart")
    applied(logged, rollout)  # the same keys on the same variants, read from PostgreSQL again
