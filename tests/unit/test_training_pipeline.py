"""The training pipeline's pure parts, without services: configuration, folds, leakage, data checks, promotion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feast_repo.features import FEATURE_NAMES
from training_pipeline import comparison, dataset, model, registry
from training_pipeline.config import ConfigError, build_config, check_features, seed_for
from training_pipeline.training_set import TrainingSetError, ViewPlan, canonical, point_in_time_sql

URI = "http://127.0.0.1:5000"
FEATURES = list(FEATURE_NAMES)


def frame(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """A canonical training set with a learnable label."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2022-01-01", periods=rows, freq="17min", tz="UTC").as_unit("ns")
    conv = rng.random(rows)
    return pd.DataFrame({
        "driver_id": rng.integers(1001, 1100, rows).astype(np.int64),
        "event_timestamp": stamps,
        "trip_completed": (rng.random(rows) < conv).astype(np.int64),
        "conv_rate": conv,
        "acc_rate": rng.random(rows),
        "avg_daily_trips": rng.poisson(12, rows).astype(np.float64),
    })


# ---- configuration -------------------------------------------------------------------------------
def test_defaults_are_valid_and_round_trip_through_a_dict():
    config = build_config({}, URI)
    assert (config.folds, config.alpha, config.l1_ratio, config.mode) == (5, 0.01, 0.5, "development")
    assert build_config(config.to_dict(), URI) == config


def test_overrides_are_coerced_from_text_as_airflow_and_the_cli_pass_them():
    config = build_config({"alpha": "0.1", "folds": "3", "features": "acc_rate, conv_rate",
                           "label_end": "2022-02-01T00:00:00Z", "label_days": 14}, URI)
    assert (config.alpha, config.folds, config.features) == (0.1, 3, ("acc_rate", "conv_rate"))
    assert config.window() == (datetime(2022, 1, 18, tzinfo=UTC), datetime(2022, 2, 1, tzinfo=UTC))


def test_every_bad_value_is_reported_at_once_with_what_was_expected():
    with pytest.raises(ConfigError) as error:
        build_config({"folds": 1, "alpha": -0.5, "l1_ratio": 1.5, "mode": "prod", "alpah": 1}, URI)
    message = str(error.value)
    assert "folds must be >= 2" in message and "got 1" in message
    assert "alpha must be >= 0" in message and "got -0.5" in message
    assert "l1_ratio must be between 0 and 1" in message and "got 1.5" in message
    assert "mode must be one of development, production, got 'prod'" in message
    assert "unknown configuration keys ['alpah']" in message


