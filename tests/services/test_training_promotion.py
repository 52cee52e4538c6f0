"""Promotion against real services: a challenger on other features than the champion's, a champion on a
feature no longer served, and runs that fail after registering their version (training_pipeline/promotion.py).

Rows and model names as in test_training_pipeline.py: driver ids from 8,000,000 up, a month of 2022 each.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.services.training_data import FEATURES, load_generated, run_cli, window
from training_pipeline import flow, model, registry, tracking


# ---------------------------------------------------------------------------------------------
# models on other features than the champion's, and runs that fail after registering
# ---------------------------------------------------------------------------------------------
def log_version(mlflow_client, name: str, columns: list[str], seed: int) -> str:
    """A pipeline fitted on random values of `columns`, logged with its signature and registered under `name`."""
    import mlflow.sklearn  # binds `mlflow` too
    from mlflow.models import infer_signature

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.random((200, len(columns))), columns=columns)
    y = (x.iloc[:, 0] + rng.normal(0, 0.3, 200) > 0.5).astype(np.float64)
    pipeline = model.make_model(0.001, 0.5, seed).fit(x, y)
    # An explicit experiment, not mlflow.set_experiment: that would leak into later tests of the session.
    with mlflow.start_run(experiment_id=tracking.experiment_id(mlflow_client, "training-tests")):
        info = mlflow.sklearn.log_model(pipeline, name="model", signature=infer_signature(x, pipeline.predict(x)),
                                        registered_model_name=name, pip_requirements=model.requirements(),
                                        skops_trusted_types=model.SKOPS_TRUSTED_TYPES)
    return str(info.registered_model_version)


def damage_model_file(mlflow_client, name: str, version: str) -> None:
    """Overwrite the version's serialized model in the artifact store: MLmodel still reads, the model cannot load."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(mlflow_client.get_model_version_download_uri(name, version))
    files = [f.path for f in repository.list_artifacts()]
    assert "model.skops" in files, files
    with tempfile.TemporaryDirectory() as folder:
        damaged = Path(folder) / "model.skops"
        damaged.write_bytes(b"a truncated upload")
        repository.log_artifact(str(damaged))


