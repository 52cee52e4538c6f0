"""The rollout scenario's pure parts: the planted models are as good and as bad as it says, its options."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from feast_repo.features import FEATURE_NAMES
from mlops_platform.rollout import Rollout
from simulation import planted_models, rollout_scenario

FEATURES = list(FEATURE_NAMES)


@pytest.fixture(scope="module")
def rows():
    return planted_models.labelled_rows(4000, seed=3)


def test_labelled_rows_follow_the_generators_link(rows):
    assert list(rows.columns) == ["driver_id", *FEATURES, "trip_completed"] or set(FEATURES) < set(rows.columns)
    assert set(rows["trip_completed"].unique()) == {0, 1}
    assert 0.2 < rows["trip_completed"].mean() < 0.8
    again = planted_models.labelled_rows(4000, seed=3)
    assert (again["trip_completed"] == rows["trip_completed"]).all(), "a seed gives the same rows"


def test_the_good_model_scores_better_than_the_one_fitted_on_permuted_labels(rows):
    live = planted_models.labelled_rows(3000, seed=4)  # other drivers: what the canary would see
    y = live["trip_completed"].to_numpy()
    scores = {kind: planted_models.fit(rows, FEATURES, kind, seed=0).predict(live[FEATURES].astype(np.float64))
              for kind in (planted_models.GOOD, planted_models.PERMUTED)}
    assert roc_auc_score(y, scores["good"]) > 0.65
    # Permuted labels leave nothing to learn: about the base rate for everyone (the penalty shrinks the
    # coefficients to about 0), so its Brier score is the labels' variance, the good model's well below.
    assert np.std(scores["permuted"]) < 0.02 < np.std(scores["good"])
    brier = {kind: brier_score_loss(y, np.clip(score, 0, 1)) for kind, score in scores.items()}
    assert brier["good"] < brier["permuted"] - 0.01, brier


def test_options_are_bounded_and_the_kind_is_required(capsys):
    args = rollout_scenario.parse_args(["--rollout", "worse"])
    assert (args.rollout, args.rate, args.share) == ("worse", 20.0, 0.1)
    for argv in (["--rollout", "same"], [], ["--rollout", "better", "--share", "0.9"],
                 ["--rollout", "better", "--rate", "0"]):
        with pytest.raises(SystemExit):
            rollout_scenario.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_the_report_gives_the_decision_its_timing_and_the_outcomes_used(capsys):
    started = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    rollout = Rollout("m", "r-1", "canary", 0.1, "3", "4", started, started)
    decision = {"action": "rollback", "actor": "monitoring", "reason": "challenger worse", "at":
                started + timedelta(seconds=95.25), "evidence": {"brier_difference": {"value": 0.03}}}
    planted = {"champion_before": "3", "champion": "3", "challenger": "4", "challenger_kind": "permuted",
               "features": FEATURES}
    summary = rollout_scenario.report("worse", planted, rollout, decision, {"champion": 1800, "challenger": 210})
    assert summary["decision"] == summary["expected"] == "rollback"
    assert summary["seconds_to_decision"] == 95.2 or summary["seconds_to_decision"] == 95.3
    rollout_scenario.print_report(summary)
    out = capsys.readouterr().out
    assert "decision: rollback by monitoring after" in out and "champion 1800, challenger 210" in out
    assert '"brier_difference"' in out and "champion before the scenario: v3" in out
    assert summary["champion_before_version"] == "3" and summary["features"] == FEATURES
