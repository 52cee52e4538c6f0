"""The penguin_training DAG run by Airflow's scheduler on the palmerpenguins rows (tests/services/penguin_project.py):
one mapped task per fold, a model far better than the majority class, its metrics, aliases and formats."""

from __future__ import annotations

import numpy as np
import pytest

import mlops_platform.keras_backend  # noqa: F401  (before keras)
from feast_repo import penguin_features as contract
from mlops_platform.projects import PENGUINS
from training_pipeline import classification_metrics, registry


@pytest.fixture(scope="module")
def mlflow_client(trained_penguins, settings):
    from mlops_platform import model_registry

    return model_registry.client(settings.mlflow_tracking_uri)


def test_the_dag_ran_one_mapped_task_per_fold(trained_penguins, settings):
    from mlops_platform.airflow_client import AirflowClient

    client = AirflowClient.from_settings(settings)
    path = f"/api/v2/dags/{PENGUINS.training_dag}/dagRuns/{trained_penguins['dag_run_id']}/taskInstances"
    instances = client.request("GET", f"{path}?limit=100")["task_instances"]
    folds = [ti for ti in instances if ti["task_id"] == "cross_validate_fold"]
    assert sorted(ti["map_index"] for ti in folds) == list(range(trained_penguins["folds"]))
    assert {ti["task_id"]: ti["state"] for ti in instances if ti["map_index"] < 0} == {
        "start": "success", "prepare_training_set": "success", "fit_final_model": "success",
        "aggregate": "success", "register_and_promote": "success"}
    assert all(ti["state"] == "success" for ti in folds)
    print(f"penguin_training DAG wall time: {trained_penguins['wall_seconds']:.1f} s")


def test_the_model_beats_the_majority_class_by_far(trained_penguins):
    # The majority class is ~44 % of the holdout; a model that learned nothing cannot pass this.
    assert trained_penguins["majority_baseline"] < 0.5
    assert trained_penguins["holdout_accuracy"] >= trained_penguins["majority_baseline"] + 0.25, trained_penguins


def test_per_class_and_fold_metrics_are_logged(trained_penguins, mlflow_client):
    parent = mlflow_client.get_run(trained_penguins["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["project"] == PENGUINS.name
    names = classification_metrics.metric_names(contract.CLASSES)
    assert {f"holdout_{name}" for name in names} <= set(parent.data.metrics)
    assert {f"cv_{name}_{stat}" for name in names for stat in ("mean", "std")} <= set(parent.data.metrics)
    children = mlflow_client.search_runs([parent.info.experiment_id],
                                         f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(c.data.params["fold"]) for c in children) == list(range(trained_penguins["folds"]))
    assert all(set(names) <= set(c.data.metrics) for c in children)
    rows_fit = int(parent.data.metrics["rows_fit"])
    assert all(int(c.data.params["train_rows"]) + int(c.data.params["test_rows"]) == rows_fit for c in children)


def test_aliases_and_version_tags(trained_penguins, mlflow_client):
    version = mlflow_client.get_model_version(PENGUINS.model_name, trained_penguins["version"])
    aliases = registry.aliases(mlflow_client, PENGUINS.model_name)
    assert aliases[registry.CHALLENGER] == trained_penguins["version"]
    # The first run on a registry promotes; a later one promotes unless worse on the same holdout.
    assert trained_penguins["decision"] in ("promoted", "kept_champion")
    if trained_penguins["decision"] == "promoted":
        assert aliases[registry.CHAMPION] == trained_penguins["version"]
    assert version.tags["project"] == PENGUINS.name
    assert {"holdout_accuracy", "majority_baseline", "holdout_macro_f1", "promotion_decision"} <= set(version.tags)


def test_the_model_loads_with_pyfunc_and_keras_and_answers_in_classes_order(trained_penguins):
    import mlflow.keras
    import mlflow.pyfunc

    from tests.services.penguin_project import penguin_frame
    from training_pipeline.penguin_promotion import model_features

    rows = penguin_frame()
    model = mlflow.pyfunc.load_model(trained_penguins["model_uri"])
    assert model_features(model) == list(contract.FEATURE_NAMES)
    inputs = rows[list(contract.FEATURE_NAMES)].astype("float32")
    probabilities = model.predict(inputs)
    assert probabilities.shape == (len(rows), len(contract.CLASSES))
    np.testing.assert_allclose(np.asarray(probabilities, np.float64).sum(axis=1), 1.0, rtol=1e-4)
    predicted = np.asarray(contract.CLASSES)[np.asarray(probabilities).argmax(axis=1)]
    assert (predicted == rows["species"].to_numpy()).mean() > 0.9

    network = mlflow.keras.load_model(trained_penguins["model_uri"])
    assert type(network.layers[0]).__name__ == "Normalization"
    np.testing.assert_allclose(network.predict(inputs.to_numpy(), verbose=0), np.asarray(probabilities), atol=1e-5)