def run_named(mlflow_client, experiment: str, run_name: str):
    experiment_id = mlflow_client.get_experiment_by_name(experiment).experiment_id
    runs = mlflow_client.search_runs([experiment_id], f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_a_challenger_on_a_feature_subset_is_compared_with_the_champion_on_the_same_rows(offline_store,
                                                                                          mlflow_client):
    load_generated(8_300_001, drivers=60, days=14, end="2022-07-01", seed=31)
    labels = window("2022-07-01", 14)
    name = f"test_subset_{uuid.uuid4().hex[:8]}"
    champion = flow.run({**labels, "model_name": name, "folds": 3, "min_rows": 500, "rmse_threshold": 0.5},
                        f"test-all-features-{uuid.uuid4().hex[:6]}")
    assert champion["decision"] == "promoted", champion

    # What the new user ran: a challenger on one feature, the champion on three.
    subset = run_cli("--features", "avg_daily_trips", "--folds", "3", "--min-rows", "500", "--rmse-threshold", "0.5",
                     "--model-name", name, "--label-start", labels["label_start"], "--label-end", labels["label_end"])
    assert subset["decision"] in ("promoted", "kept_champion"), subset
    parent = mlflow_client.get_run(subset["parent_run_id"])
    assert parent.info.status == "FINISHED"
    version = mlflow_client.get_model_version(name, subset["version"])
    for tags in (version.tags, parent.data.tags):
        assert tags["promotion_decision"] == subset["decision"] and tags["promotion_reason"] == subset["reason"]
        assert tags["compared_with_version"] == champion["version"]
        assert tags["challenger_features"] == "avg_daily_trips"
        assert tags["champion_features"] == ",".join(FEATURES) and tags["champion_features_from"] == "signature"
        assert tags["champion_features_fetched"] == "conv_rate,acc_rate" and tags["champion_rows_imputed"] == "0"

    # The same holdout rows for both: each model's AUC equals the one its own run measured on that holdout.
    champion_run = mlflow_client.get_run(champion["parent_run_id"])
    assert parent.data.params["holdout_start"] == champion_run.data.params["holdout_start"]
    assert version.tags["holdout_rows"] == str(int(champion_run.data.metrics["rows_holdout"]))
    assert float(version.tags["champion_holdout_roc_auc"]) == pytest.approx(
        champion_run.data.metrics["holdout_roc_auc"], abs=1e-6)
    assert float(version.tags["challenger_holdout_roc_auc"]) == pytest.approx(
        parent.data.metrics["holdout_roc_auc"], abs=1e-6)
    expected = ({"champion": subset["version"]} if subset["decision"] == "promoted"
                else {"champion": champion["version"], "challenger": subset["version"]})
    assert registry.aliases(mlflow_client, name) == expected


def test_a_champion_on_a_feature_no_longer_served_is_kept_unless_the_run_asks_to_replace_it(offline_store,
                                                                                            mlflow_client):
    load_generated(8_400_001, drivers=60, days=14, end="2022-08-01", seed=37)
    name = f"test_unservable_{uuid.uuid4().hex[:8]}"
    old = log_version(mlflow_client, name, ["conv_rate", "rating"], seed=5)  # "rating" left the feature service
    mlflow_client.set_registered_model_alias(name, registry.CHAMPION, old)
    base = {**window("2022-08-01", 14), "model_name": name, "folds": 3, "min_rows": 500, "rmse_threshold": 0.5,
            "features": ["conv_rate", "acc_rate"]}

    skipped = flow.run(base, f"test-unservable-{uuid.uuid4().hex[:6]}")
    assert skipped["decision"] == "comparison_skipped", skipped
    assert f"champion version {old} needs feature(s) ['rating']" in skipped["reason"]
    assert "no longer serves" in skipped["reason"] and "replace_unservable_champion=true" in skipped["reason"]
    assert registry.aliases(mlflow_client, name) == {"champion": old, "challenger": skipped["version"]}
    tags = mlflow_client.get_model_version(name, skipped["version"]).tags
    assert tags["champion_features_unserved"] == "rating" and "champion_holdout_roc_auc" not in tags
    assert mlflow_client.get_run(skipped["parent_run_id"]).info.status == "FINISHED"

    replaced = flow.run({**base, "replace_unservable_champion": True}, f"test-replace-{uuid.uuid4().hex[:6]}")
    assert replaced["decision"] == "promoted" and "as replace_unservable_champion asks" in replaced["reason"]
    assert registry.aliases(mlflow_client, name) == {"champion": replaced["version"]}


def test_a_run_failing_after_registration_leaves_no_alias_on_its_version(offline_store, mlflow_client):
    load_generated(8_500_001, drivers=60, days=14, end="2022-09-01", seed=41)
    name = f"test_failed_run_{uuid.uuid4().hex[:8]}"
    champion = log_version(mlflow_client, name, FEATURES, seed=7)
    loser = log_version(mlflow_client, name, FEATURES, seed=8)
    mlflow_client.set_registered_model_alias(name, registry.CHAMPION, champion)
    mlflow_client.set_registered_model_alias(name, registry.CHALLENGER, loser)
    damage_model_file(mlflow_client, name, champion)  # the champion's artifacts no longer load

    run_name = f"test-failing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(Exception) as raised:  # its message is checked below, after the aliases
        flow.run({**window("2022-09-01", 14), "model_name": name, "folds": 3, "min_rows": 500,
                  "rmse_threshold": 0.5}, run_name)

    parent = run_named(mlflow_client, "driver_trip_completion", run_name)
    assert parent.info.status == "FAILED" and parent.data.tags["failed_step"] == "register_and_promote"
    registered = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{parent.info.run_id}'")
    assert len(registered) == 1, "the run got as far as registering its version"
    version = registered[0]
    assert registry.aliases(mlflow_client, name) == {"champion": champion, "challenger": loser}
    assert version.tags["promotion_decision"] == parent.data.tags["promotion_decision"] == "failed"
    assert version.tags["failed_step"] == "register_and_promote"
    assert f"could not load the champion, version {champion} of '{name}'" in str(raised.value)
    assert f"could not load the champion, version {champion}" in version.tags["failure_reason"]


def test_a_runs_alias_changes_are_undone_and_a_stale_decision_moves_no_alias(mlflow_up, mlflow_client):
    name = f"test_aliases_{uuid.uuid4().hex[:8]}"
    champion = log_version(mlflow_client, name, FEATURES, seed=9)
    logged = mlflow_client.get_model_version(name, champion)
    model_id = logged.source.removeprefix("models:/")  # the version's source is its logged model
    challenger, new = (registry.register(mlflow_client, name, logged.source, logged.run_id, model_id, {})
                       for _ in range(2))
    before = {"champion": champion, "challenger": challenger}
    for alias, version in before.items():
        mlflow_client.set_registered_model_alias(name, alias, version)

    for decision, published in ((registry.PROMOTED, {"champion": new}),
                                (registry.KEPT_CHAMPION, {"champion": champion, "challenger": new})):
        writer = registry.AliasWriter(mlflow_client, name)
        writer.publish(new, registry.Decision(decision, "test"), compared_with=champion)
        assert registry.aliases(mlflow_client, name) == published
        writer.undo()
        assert registry.aliases(mlflow_client, name) == before

    with pytest.raises(RuntimeError, match=f"moved from version {challenger} to {champion}"):
        registry.AliasWriter(mlflow_client, name).publish(new, registry.Decision(registry.PROMOTED, "test"),
                                                          compared_with=challenger)
    assert registry.aliases(mlflow_client, name) == before

    # A retried task finds the versions its killed attempt registered without deciding, and tags them failed.
    undecided = registry.undecided_versions(mlflow_client, name, logged.run_id)
    assert sorted(undecided) == sorted([champion, challenger, new])
    registry.mark_failed(mlflow_client, name, new, "register_and_promote", RuntimeError("killed"))
    undecided = registry.undecided_versions(mlflow_client, name, logged.run_id)
    assert sorted(undecided) == sorted([champion, challenger])
    assert mlflow_client.get_model_version(name, new).tags["failure_reason"] == "RuntimeError: killed"
