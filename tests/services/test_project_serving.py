"""The projects' routes end to end: a registered Keras penguin classifier served by the running API.

One module-scoped champion of `penguin_species` (a small Keras model of the contract's shape, trained for a
few epochs on palmerpenguins rows), reused by every test here; the alias is put back afterwards. The API's
probabilities must equal `mlflow.pyfunc.load_model("models:/penguin_species@champion")` on the same features
within 1e-5, for inline instances, for instances read from the online store (penguins landed, ingested and
materialized by simulation.penguins.prepare) and for batch scoring. Predictions reach
model_prediction_log and feedback model_ground_truth through the event spool, Kafka and the prediction logger.
"""

from __future__ import annotations

import uuid
from datetime import UTC

import httpx
import numpy as np
import pandas as pd
import pytest

import mlops_platform.keras_backend  # noqa: F401  (before keras)
from feast_repo import penguin_features as contract
from mlops_platform import local_service
from mlops_platform.postgres import connect
from mlops_platform.projects import PENGUINS, PROJECTS
from mlops_platform.services import BY_NAME
from tests.conftest import eventually

MODEL = PENGUINS.model_name
FEATURES = list(contract.FEATURE_NAMES)
ROWS = 120  # palmerpenguins rows used to train and to ask about


def penguin_rows(count: int = ROWS) -> pd.DataFrame:
    """The first `count` complete palmerpenguins rows, encoded as the contract encodes them."""
    from palmerpenguins import load_penguins

    raw = load_penguins().dropna(subset=list(contract.MEASUREMENT_NAMES)).sample(frac=1.0, random_state=3)
    raw = raw.head(count).reset_index(drop=True)
    encoded = pd.DataFrame([contract.encode_categories(i, s) for i, s in zip(raw.island, raw.sex, strict=True)])
    return pd.concat([raw, encoded], axis=1)


def register_keras_champion(settings, rows: pd.DataFrame) -> str:
    """A new version of `penguin_species` in the contract's model format, under the champion alias."""
    import keras
    import mlflow
    import mlflow.keras
    from mlflow.models import infer_signature

    from mlops_platform import model_registry
    from training_pipeline import tracking

    x = rows[FEATURES].astype("float32")
    y = np.array([contract.CLASSES.index(s) for s in rows.species])
    keras.utils.set_random_seed(1)
    normalization = keras.layers.Normalization()
    normalization.adapt(x.to_numpy())
    model = keras.Sequential([keras.Input((len(FEATURES),)), normalization, keras.layers.Dense(10, activation="relu"),
                              keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x.to_numpy(), y, epochs=15, batch_size=32, verbose=0)
    client = model_registry.client(settings.mlflow_tracking_uri)
    experiment = tracking.experiment_id(client, "serving-tests")
    # MLflow's keras flavour takes a tensor signature only: one float32 tensor of the 9 features, in order.
    signature = infer_signature(x.to_numpy(), model.predict(x.to_numpy(), verbose=0))
    with mlflow.start_run(run_name="project-serving-test", experiment_id=experiment):
        info = mlflow.keras.log_model(model, name="model", signature=signature, registered_model_name=MODEL,
                                      metadata={"features": FEATURES})
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL, settings.model_alias, version)
    return version


@pytest.fixture(scope="module")
def champion(mlflow_up, settings):
    from mlops_platform import model_registry

    client = model_registry.client(settings.mlflow_tracking_uri)
    previous = model_registry.find_champion(client, MODEL, settings.model_alias)
    rows = penguin_rows()
    version = register_keras_champion(settings, rows)
    yield version, rows
    if previous is None:
        client.delete_registered_model_alias(MODEL, settings.model_alias)
    else:
        client.set_registered_model_alias(MODEL, settings.model_alias, previous.version)


@pytest.fixture(scope="module")
def api(champion, kafka_up, settings):
    """The serving URL once its penguin route answers with the champion."""
    local_service.start(BY_NAME["serving"], settings)
    version, rows = champion
    probe = {"instances": [{"penguin_id": 1, **raw_fields(rows.iloc[0])}]}

    def serving_champion() -> bool:
        try:
            response = httpx.post(f"{settings.serving_url}/models/{MODEL}/predict", json=probe, timeout=5)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json()["model"]["version"] == version

    eventually(serving_champion, timeout=120, what=f"the API serving {MODEL} version {version}")
    return settings.serving_url