@pytest.mark.parametrize("overrides, expected", [
    ({"folds": 2.5}, "folds must be an integer"),
    ({"alpha": "abc"}, "alpha must be a number"),
    ({"label_start": "yesterday"}, "label_start must be an ISO timestamp"),
    ({"label_start": "2022-02-01", "label_end": "2022-01-01"}, "label_start must be before label_end"),
    ({"holdout_share": 0.9}, "holdout_share must be in (0, 0.5]"),
    ({"tracking_uri": "127.0.0.1:5000"}, "tracking_uri must be an http(s) URL"),
])
def test_single_bad_values(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        build_config(overrides, URI)


def test_unknown_feature_names_the_service_and_what_it_serves():
    with pytest.raises(ConfigError) as error:
        check_features(("conv_rate", "rating"), FEATURES, "driver_trip_completion")
    assert "unknown feature(s) ['rating']" in str(error.value)
    assert "serves ['conv_rate', 'acc_rate', 'avg_daily_trips']" in str(error.value)


def test_a_feature_subset_keeps_the_service_order():
    assert check_features(("avg_daily_trips", "conv_rate"), FEATURES, "s") == ["conv_rate", "avg_daily_trips"]
    assert check_features((), FEATURES, "s") == FEATURES


@pytest.mark.parametrize("raw, expected", [(True, True), ("true", True), ("1", True), ("False", False), ("no", False)])
def test_replacing_an_unservable_champion_is_a_flag_from_a_param_or_text(raw, expected):
    assert build_config({"replace_unservable_champion": raw}, URI).replace_unservable_champion is expected
    assert build_config({}, URI).replace_unservable_champion is False


def test_a_flag_that_is_not_true_or_false_is_refused():
    with pytest.raises(ConfigError, match="replace_unservable_champion must be true or false, got 'maybe'"):
        build_config({"replace_unservable_champion": "maybe"}, URI)


def test_development_seed_is_fixed_and_production_seed_follows_the_clock():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    assert seed_for("development", t) == seed_for("development", t + timedelta(hours=1)) == 42
    assert seed_for("production", t) != seed_for("production", t + timedelta(seconds=1))


# ---- folds and leakage -----------------------------------------------------------------------------
@pytest.mark.parametrize("rows, folds", [(10, 2), (11, 3), (1000, 5), (7, 7)])
def test_fold_blocks_are_contiguous_and_cover_every_row_once(rows, folds):
    bounds = model.fold_bounds(rows, folds)
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_each_fold_transformer_saw_only_its_training_rows():
    data = frame(500)
    data.loc[data.index[-100:], "conv_rate"] += 5.0  # the last block differs a lot: leakage would show
    for fold in range(5):
        result = model.fit_fold(data, FEATURES, fold, 5, alpha=0.01, l1_ratio=0.5, seed=42)
        train = data.iloc[result.train_index][FEATURES]
        scaler = result.model.named_steps["scale"]
        imputer = result.model.named_steps["impute"]
        assert scaler.n_samples_seen_ == len(train) == 400
        np.testing.assert_allclose(scaler.mean_, train.mean().to_numpy())
        np.testing.assert_allclose(scaler.scale_, train.std(ddof=0).to_numpy())
        np.testing.assert_allclose(imputer.statistics_, train.median().to_numpy())
        assert not set(result.train_index) & set(result.test_index)
        assert not np.allclose(scaler.mean_, data[FEATURES].mean().to_numpy())


def test_metrics_and_their_summary():
    metrics = model.evaluate(np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.8, 0.3]))
    assert metrics["roc_auc"] == 1.0 and metrics["rmse"] == pytest.approx(np.sqrt((0.01 + 0.01 + 0.04 + 0.09) / 4))
    assert np.isnan(model.evaluate(np.array([1, 1]), np.array([0.5, 0.7]))["roc_auc"])
    summary = model.summarize([{"rmse": 1.0, "mae": 1, "r2": 0, "roc_auc": 0.6},
                               {"rmse": 3.0, "mae": 1, "r2": 0, "roc_auc": float("nan")}])
    assert summary["cv_rmse_mean"] == 2.0 and summary["cv_rmse_std"] == 1.0 and summary["cv_roc_auc_mean"] == 0.6


# ---- training-set checks ---------------------------------------------------------------------------
def test_labels_without_features_are_dropped_and_counted():
    data = frame(100)
    data.loc[[3, 50], FEATURES] = np.nan
    clean, report = dataset.validate(data, FEATURES, min_rows=10, max_unmatched_share=0.05, holdout_share=0.2,
                                     folds=5)
    assert len(clean) == 98 and report.rows_unmatched_dropped == 2 and not clean[FEATURES].isna().any().any()


def test_too_many_labels_without_features_fail_the_run():
    data = frame(100)
    data.loc[:9, FEATURES] = np.nan
    with pytest.raises(TrainingSetError, match="10 of 100 labels .* have no driver stats"):
        dataset.validate(data, FEATURES, min_rows=10, max_unmatched_share=0.05, holdout_share=0.2, folds=5)


