"""Behavioural tests of the model: the real pipeline (training_pipeline.model.make_model, the default
configuration), trained on generated data, held to properties a ranking model must have.

The generated label rises with every feature (simulation.generate.completion_logit), so:
- direction: more completed trips, a higher conv_rate or acc_rate never lower a driver's score;
- minimum functionality: the score orders held-out drivers well better than chance, and its mean is
  the completion share (the score is a regression on the 0/1 outcome);
- invariance: a driver's score does not depend on the other drivers of the request, and a missing
  feature is scored as the training median (what serving meets when a driver's stats are missing).
No exact float is compared. The last test checks that each property can fail: a model with its sign
flipped, its scaler dropped, or two features swapped at serving time breaks at least one.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from simulation.generate import generate_driver_stats, generate_orders
from training_pipeline import model
from training_pipeline.config import DEFAULTS, DEVELOPMENT_SEED
from training_pipeline.training_set import LABEL

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
# A step up of each feature, within what drivers really have.
STEPS = {"conv_rate": 0.1, "acc_rate": 0.1, "avg_daily_trips": 5.0}
MIN_ROC_AUC = 0.65  # the trained model reaches about 0.72-0.76 on this data; chance is 0.5
MAX_MEAN_GAP = 0.05  # |mean score - completion share| on the holdout; about 0.01-0.02 for the trained model


@pytest.fixture(scope="module")
def labelled() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generated orders joined to the driver's latest stats, split by time: (fit part, later holdout)."""
    stats = generate_driver_stats(drivers=200, days=14, end="2022-05-01", seed=0)
    orders = generate_orders(stats, seed=0)
    data = pd.merge_asof(orders.sort_values("event_timestamp"),
                         stats.sort_values("event_timestamp")[["driver_id", "event_timestamp", *FEATURES]],
                         on="event_timestamp", by="driver_id", direction="backward")
    cut = data["event_timestamp"].quantile(0.8)
    return data[data["event_timestamp"] < cut], data[data["event_timestamp"] >= cut]


@pytest.fixture(scope="module")
def trained(labelled) -> Pipeline:
    fit_part, _ = labelled
    pipeline = model.make_model(DEFAULTS.alpha, DEFAULTS.l1_ratio, DEVELOPMENT_SEED)
    return pipeline.fit(model.inputs(fit_part, FEATURES), model.target(fit_part))


# ---- the properties, as checks that say what they found ----------------------------------------------
def direction_problems(scorer, x: pd.DataFrame) -> list[str]:
    score = scorer.predict(x)
    problems = []
    for feature, step in STEPS.items():
        raised = scorer.predict(x.assign(**{feature: x[feature] + step}))
        lowered = int((raised < score - 1e-9).sum())
        if lowered:
            problems.append(f"raising {feature} by {step} lowered the score of {lowered} of {len(x)} drivers")
    return problems


def functionality_problems(scorer, holdout: pd.DataFrame) -> list[str]:
    score, outcome = scorer.predict(model.inputs(holdout, FEATURES)), model.target(holdout)
    problems = []
    if (auc := roc_auc_score(outcome, score)) < MIN_ROC_AUC:
        problems.append(f"holdout ROC AUC {auc:.3f} is below {MIN_ROC_AUC}")
    if (gap := abs(score.mean() - outcome.mean())) > MAX_MEAN_GAP:
        problems.append(f"mean score {score.mean():.3f} is {gap:.3f} from the completion share {outcome.mean():.3f}")
    return problems


# ---- the trained model has them ------------------------------------------------------------------------
def test_more_trips_or_higher_rates_never_lower_the_score(trained, labelled):
    _, holdout = labelled
    assert direction_problems(trained, model.inputs(holdout, FEATURES)) == []


def test_the_score_orders_drivers_and_matches_the_completion_share_on_later_labels(trained, labelled):
    _, holdout = labelled
    assert LABEL == "trip_completed" and holdout[LABEL].nunique() == 2
    assert functionality_problems(trained, holdout) == []


def test_a_drivers_score_does_not_depend_on_the_rest_of_the_request(trained, labelled):
    _, holdout = labelled
    x = model.inputs(holdout, FEATURES).head(50)
    together = trained.predict(x)
    alone = np.array([trained.predict(x.iloc[[i]])[0] for i in range(len(x))])
    reordered = trained.predict(x.iloc[::-1])[::-1]
    np.testing.assert_allclose(alone, together)
    np.testing.assert_allclose(reordered, together)


def test_a_missing_feature_is_scored_as_the_training_median(trained, labelled):
    fit_part, holdout = labelled
    x = model.inputs(holdout, FEATURES).head(20)
    for feature in FEATURES:
        missing = trained.predict(x.assign(**{feature: np.nan}))
        median = trained.predict(x.assign(**{feature: float(fit_part[feature].median())}))
        assert np.isfinite(missing).all()
        np.testing.assert_allclose(missing, median)


# ---- and each property can fail -----------------------------------------------------------------------
class _ServedWithSwappedColumns:
    """The trained model fed conv_rate where it expects avg_daily_trips and the other way round."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        swapped = x.rename(columns={"conv_rate": "avg_daily_trips", "avg_daily_trips": "conv_rate"})
        return self.pipeline.predict(swapped[FEATURES])


def _sign_flipped(pipeline: Pipeline) -> Pipeline:
    broken = copy.deepcopy(pipeline)
    broken.named_steps["regress"].coef_ = -broken.named_steps["regress"].coef_
    return broken


def _scaler_dropped(pipeline: Pipeline) -> Pipeline:
    return Pipeline([(name, step) for name, step in pipeline.steps if name != "scale"])


@pytest.mark.parametrize("breakage", [_sign_flipped, _scaler_dropped, _ServedWithSwappedColumns],
                         ids=["sign flipped", "scaler dropped", "features swapped"])
def test_a_broken_model_breaks_a_property(trained, labelled, breakage):
    _, holdout = labelled
    broken = breakage(trained)
    found = direction_problems(broken, model.inputs(holdout, FEATURES)) + functionality_problems(broken, holdout)
    assert found, "a broken model passed every behavioural check"