@pytest.fixture(scope="module")
def pyfunc_champion(champion, settings):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(f"models:/{MODEL}@{settings.model_alias}")


def raw_fields(row: pd.Series) -> dict:
    fields = {"island": row.island, **{m: float(row[m]) for m in contract.MEASUREMENT_NAMES}}
    return fields if pd.isna(row.sex) else {**fields, "sex": row.sex}


def predict(url: str, body: dict, model: str = MODEL) -> httpx.Response:
    return httpx.post(f"{url}/models/{model}/predict", json=body, timeout=10)


def assert_same_predictions(predictions: list[dict], expected: pd.DataFrame, key: str = "penguin_id") -> None:
    """Each prediction's probabilities equal pyfunc's (by key) within 1e-5, and so its label."""
    for item in predictions:
        probabilities = expected.loc[item[key]].to_numpy(np.float64)
        found = np.array([item["probabilities"][c] for c in contract.CLASSES])
        assert np.abs(found - probabilities).max() <= 1e-5, (item, probabilities)
        assert item["label"] == contract.CLASSES[int(np.argmax(probabilities))], item


def pyfunc_probabilities(model, features: pd.DataFrame) -> pd.DataFrame:
    result = model.predict(features[FEATURES].astype("float32"))
    return pd.DataFrame(np.asarray(getattr(result, "values", result)), index=features.index)