def test_a_partial_null_or_too_few_rows_or_a_wrong_schema_fail():
    data = frame(100)
    data.loc[5, "acc_rate"] = np.nan
    with pytest.raises(TrainingSetError, match="some features null"):
        dataset.validate(data, FEATURES, min_rows=10, max_unmatched_share=0.5, holdout_share=0.2, folds=5)
    with pytest.raises(TrainingSetError, match="at least 1000 labels"):
        dataset.validate(frame(100), FEATURES, min_rows=1000, max_unmatched_share=0.05, holdout_share=0.2, folds=5)
    with pytest.raises(TrainingSetError, match="columns must be"):
        dataset.validate(frame(100).drop(columns="acc_rate"), FEATURES, min_rows=1, max_unmatched_share=0,
                         holdout_share=0.2, folds=5)


def test_the_holdout_is_the_most_recent_share_by_time():
    data = frame(1000).sample(frac=1.0, random_state=1)  # any row order
    start = dataset.holdout_start(data, 0.2)
    fit, holdout = dataset.split_holdout(data, start)
    assert len(holdout) == 200 and fit["event_timestamp"].max() < holdout["event_timestamp"].min()


def test_the_content_hash_ignores_row_order_and_sees_every_value():
    data = frame(300)
    assert dataset.content_hash(data) == dataset.content_hash(data.sample(frac=1.0, random_state=3))
    changed = data.copy()
    changed.loc[7, "acc_rate"] += 1e-12
    assert dataset.content_hash(changed) != dataset.content_hash(data)


def test_saved_training_set_is_loaded_only_if_unchanged(tmp_path):
    data = frame(200)
    clean, report = dataset.validate(data, FEATURES, min_rows=10, max_unmatched_share=0.05, holdout_share=0.2,
                                     folds=5)
    dataset.save(clean, report, tmp_path)
    loaded, loaded_report = dataset.load(tmp_path, FEATURES)
    pd.testing.assert_frame_equal(loaded, clean)
    clean.assign(acc_rate=clean["acc_rate"] + 1).to_parquet(tmp_path / "training_set.parquet", index=False)
    with pytest.raises(TrainingSetError, match="changed after it was built"):
        dataset.load(tmp_path, FEATURES)


# ---- point-in-time query and canonical form ----------------------------------------------------------
PLAN = ViewPlan(name="driver_stats", table="driver_hourly_stats", join_key="driver_id", entity_column="driver_id",
                timestamp_field="event_timestamp", created_column="created", ttl_seconds=172800,
                columns={f: f for f in FEATURES}, float32=("conv_rate", "acc_rate"))


def test_point_in_time_query_takes_the_latest_row_at_or_before_the_label_within_the_ttl():
    sql = point_in_time_sql("SELECT 1", [PLAN])
    assert 's."event_timestamp" <= l.event_timestamp' in sql
    assert "s.\"event_timestamp\" >= l.event_timestamp - interval '172800 seconds'" in sql
    assert 'ORDER BY s."event_timestamp" DESC, s."created" DESC LIMIT 1' in sql
    assert "LEFT JOIN LATERAL" in sql  # labels without features are kept (and dropped later, counted)


