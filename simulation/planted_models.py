"""Models of known quality for the rollout scenario: the platform's pipeline fitted on the generator's link, or
on the same rows with their labels permuted (a model that has learnt nothing), registered like training does.

The rows are drawn as the data generator draws a driver's stats, and each label from the true link plus the
booking noise (simulation.traffic): a model fitted on them ranks live bookings as well as the platform's own,
and one fitted on permuted labels scores everyone about the base rate. Each version is logged with a
signature on the champion's features, pinned requirements and monitoring's drift reference, as
training_pipeline.final_model logs the platform's models, so serving, batch scoring and monitoring treat it
as any other version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from feast_repo.features import FEATURE_NAMES
from mlops_platform.settings import Settings
from simulation.drift_scenario import normal_stats
from simulation.traffic import LABEL_NOISE, completion_probability

TRAINING_ROWS = 5_000
EXPERIMENT = "rollout-scenario"
GOOD, PERMUTED = "good", "permuted"


def labelled_rows(rows: int, seed: int) -> pd.DataFrame:
    """Driver stats as the generator draws them, with trip_completed drawn from the true link and its noise."""
    rng = np.random.default_rng(seed)
    stats = normal_stats(range(rows), rng)
    noise = rng.normal(0.0, LABEL_NOISE, rows)
    probability = np.array([completion_probability((r.conv_rate, r.acc_rate, r.avg_daily_trips), n)
                            for r, n in zip(stats.itertuples(), noise, strict=True)])
    return stats.assign(trip_completed=(rng.random(rows) < probability).astype(np.int64))


def champion_features(mlflow_client, settings: Settings) -> list[str]:
    """The features the current champion reads (its signature), or every served feature without a champion."""
    import mlflow.pyfunc

    from mlops_platform.model_registry import find_champion

    champion = find_champion(mlflow_client, settings.model_name, settings.model_alias)
    if champion is None:
        return list(FEATURE_NAMES)
    schema = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{champion.version}").metadata.get_input_schema()
    return list(schema.input_names()) if schema else list(FEATURE_NAMES)


def fit(rows: pd.DataFrame, features: Sequence[str], kind: str, seed: int):
    """The platform's pipeline (training defaults), fitted on the true labels or on a permutation of them."""
    from training_pipeline.config import TrainingConfig
    from training_pipeline.model import inputs, make_model

    defaults = TrainingConfig(tracking_uri="")
    labels = rows["trip_completed"].to_numpy(np.float64)
    if kind == PERMUTED:
        labels = np.random.default_rng(seed + 1).permutation(labels)
    return make_model(defaults.alpha, defaults.l1_ratio, seed).fit(inputs(rows, list(features)), labels)


def register(mlflow_client, settings: Settings, rows: pd.DataFrame, features: Sequence[str], kind: str,
             seed: int, alias: str) -> str:
    """Fit, log and register a version of MODEL_NAME, put `alias` on it; returns its version."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from training_pipeline import model, tracking
    from training_pipeline.final_model import REFERENCE_ARTIFACT

    x = model.inputs(rows, list(features))
    pipeline = fit(rows, features, kind, seed)
    with mlflow.start_run(experiment_id=tracking.experiment_id(mlflow_client, EXPERIMENT),
                          run_name=f"rollout-scenario-{kind}"), tempfile.TemporaryDirectory() as folder:
        mlflow.set_tags({"rollout_scenario": kind, "features": ",".join(features)})
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=settings.model_name,
                                        signature=infer_signature(x, pipeline.predict(x)),
                                        input_example=x.head(5), pip_requirements=model.requirements(),
                                        skops_trusted_types=model.SKOPS_TRUSTED_TYPES)
        path = Path(folder) / Path(REFERENCE_ARTIFACT).name
        x.assign(score=pipeline.predict(x)).to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(REFERENCE_ARTIFACT).parent))
    version = str(info.registered_model_version)
    mlflow_client.set_registered_model_alias(settings.model_name, alias, version)
    return version