# ---------------------------------------------------------------------------------------------
# inline instances, the log and the feedback
# ---------------------------------------------------------------------------------------------
def test_inline_instances_are_scored_as_pyfunc_scores_them_and_logged(api, champion, pyfunc_champion, settings):
    version, rows = champion
    ids = list(range(1, 41))
    request_id = f"inline-{uuid.uuid4().hex[:12]}"
    body = {"request_id": request_id,
            "instances": [{"penguin_id": i, **raw_fields(rows.iloc[i - 1])} for i in ids]}
    response = predict(api, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"]["version"] == version and answer["missing"] == []
    assert {p["features_from"] for p in answer["predictions"]} == {"request"}
    features = rows.iloc[[i - 1 for i in ids]].set_index(pd.Index(ids))
    assert_same_predictions(answer["predictions"], pyfunc_probabilities(pyfunc_champion, features))

    def logged() -> list[tuple]:
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute("select entity_key, prediction, probabilities, model_version, features "
                        "from model_prediction_log where model_name = %s and request_id = %s", (MODEL, request_id))
            return cur.fetchall()

    eventually(lambda: len(logged()) == len(ids), timeout=60, what="the predictions in model_prediction_log")
    by_key = {int(row[0]): row for row in logged()}
    for item in answer["predictions"]:
        key, label, probabilities, logged_version, logged_features = by_key[item["penguin_id"]]
        assert (label, logged_version) == (item["label"], version)
        assert probabilities == pytest.approx(item["probabilities"], abs=1e-9)
        assert set(logged_features) == set(FEATURES)

    # feedback of a logged prediction lands in model_ground_truth; of a pair never predicted, a 404
    truth = rows.iloc[0].species
    url = f"{api}/models/{MODEL}/feedback"
    response = httpx.post(url, json={"request_id": request_id, "penguin_id": 1, "label": truth}, timeout=10)
    assert response.status_code == 202, response.text
    never = httpx.post(url, json={"request_id": f"never-{uuid.uuid4().hex[:8]}", "penguin_id": 1, "label": truth},
                       timeout=10)
    assert never.status_code == 404 and "no prediction" in never.json()["detail"]

    def ground_truth() -> list[tuple]:
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute("select entity_key, label from model_ground_truth where model_name = %s and request_id = %s",
                        (MODEL, request_id))
            return cur.fetchall()

    eventually(lambda: ground_truth() == [("1", truth)], timeout=60, what="the feedback in model_ground_truth")


@pytest.mark.parametrize("instance, field, problem", [
    ({"penguin_id": 5, "species": "Adelie"}, None, "species is not an input"),
    ({"penguin_id": 5, "island": "Atlantis", "bill_length_mm": 40.0, "bill_depth_mm": 18.0,
      "flipper_length_mm": 190.0, "body_mass_g": 3800.0}, "island", "'Biscoe', 'Dream' or 'Torgersen'"),
    ({"penguin_id": 5, "island": "Dream", "bill_length_mm": 40.0}, "bill_depth_mm", "Field required"),
    ({"penguin_id": "five"}, "penguin_id", "integer"),
])
def test_bad_instances_are_a_422_naming_the_problem_and_unknown_models_a_404(api, instance, field, problem):
    """Each refusal's `msg` says what was expected, and its `loc` ends with the field at fault."""
    response = predict(api, {"instances": [instance]})
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(problem in error["msg"] and (field is None or error["loc"][-1] == field) for error in errors), errors
    unknown = predict(api, {"instances": [{"penguin_id": 1}]}, model="emperor_species")
    assert unknown.status_code == 404
    assert all(p.model_name in unknown.json()["detail"] for p in PROJECTS.values()), unknown.text


def test_the_project_routes_are_counted_with_their_model(api):
    from tests.services.serving_api import metric

    before = metric(api, "serving_requests_total", endpoint="/models/{model_name}/predict", model=MODEL)
    assert predict(api, {"instances": [{"penguin_id": 1, "species": "Gentoo"}]}).status_code == 422
    eventually(lambda: metric(api, "serving_requests_total", endpoint="/models/{model_name}/predict",
                              model=MODEL, status="422") >= 1 and
               metric(api, "serving_requests_total", endpoint="/models/{model_name}/predict", model=MODEL) > before,
               timeout=10, what="the request counted with model=penguin_species")


# ---------------------------------------------------------------------------------------------
# online-store instances and batch scoring: penguins landed, ingested and materialized by the data pipeline
# ---------------------------------------------------------------------------------------------
DAY = "2025-03-03"  # a day of penguins of this module's own, with ids of its own
ID_OFFSET = 7_300_000


@pytest.fixture(scope="module")
def landed_penguins(api, settings):
    """The palmerpenguins rows of DAY in penguin_measurements and Redis (simulation.penguins.prepare)."""
    from simulation.penguins import prepare

    return prepare(settings, DAY, id_offset=ID_OFFSET)


def test_online_store_instances_and_batch_scoring_agree_with_pyfunc(landed_penguins, api, pyfunc_champion, settings):
    from datetime import datetime, timedelta

    from model_serving.project_batch import latest_rows, score_project

    at = datetime.fromisoformat(DAY).replace(tzinfo=UTC) + timedelta(days=1)
    latest = latest_rows(PENGUINS, at, settings).set_index("penguin_id")
    latest = latest[(latest.index > ID_OFFSET) & (latest.index <= ID_OFFSET + 40)]
    assert len(latest) >= 30, landed_penguins
    expected = pyfunc_probabilities(pyfunc_champion, latest)
    ids = [int(i) for i in latest.index]

    def answer() -> dict | None:  # the worker reads the penguin feature service from Feast's registry in time
        response = predict(api, {"instances": [{"penguin_id": i} for i in ids]})
        return response.json() if response.status_code == 200 else None

    body = eventually(answer, timeout=90, what="online-store predictions of the landed penguins")
    assert {p["features_from"] for p in body["predictions"]} == {"online_store"}
    assert body["missing"] == [] and len(body["predictions"]) == len(ids)
    assert_same_predictions(body["predictions"], expected)

    run_id = f"test-project-batch-{uuid.uuid4().hex[:8]}"
    report = score_project(PENGUINS, at, run_id, settings)
    assert report.scored == report.entities >= len(ids)
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select entity_key, prediction, probabilities from model_batch_predictions "
                    "where run_id = %s and model_name = %s", (run_id, MODEL))
        batch = {int(k): (label, probs) for k, label, probs in cur.fetchall()}
        cur.execute("delete from model_batch_predictions where run_id = %s", (run_id,))
    for item in body["predictions"]:
        label, probabilities = batch[item["penguin_id"]]
        assert label == item["label"]
        assert max(abs(probabilities[c] - item["probabilities"][c]) for c in contract.CLASSES) <= 1e-5