def test_canonical_form_matches_feast_float32_values_and_sorts_by_time():
    raw = pd.DataFrame({"driver_id": [2, 1], "event_us": [2_000_000, 1_000_000], "trip_completed": [1, 0],
                        "conv_rate": [0.1, np.nan], "acc_rate": [0.2, 0.3], "avg_daily_trips": [3.0, 4.0]})
    out = canonical(raw, [PLAN])
    assert out["driver_id"].tolist() == [1, 2]
    assert str(out["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert out["conv_rate"].iloc[1] == float(np.float32(0.1)) and np.isnan(out["conv_rate"].iloc[0])
    assert out["avg_daily_trips"].dtype == np.float64


# ---- promotion -------------------------------------------------------------------------------------
def test_promotion_needs_no_champion_or_a_gain_of_at_least_the_margin():
    assert registry.decide(0.70, None, 0.01).promote
    assert registry.decide(0.72, 0.70, 0.01).promote
    kept = registry.decide(0.705, 0.70, 0.01)
    assert not kept.promote and "below the margin" in kept.reason
    assert not registry.decide(0.70, 0.70, 0.0).promote  # equal is not better
    assert not registry.decide(0.50, 0.70, 0.0).promote
    assert not registry.decide(float("nan"), 0.70, 0.0).promote


def test_a_champion_on_features_no_longer_served_is_kept_unless_replacing_it_is_asked():
    kept = registry.decide_unservable("4", ["rating"], "driver_trip_completion", replace=False)
    assert kept.outcome == registry.COMPARISON_SKIPPED and not kept.promote
    assert "champion version 4 needs feature(s) ['rating']" in kept.reason and "no longer serves" in kept.reason
    assert "rerun with replace_unservable_champion=true" in kept.reason
    replaced = registry.decide_unservable("4", ["rating"], "driver_trip_completion", replace=True)
    assert replaced.promote and "as replace_unservable_champion asks" in replaced.reason


def test_a_comparison_decides_on_auc_unless_the_champion_could_not_be_scored():
    challenger = {"roc_auc": 0.72}
    scored = comparison.Comparison(["acc_rate"], challenger, "4", FEATURES, "signature", {"roc_auc": 0.70})
    assert scored.decide(0.01, "s", replace_unservable=False).promote
    unscored = comparison.Comparison(["acc_rate"], challenger, "4", ["rating"], "signature", unserved=["rating"])
    assert unscored.decide(0.01, "s", replace_unservable=False).outcome == registry.COMPARISON_SKIPPED
    assert comparison.Comparison(["acc_rate"], challenger).decide(0.01, "s", False).reason.startswith("no champion")
    tags = unscored.tags(holdout_rows=40)
    assert tags["champion_features"] == "rating" and tags["champion_features_unserved"] == "rating"
    assert tags["compared_with_version"] == "4" and "champion_holdout_roc_auc" not in tags


def test_the_champions_extra_features_join_the_same_holdout_rows():
    holdout = frame(50)[["driver_id", "event_timestamp", "trip_completed", "avg_daily_trips"]]
    fetched = frame(50).sample(frac=1.0, random_state=2)  # another row order, the same labels
    fetched.loc[fetched.index[:3], "acc_rate"] = np.nan
    joined, imputed = comparison.join_features(holdout, fetched, ["conv_rate", "acc_rate"])
    expected = frame(50)
    expected.loc[fetched.index[:3], "acc_rate"] = np.nan
    pd.testing.assert_frame_equal(joined, expected[list(joined.columns)])
    assert imputed == 3 and list(joined.columns)[:4] == list(holdout.columns)


def test_a_holdout_label_not_found_again_fails_the_comparison():
    holdout = frame(50)[["driver_id", "event_timestamp", "trip_completed", "avg_daily_trips"]]
    with pytest.raises(TrainingSetError, match="2 of 50 holdout labels were not found again"):
        comparison.join_features(holdout, frame(50).iloc[2:], ["conv_rate"])


# ---- plots -----------------------------------------------------------------------------------------
def test_plots_draw_even_a_constant_score(tmp_path):
    pytest.importorskip("matplotlib")
    from training_pipeline import plots

    y = np.array([0, 1, 1, 0, 1], np.float64)
    for score in (np.full(5, 0.6), np.array([0.1, 0.9, 0.7, 0.2, 0.8])):
        assert plots.predicted_vs_actual(y, score, tmp_path / "a.png").stat().st_size > 0
        assert plots.residuals(y, score, tmp_path / "b.png").stat().st_size > 0
    metrics = [{"rmse": 0.4, "mae": 0.3, "r2": 0.1, "roc_auc": 0.7}] * 3
    assert plots.fold_metrics(metrics, model.METRICS, tmp_path / "c.png").stat().st_size > 0
