"""The penguin trainer without services: its metrics, its splits, the scaling fitted on the training rows
only, the network's shape and output order, its configuration and the DAG the shared factory builds."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from feast_repo.penguin_features import CLASSES, FEATURE_NAMES, MEASUREMENT_NAMES, encode_categories
from mlops_platform.settings import REPO_ROOT
from training_pipeline import classification_metrics as cm
from training_pipeline import penguin_model
from training_pipeline.config import ConfigError
from training_pipeline.penguin_config import DEFAULTS, build_config, param_schemas

URI = "http://127.0.0.1:5000"


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    """The palmerpenguins rows with every measurement, encoded as the feature contract says."""
    import palmerpenguins

    raw = palmerpenguins.load_penguins().dropna(subset=list(MEASUREMENT_NAMES)).reset_index(drop=True)
    indicators = pd.DataFrame([encode_categories(i, s) for i, s in zip(raw["island"], raw["sex"], strict=True)])
    return pd.concat([raw, indicators], axis=1)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def test_metrics_of_a_known_confusion_matrix():
    counts = np.array([[5, 1, 0],   # Adelie: 5 right, 1 called Chinstrap
                       [2, 3, 0],   # Chinstrap: 2 called Adelie
                       [0, 0, 4]])  # Gentoo: all right
    metrics = cm.from_confusion(counts, CLASSES)
    assert metrics["accuracy"] == pytest.approx(12 / 15)
    assert metrics["precision_Adelie"] == pytest.approx(5 / 7) and metrics["recall_Adelie"] == pytest.approx(5 / 6)
    assert metrics["f1_Adelie"] == pytest.approx(10 / 13)
    assert metrics["precision_Chinstrap"] == pytest.approx(3 / 4)
    assert metrics["recall_Chinstrap"] == pytest.approx(3 / 5) and metrics["f1_Chinstrap"] == pytest.approx(2 / 3)
    assert metrics["f1_Gentoo"] == pytest.approx(1.0)
    assert metrics["macro_f1"] == pytest.approx((10 / 13 + 2 / 3 + 1) / 3)
    assert metrics["macro_precision"] == pytest.approx((5 / 7 + 3 / 4 + 1) / 3)
    assert tuple(metrics) == cm.metric_names(CLASSES)


def test_a_class_never_predicted_scores_zero_and_labels_give_the_same_matrix():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 0, 2, 2]
    metrics = cm.classification_metrics(y_true, y_pred, CLASSES)
    assert metrics["precision_Chinstrap"] == 0 and metrics["recall_Chinstrap"] == 0 and metrics["f1_Chinstrap"] == 0
    assert metrics["recall_Adelie"] == 1 and metrics["precision_Adelie"] == pytest.approx(0.5)
    assert cm.confusion_matrix(y_true, y_pred, 3).tolist() == [[2, 0, 0], [2, 0, 0], [0, 0, 2]]


def test_metrics_agree_with_scikit_learn_on_random_labels():
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(7)
    y_true, y_pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    ours = cm.classification_metrics(y_true, y_pred, CLASSES)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert [ours[f"f1_{c}"] for c in CLASSES] == pytest.approx(f1.tolist())
    assert [ours[f"precision_{c}"] for c in CLASSES] == pytest.approx(precision.tolist())
    assert ours["macro_recall"] == pytest.approx(recall.mean())


def test_majority_baseline_answers_the_training_rows_most_frequent_class():
    assert cm.majority_baseline([0, 0, 1, 2], [0, 1, 1, 1]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="class indices must be in 0..2"):
        cm.confusion_matrix([0, 3], [0, 1], 3)


def test_summary_is_mean_and_std_across_folds():
    summary = cm.summarize([{"accuracy": 0.8}, {"accuracy": 1.0}])
    assert summary == {"cv_accuracy_mean": pytest.approx(0.9), "cv_accuracy_std": pytest.approx(0.1)}


# ---------------------------------------------------------------------------------------------
# splits and the scaling inside the model
# ---------------------------------------------------------------------------------------------
def test_holdout_and_folds_are_stratified_disjoint_and_seeded(penguins):
    y = penguin_model.targets(penguins)
    splits = penguin_model.split(y, 0.2, 5, seed=42)
    assert not set(splits.holdout) & set(splits.fit)
    assert sorted(splits.holdout + splits.fit) == list(range(len(y)))
    assert sorted(i for test in splits.fold_tests for i in test) == splits.fit  # the folds partition the rest
    shares = np.bincount(y) / len(y)
    for rows in (splits.holdout, *splits.fold_tests):
        assert np.abs(np.bincount(y[rows], minlength=3) / len(rows) - shares).max() < 0.06
    train, test = splits.fold(2)
    assert not set(train) & set(test) and len(train) + len(test) == len(splits.fit)
    assert penguin_model.split(y, 0.2, 5, seed=42) == splits
    assert penguin_model.split(y, 0.2, 5, seed=7).holdout != splits.holdout


def test_a_species_too_rare_for_the_folds_is_refused_with_the_counts():
    y = np.array([0] * 40 + [1] * 40 + [2] * 4)
    with pytest.raises(ValueError, match=r"at least 10 labelled rows .*'Gentoo': 4"):
        penguin_model.split(y, 0.2, 5, seed=1)


def test_unknown_species_is_an_error_not_a_fourth_class():
    with pytest.raises(ValueError, match="Emperor"):
        penguin_model.targets(pd.DataFrame({"species": ["Adelie", "Emperor"]}))


def test_the_normalization_holds_the_training_folds_statistics_not_the_whole_sets(penguins):
    x, y = penguin_model.inputs(penguins), penguin_model.targets(penguins)
    train, _ = penguin_model.split(y, 0.2, 5, seed=42).fold(0)
    network = penguin_model.build_model(x[train], learning_rate=0.01, seed=42)
    layer = network.get_layer("normalize")
    mean, variance = np.asarray(layer.mean).ravel(), np.asarray(layer.variance).ravel()
    measured = [FEATURE_NAMES.index(name) for name in MEASUREMENT_NAMES]
    indicators = [i for i in range(len(FEATURE_NAMES)) if i not in measured]
    np.testing.assert_allclose(mean[measured], x[train][:, measured].astype(np.float64).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(variance[measured], x[train][:, measured].astype(np.float64).var(axis=0), rtol=1e-4)
    whole = x[:, measured].astype(np.float64).mean(axis=0)
    assert np.abs(mean[measured] - whole).max() > 1e-3  # the test rows did not leak into the scaling
    assert (mean[indicators] == 0).all() and (variance[indicators] == 1).all()


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
def test_the_network_is_the_courses_mlp_with_its_scaling_first(penguins):
    import keras

    network = penguin_model.build_model(penguin_model.inputs(penguins), learning_rate=0.01, seed=1)
    layers = network.layers
    assert isinstance(layers[0], keras.layers.Normalization)
    assert [(type(layer).__name__, getattr(layer, "units", None)) for layer in layers[1:]] == [
        ("Dense", 10), ("Dense", 8), ("Dense", 3)]
    assert [layer.activation.__name__ for layer in layers[1:]] == ["relu", "relu", "softmax"]
    assert isinstance(network.optimizer, keras.optimizers.SGD)
    assert float(network.optimizer.learning_rate) == pytest.approx(0.01)
    probabilities = penguin_model.predict_proba(network, penguin_model.inputs(penguins.head(7)))
    assert probabilities.shape == (7, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_trained_network_answers_in_classes_order_and_is_reproducible(penguins):
    x, y = penguin_model.inputs(penguins), penguin_model.targets(penguins)
    splits = penguin_model.split(y, 0.2, 5, seed=42)
    settings = {"epochs": 40, "batch_size": 16, "learning_rate": 0.01, "seed": 42}
    network = penguin_model.fit(x[splits.fit], y[splits.fit], **settings)
    metrics = penguin_model.evaluate(network, x[splits.holdout], y[splits.holdout])
    assert metrics["accuracy"] >= cm.majority_baseline(y[splits.fit], y[splits.holdout]) + 0.25
    # Column k is CLASSES[k]: each species' typical penguin gets its own column's highest probability.
    typical = np.stack([x[y == k].mean(axis=0) for k in range(len(CLASSES))])
    assert penguin_model.predict_proba(network, typical).argmax(axis=1).tolist() == [0, 1, 2]
    again = penguin_model.fit(x[splits.fit], y[splits.fit], **settings)
    np.testing.assert_allclose(penguin_model.predict_proba(again, x), penguin_model.predict_proba(network, x),
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------
# configuration, promotion rule, DAG
# ---------------------------------------------------------------------------------------------
def test_every_bad_value_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        build_config({"epochs": 0, "folds": 1, "learning_rate": 2, "mode": "fast", "epocs": 3}, URI)
    message = str(error.value)
    for expected in ("epochs must be between 1", "folds must be between 2", "learning_rate must be in (0",
                     "mode must be one of development, production", "unknown configuration keys ['epocs']"):
        assert expected in message, message
    assert build_config({"epochs": "12", "folds": 3}, URI).epochs == 12


def test_params_carry_the_defaults_and_the_bounds():
    schemas = param_schemas()
    assert schemas["epochs"]["default"] == DEFAULTS.epochs and schemas["epochs"]["minimum"] == 1
    assert schemas["holdout_share"]["exclusiveMinimum"] == 0 and schemas["mode"]["enum"] == ["development",
                                                                                              "production"]
    assert "tracking_uri" not in schemas and "experiment" not in schemas


def test_a_challenger_is_promoted_unless_worse_than_the_champion():
    from training_pipeline.penguin_promotion import decide

    assert decide(0.9, None).promote
    assert decide(0.9, 0.9).promote
    assert not decide(0.89, 0.9).promote


@pytest.fixture(scope="module")
def dag(dagbag):
    assert dagbag.import_errors == {}
    return dagbag.dags["penguin_training"]


def test_the_factory_builds_the_training_graph_with_mapped_folds(dag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    upstream = {task.task_id: task.upstream_task_ids for task in dag.tasks}
    assert upstream == {
        "start": set(),
        "prepare_training_set": {"start"},
        "cross_validate_fold": {"start", "prepare_training_set"},
        "fit_final_model": {"start", "prepare_training_set"},
        "aggregate": {"start", "cross_validate_fold"},
        "register_and_promote": {"start", "aggregate", "fit_final_model"},
    }
    assert isinstance(dag.get_task("cross_validate_fold"), MappedOperator)
    assert dag.max_active_runs == 1 and dag.catchup is False and "penguins" in dag.tags
    assert dag.params["epochs"] == DEFAULTS.epochs


def test_parsing_the_penguin_dag_loads_no_keras_feast_mlflow_or_steps():
    probe = ("import runpy, sys\n"
             "import mlops_platform.settings as s\n"
             "s.get_settings = lambda: (_ for _ in ()).throw(AssertionError('settings read at parse time'))\n"
             "runpy.run_path('airflow/dags/penguin_training.py')\n"
             "heavy = ('training_pipeline.penguin_flow', 'training_pipeline.penguin_model', 'keras', 'jax', "
             "'feast', 'mlflow', 'sklearn')\n"
             "print(sorted(m for m in heavy if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_cli_has_a_flag_per_option():
    from training_pipeline.penguins import parser

    args = parser().parse_args(["--epochs", "5", "--batch-size", "8", "--holdout-share", "0.25"])
    assert (args.epochs, args.batch_size, args.holdout_share) == (5, 8, 0.25)


# ---------------------------------------------------------------------------------------------
# logging the Keras flavour with an input example
# ---------------------------------------------------------------------------------------------
def test_a_keras_model_logs_with_its_input_example_and_loads_both_ways(temporary_mlflow, penguins):
    import mlflow
    import mlflow.keras
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from tests.conftest import TEST_EXPERIMENT
    from training_pipeline.keras_logging import log_keras_model
    from training_pipeline.penguin_promotion import model_features

    x = penguin_model.inputs(penguins)
    network = penguin_model.build_model(x, learning_rate=0.01, seed=3)
    saved = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(temporary_mlflow.tracking_uri)
    try:
        experiment = temporary_mlflow.get_experiment_by_name(TEST_EXPERIMENT).experiment_id
        with mlflow.start_run(experiment_id=experiment):
            info = log_keras_model(network, signature=infer_signature(x[:5], penguin_model.predict_proba(
                network, x[:5]).astype(np.float32)), input_example=x[:5], metadata={"features": list(FEATURE_NAMES)},
                pip_requirements=penguin_model.requirements())
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
        keras_model = mlflow.keras.load_model(info.model_uri)
        assert info.saved_input_example_info is not None
    finally:
        mlflow.set_tracking_uri(saved)
    assert model_features(pyfunc) == list(FEATURE_NAMES)
    frame = penguins[list(FEATURE_NAMES)].astype("float32").head(4)
    expected = penguin_model.predict_proba(network, frame.to_numpy())
    np.testing.assert_allclose(np.asarray(pyfunc.predict(frame)), expected, atol=1e-6)
    assert type(keras_model.layers[0]).__name__ == "Normalization"
