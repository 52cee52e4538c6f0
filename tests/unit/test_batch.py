"""Batch scoring's pure parts: the entity frame, scoring with incomplete features, the export's name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow.parquet as parquet
import pytest

from model_serving import batch
from model_serving.prediction_store import BATCH_COLUMNS

AT = datetime(2025, 5, 2, tzinfo=UTC)


class Doubler:
    """A stand-in for the pyfunc model: twice conv_rate plus acc_rate, with the signature registry.score reads."""

    class metadata:  # noqa: N801 - mirrors the attribute of mlflow's PyFuncModel
        @staticmethod
        def get_input_schema():
            class Schema:
                @staticmethod
                def input_names():
                    return ["conv_rate", "acc_rate", "avg_daily_trips"]
            return Schema()

    @staticmethod
    def predict(frame: pd.DataFrame) -> np.ndarray:
        assert list(frame.columns) == ["conv_rate", "acc_rate", "avg_daily_trips"]
        assert all(dtype == np.float64 for dtype in frame.dtypes)
        return 2 * frame["conv_rate"].to_numpy() + frame["acc_rate"].to_numpy()


MODEL = batch.ServedModel("driver_trip_completion", "4", "run-1", Doubler())


def test_the_entity_frame_puts_every_driver_at_the_runs_moment_in_utc():
    frame = batch.entity_frame([1001, 1002], datetime(2025, 5, 2, 2, tzinfo=timezone(timedelta(hours=2))))
    assert frame["driver_id"].tolist() == [1001, 1002] and frame["driver_id"].dtype == np.int64
    assert (frame["event_timestamp"] == pd.Timestamp(AT)).all()
    assert str(frame["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert batch.entity_frame([], AT).empty


def test_drivers_with_incomplete_features_are_reported_not_scored():
    features = pd.DataFrame({"driver_id": [1003, 1001, 1002], "conv_rate": [0.5, 0.25, np.nan],
                             "acc_rate": [0.5, 0.5, 0.5], "avg_daily_trips": [3.0, np.nan, 4.0]})
    scored, missing = batch.score_features(MODEL, features, AT, "run-x")
    assert missing == [1001, 1002]
    assert list(scored.columns) == list(BATCH_COLUMNS)
    assert scored.to_dict("records") == [{"run_id": "run-x", "driver_id": 1003, "event_timestamp": pd.Timestamp(AT),
                                          "score": 1.5, "model_name": "driver_trip_completion",
                                          "model_version": "4", "variant": "champion"}]


class Halver(Doubler):
    @staticmethod
    def predict(frame: pd.DataFrame) -> np.ndarray:
        return frame["conv_rate"].to_numpy() / 2


def test_both_variants_score_every_driver_and_each_row_says_which_scored_it():
    features = pd.DataFrame({"driver_id": [1002, 1001, 1003], "conv_rate": [0.5, 0.25, np.nan],
                             "acc_rate": [0.5, 0.5, 0.5], "avg_daily_trips": [3.0, 4.0, 4.0]})
    models = {"challenger": batch.ServedModel("driver_trip_completion", "5", "run-2", Halver()), "champion": MODEL}
    scored, missing = batch.score_variants(models, features, AT, "run-x")
    assert missing == [1003] and list(scored.columns) == list(BATCH_COLUMNS)
    assert list(zip(scored["variant"], scored["model_version"], scored["driver_id"], scored["score"], strict=True)) \
        == [("champion", "4", 1002, 1.5), ("champion", "4", 1001, 1.0),
            ("challenger", "5", 1002, 0.25), ("challenger", "5", 1001, 0.125)]


@pytest.mark.parametrize(("text", "variants"), [("champion", ("champion",)),
                                                 ("champion,challenger", ("champion", "challenger")),
                                                 (" challenger , champion,champion", ("challenger", "champion"))])
def test_the_variants_option_names_the_champion_and_perhaps_the_challenger(text, variants):
    assert batch.parse_variants(text) == variants


@pytest.mark.parametrize("text", ["challenger", "champion,canary", ""])
def test_variants_without_the_champion_or_unknown_are_refused(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected champion or champion,challenger"):
        batch.parse_variants(text)


def test_nothing_to_score_gives_an_empty_frame_of_the_same_shape():
    empty = pd.DataFrame({"driver_id": pd.Series(dtype="int64"), "conv_rate": pd.Series(dtype="float64"),
                          "acc_rate": pd.Series(dtype="float64"), "avg_daily_trips": pd.Series(dtype="float64")})
    scored, missing = batch.score_features(MODEL, empty, AT, "run-x")
    assert scored.empty and list(scored.columns) == list(BATCH_COLUMNS) and missing == []


@pytest.mark.parametrize(("run_id", "name"), [
    ("scheduled__2025-05-02T00:00:00+00:00", "scheduled__2025-05-02T00:00:00+00:00.parquet"),
    ("manual/../../etc", "manual_.._.._etc.parquet"),
    ("..hidden", "hidden.parquet"),
])
def test_the_export_stays_in_its_folder_whatever_the_run_id(make_settings, tmp_path, run_id, name):
    settings = make_settings(SERVING_AUTH="off")
    path = batch.export_path(settings, run_id)
    assert path == tmp_path / "batch_predictions" / name
    with pytest.raises(ValueError, match="usable as a file name"):
        batch.export_path(settings, "...")


def test_the_export_is_written_whole(tmp_path):
    features = pd.DataFrame({"driver_id": [1001, 1002], "conv_rate": [0.5, 0.25], "acc_rate": [0.5, 0.5],
                             "avg_daily_trips": [3.0, 4.0]})
    scored, _ = batch.score_features(MODEL, features, AT, "run-x")
    path = batch.export_scores(scored, tmp_path / "out" / "run-x.parquet")
    back = parquet.read_table(path).to_pandas()
    pd.testing.assert_frame_equal(back, scored, check_dtype=False)
    assert [p.name for p in path.parent.iterdir()] == ["run-x.parquet"]
