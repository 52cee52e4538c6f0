"""The online API scores each model on its own features, in its own order, whatever the service serves.

A champion may be trained on a subset of the feature service (`python -m training_pipeline --features ...`)
or list its features in another order: the API must ask the online store for the model's features, not
the service's, and build the matrix in the model's order.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from feast_repo.features import FEATURE_NAMES
from model_serving.features import OnlineRows
from model_serving.linear_form import exact_form
from model_serving.model_store import LoadedModel
from training_pipeline.model import make_model

SERVED = FEATURE_NAMES
ONLINE = {11: {"conv_rate": 0.9, "acc_rate": 0.2, "avg_daily_trips": 30.0},
          12: {"conv_rate": 0.1, "acc_rate": 0.8, "avg_daily_trips": 3.0},
          13: {"conv_rate": 0.5, "acc_rate": 0.5, "avg_daily_trips": 12.0}}
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


class OnlineStore:
    """The online store's contract: the values of the features asked for, in the order asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []
        self.decoder = SimpleNamespace(spec=SimpleNamespace(features=SERVED))  # what the service serves

    async def read(self, ids, features):
        self.asked.append(tuple(features))
        found = [d for d in ids if d in ONLINE]
        return OnlineRows(found, [tuple(ONLINE[d][f] for f in features) for d in found],
                          [d for d in ids if d not in ONLINE], 0)


def loaded(features: tuple[str, ...]) -> LoadedModel:
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.random((200, len(features))) * [50 if f == "avg_daily_trips" else 1 for f in features],
                     columns=list(features))
    pipeline = make_model(0.001, 0.5, 0).fit(x, x.iloc[:, 0] / x.iloc[:, 0].max() + 0.1 * rng.random(200))
    return LoadedModel("driver_trip_completion", "7", "run-7", features, pipeline, time.time(),
                       exact_form(pipeline, len(features)))


@pytest.fixture
def api(monkeypatch, make_settings):
    import sklearn

    from model_serving.api import create_app

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    root = logging.getLogger()
    handlers, level, sklearn_config = root.handlers[:], root.level, sklearn.get_config()
    settings = make_settings(SERVING_AUTH="off")
    app = create_app(settings, registry=CollectorRegistry())
    serving = app.state.serving
    serving.features = OnlineStore()
    yield TestClient(app, raise_server_exceptions=False), serving
    root.handlers[:], root.level = handlers, level  # create_app configures the process's logging
    sklearn.set_config(**sklearn_config)


@pytest.mark.parametrize("features", [("avg_daily_trips",), ("avg_daily_trips", "conv_rate"), SERVED,
                                      tuple(reversed(SERVED))], ids=["one", "subset-reordered", "all", "reversed"])
def test_a_model_is_scored_on_its_own_features_in_its_own_order(api, features):
    client, serving = api
    serving.models._current = model = loaded(features)
    response = client.post("/predict", json={"driver_ids": [12, 11, 13]})
    assert response.status_code == 200, response.text
    assert serving.features.asked[-1] == features, "the API asks the online store for the model's features"
    expected = model.pipeline.predict(pd.DataFrame([ONLINE[d] for d in (12, 11, 13)])[list(features)])
    np.testing.assert_allclose([s["score"] for s in response.json()["scores"]], expected, rtol=1e-12)
