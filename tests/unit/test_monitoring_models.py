"""Per-model monitoring without services: per-class quality from known rows, the drift decision on planted
shifts, and the gauges' `model` label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from feast_repo.penguin_features import CLASSES, FEATURE_NAMES
from monitoring_service.class_quality import class_quality
from monitoring_service.model_drift import model_drift
from monitoring_service.model_metrics import ModelMetrics


def test_per_class_quality_matches_the_confusion_counts() -> None:
    actual = ["Adelie"] * 4 + ["Chinstrap"] * 2 + ["Gentoo"] * 4
    predicted = ["Adelie", "Adelie", "Adelie", "Chinstrap", "Chinstrap", "Adelie", *["Gentoo"] * 4]
    quality = class_quality(predicted, actual, CLASSES)
    assert quality.rows == 10
    assert quality.accuracy == pytest.approx(0.8)
    # Adelie: 3 right of 4 predicted, 3 of 4 true; Chinstrap: 1 of 2 predicted, 1 of 2 true; Gentoo: 4 of 4
    assert quality.precision == pytest.approx({"Adelie": 0.75, "Chinstrap": 0.5, "Gentoo": 1.0})
    assert quality.recall == pytest.approx({"Adelie": 0.75, "Chinstrap": 0.5, "Gentoo": 1.0})
    assert quality.f1 == pytest.approx({"Adelie": 0.75, "Chinstrap": 0.5, "Gentoo": 1.0})
    assert quality.support == {"Adelie": 4, "Chinstrap": 2, "Gentoo": 4}
    assert quality.macro_f1 == pytest.approx(0.75)


def test_a_class_never_seen_counts_zero_in_the_macro_average() -> None:
    quality = class_quality(["Adelie", "Gentoo", "Adelie"], ["Adelie", "Gentoo", "Gentoo"], CLASSES)
    assert quality.precision == pytest.approx({"Adelie": 0.5, "Chinstrap": 0.0, "Gentoo": 1.0})
    assert quality.recall == pytest.approx({"Adelie": 1.0, "Chinstrap": 0.0, "Gentoo": 0.5})
    assert quality.f1["Adelie"] == pytest.approx(2 / 3)
    assert quality.macro_f1 == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)


def test_labels_outside_the_classes_are_refused_with_the_classes_named() -> None:
    with pytest.raises(ValueError, match="Emperor"):
        class_quality(["Adelie"], ["Emperor"], CLASSES)


def penguin_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"bill_length_mm": rng.normal(44, 5, rows), "bill_depth_mm": rng.normal(17, 2, rows),
                          "flipper_length_mm": rng.normal(200, 14, rows), "body_mass_g": rng.normal(4200, 800, rows)})
    island = rng.integers(0, 3, rows)
    sex = rng.integers(0, 2, rows)
    for i, name in enumerate(("island_biscoe", "island_dream", "island_torgersen")):
        frame[name] = (island == i).astype(float)
    frame["sex_female"], frame["sex_male"] = (sex == 0).astype(float), (sex == 1).astype(float)
    return frame[list(FEATURE_NAMES)]


def test_two_shifted_measurements_are_a_drift_and_an_unchanged_window_is_not() -> None:
    reference = penguin_frame(2000, seed=1)
    same = model_drift(reference, penguin_frame(300, seed=2), FEATURE_NAMES, share_threshold=0.5)
    assert not same.detected and same.drifted_features == []
    shifted = penguin_frame(300, seed=3)
    shifted["body_mass_g"] += 1000
    shifted["flipper_length_mm"] += 20
    drifted = model_drift(reference, shifted, FEATURE_NAMES, share_threshold=0.5)
    assert drifted.detected
    assert drifted.drifted_features == ["flipper_length_mm", "body_mass_g"]
    assert drifted.share == pytest.approx(2 / 9)
    assert drifted.scores["body_mass_g"] > 1.0 > same.scores["body_mass_g"]


def test_one_feature_crossing_alone_is_not_a_drift_of_a_model_with_many() -> None:
    reference = penguin_frame(2000, seed=1)
    shifted = penguin_frame(300, seed=4)
    shifted["bill_depth_mm"] += 2
    drift = model_drift(reference, shifted, FEATURE_NAMES, share_threshold=0.5)
    assert drift.drifted_features == ["bill_depth_mm"] and not drift.detected
    single = model_drift(reference, shifted, ["bill_depth_mm"], share_threshold=0.5)
    assert single.detected and single.share == 1.0


def test_a_window_without_a_feature_says_which() -> None:
    with pytest.raises(ValueError, match="body_mass_g"):
        model_drift(penguin_frame(50, 1), penguin_frame(50, 2).drop(columns="body_mass_g"), FEATURE_NAMES, 0.5)


def test_gauges_carry_the_model_label_and_clearing_one_model_keeps_the_other() -> None:
    registry = CollectorRegistry()
    metrics = ModelMetrics(registry)
    quality = class_quality(["Adelie", "Gentoo"], ["Adelie", "Gentoo"], CLASSES)
    metrics.publish_classes("penguin_species", quality)
    metrics.publish_counts("penguin_species", "3", 2, 2)
    metrics.publish_counts("other_model", "1", 5, 0)
    sample = registry.get_sample_value
    assert sample("monitoring_model_macro_f1", {"model": "penguin_species"}) == pytest.approx(2 / 3)
    assert sample("monitoring_model_class_recall", {"model": "penguin_species", "class": "Gentoo"}) == 1.0
    assert sample("monitoring_model_class_labeled_outcomes", {"model": "penguin_species", "class": "Chinstrap"}) == 0
    metrics.clear("penguin_species")
    assert sample("monitoring_model_macro_f1", {"model": "penguin_species"}) is None
    assert sample("monitoring_model_window_predictions", {"model": "penguin_species", "model_version": "3"}) is None
    assert sample("monitoring_model_window_predictions", {"model": "other_model", "model_version": "1"}) == 5


def test_an_indicator_share_must_move_beyond_the_window_s_chance_to_drift() -> None:
    reference = penguin_frame(2000, seed=1)
    small = penguin_frame(60, seed=2)
    small["sex_female"] = [1.0] * 37 + [0.0] * 23  # 62% instead of about 50%: 12 points, under 3 errors of 60 rows
    small["sex_male"] = 1.0 - small["sex_female"]
    drift = model_drift(reference, small, FEATURE_NAMES, share_threshold=0.5)
    assert drift.scores["sex_female"] > 0.1 and not drift.drifted["sex_female"] and not drift.detected
    large = penguin_frame(600, seed=2)
    large["sex_female"] = [1.0] * 420 + [0.0] * 180  # 70%
    large["sex_male"] = 1.0 - large["sex_female"]
    drift = model_drift(reference, large, FEATURE_NAMES, share_threshold=0.5)
    assert drift.drifted_features == ["sex_female", "sex_male"] and drift.detected
