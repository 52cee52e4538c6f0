"""The generator gives learnable, time-consistent data; validation finds exactly the planted bad rows."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_pipeline.ingest import interval_files
from data_pipeline.landing import landed_files, read_raw
from data_pipeline.load import raw_json
from data_pipeline.validate import ORDERS, STATS, SchemaMismatch, TimestampWindow, validate
from feast_repo.features import CREATED_FIELD, FEATURE_NAMES, JOIN_KEY, TIMESTAMP_FIELD
from simulation import generate as gen

END = date(2024, 5, 8)
STATS_COLUMNS = [JOIN_KEY, TIMESTAMP_FIELD, CREATED_FIELD, *FEATURE_NAMES]
FEATURES = list(FEATURE_NAMES)


@pytest.fixture(scope="module")
def stats() -> pd.DataFrame:
    return gen.generate_driver_stats(drivers=30, days=4, end=END, seed=11)


@pytest.fixture(scope="module")
def orders(stats) -> pd.DataFrame:
    return gen.generate_orders(stats, seed=11)


def point_in_time(orders: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """Each order with the driver's latest stats row at or before it (what Feast's join does)."""
    return pd.merge_asof(orders.sort_values("event_timestamp"),
                         stats.sort_values("event_timestamp")[["event_timestamp", "driver_id", *FEATURES]],
                         on="event_timestamp", by="driver_id", direction="backward")


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_data_other_seed_other_data(stats, orders):
    again = gen.generate_driver_stats(drivers=30, days=4, end=END, seed=11)
    pd.testing.assert_frame_equal(stats, again)
    pd.testing.assert_frame_equal(orders, gen.generate_orders(again, seed=11))
    other = gen.generate_driver_stats(drivers=30, days=4, end=END, seed=12)
    assert not np.allclose(stats["conv_rate"], other["conv_rate"])


def test_stats_have_feasts_columns_types_and_ranges(stats):
    assert list(stats.columns) == STATS_COLUMNS
    assert stats["driver_id"].dtype == np.int64 and stats["avg_daily_trips"].dtype == np.int64
    assert str(stats["event_timestamp"].dtype) == "datetime64[ns, UTC]" == str(stats["created"].dtype)
    assert stats["conv_rate"].dtype == np.float64 and stats["acc_rate"].dtype == np.float64
    assert sorted(stats["driver_id"].unique()) == list(range(1001, 1031))
    assert len(stats) == 30 * 4 * 24
    assert stats["conv_rate"].between(0, 1).all() and stats["acc_rate"].between(0, 1).all()
    assert (stats["avg_daily_trips"] >= 0).all()
    hours = stats["event_timestamp"].drop_duplicates().sort_values()
    assert hours.iloc[0] == pd.Timestamp("2024-05-04", tz="UTC")
    assert hours.iloc[-1] == pd.Timestamp("2024-05-07T23:00", tz="UTC")
    assert (hours.diff().dropna() == pd.Timedelta(hours=1)).all()
    lag = stats["created"] - stats["event_timestamp"]
    assert (lag > pd.Timedelta(0)).all() and (lag < pd.Timedelta(minutes=15)).all()
    assert not stats.duplicated(["driver_id", "event_timestamp"]).any()


def test_quality_drifts_slowly_so_features_change_but_stay_correlated(stats):
    by_day = stats.assign(day=stats["event_timestamp"].dt.date).groupby(["driver_id", "day"])["conv_rate"].mean()
    first, last = by_day.xs(date(2024, 5, 4), level="day"), by_day.xs(date(2024, 5, 7), level="day")
    assert np.corrcoef(first, last)[0, 1] > 0.8  # a driver stays recognisable ...
    assert not np.allclose(first, last, atol=0.01)  # ... but is not frozen


def test_orders_are_a_few_per_driver_day_and_consistent_in_time_with_stats(stats, orders):
    assert list(orders.columns) == ["event_timestamp", "driver_id", "trip_completed"]
    assert str(orders["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert set(orders["trip_completed"].unique()) <= {0, 1}
    assert set(orders["driver_id"].unique()) <= set(stats["driver_id"].unique())
    assert not orders.duplicated(["driver_id", "event_timestamp"]).any()
    assert orders["event_timestamp"].is_monotonic_increasing
    assert orders["event_timestamp"].min() >= stats["event_timestamp"].min()
    assert orders["event_timestamp"].max() < stats["event_timestamp"].max() + pd.Timedelta(hours=1)
    assert 1.5 < len(orders) / (30 * 4) < 5
    joined = point_in_time(orders, stats)
    assert joined["conv_rate"].notna().all()  # every order has stats at or before it


def test_the_label_really_depends_on_the_features():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    stats = gen.generate_driver_stats(drivers=200, days=10, end=END, seed=3)
    joined = point_in_time(gen.generate_orders(stats, seed=3), stats)
    train, test = joined.iloc[: len(joined) // 2], joined.iloc[len(joined) // 2:]
    model = LogisticRegression().fit(train[FEATURES], train["trip_completed"])
    auc = roc_auc_score(test["trip_completed"], model.predict_proba(test[FEATURES])[:, 1])
    assert auc > 0.65, f"a model on the features should beat chance clearly, got ROC AUC {auc:.3f}"
    rates = joined.groupby(pd.qcut(joined["conv_rate"], 4), observed=True)["trip_completed"].mean()
    assert rates.is_monotonic_increasing and rates.iloc[-1] - rates.iloc[0] > 0.15


# ---------------------------------------------------------------------------------------------
# Landing files
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def landed(stats, orders, tmp_path_factory):
    landing = tmp_path_factory.mktemp("landing")
    return landing, gen.write_landing(stats, orders, landing, bad_row_rate=0.05, seed=11)


def test_files_are_partitioned_by_day_and_complete(landed):
    landing, summaries = landed
    days = ["2024-05-04", "2024-05-05", "2024-05-06", "2024-05-07"]
    assert summaries[STATS].files == [f"driver_stats/date={d}/driver_stats_{d}.parquet" for d in days]
    assert summaries[ORDERS].files == [f"orders/date={d}/orders_{d}.csv" for d in days]
    assert not [p for p in landing.rglob(".*")], "no temporary file may be left behind"
    assert [(d.isoformat(), p.relative_to(landing).as_posix()) for d, p in landed_files(landing, STATS)] == list(
        zip(days, summaries[STATS].files, strict=True))
    for name, summary in summaries.items():
        rows = sum(len(read_raw((landing / f).read_bytes(), f.rsplit(".", 1)[1], name)) for f in summary.files)
        assert rows == summary.rows_written
        assert {p.kind for p in summary.planted} == set(gen.BAD_KINDS[name])


def test_parquet_keeps_bad_values_as_delivered(landed):
    landing, summaries = landed
    planted = next(p for p in summaries[STATS].planted if p.kind == "unparseable_timestamp")
    raw = read_raw((landing / planted.file).read_bytes(), "parquet", STATS)
    assert raw.at[planted.row_number, planted.column] in gen.BAD_TIMESTAMPS
    negative = next(p for p in summaries[STATS].planted if p.kind == "negative_trips")
    raw = read_raw((landing / negative.file).read_bytes(), "parquet", STATS)
    assert raw.at[negative.row_number, "avg_daily_trips"] < 0


def test_stats_can_be_written_as_csv(stats, orders, tmp_path):
    summaries = gen.write_landing(stats, orders, tmp_path, 0.0, stats_format="csv")
    first = tmp_path / summaries[STATS].files[0]
    assert first.suffix == ".csv"
    assert first.read_text().splitlines()[0] == ",".join(f'"{c}"' for c in STATS_COLUMNS)
    valid, rejected = validate(read_raw(first.read_bytes(), "csv", STATS), STATS)
    assert rejected.empty and len(valid) == 30 * 24


@pytest.fixture
def keep_logging():
    """The CLI routes the root logger to stdout; give pytest its handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_prints_the_summary_as_json(tmp_path, capsys, keep_logging):
    assert gen.main(["--drivers", "5", "--days", "2", "--end", "2024-05-08", "--landing", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["datasets"]["driver_stats"]["rows_written"] >= 5 * 2 * 24
    assert summary["datasets"]["orders"]["files"] == 2
    assert summary["start"] == "2024-05-06" and summary["end"] == "2024-05-08"


# ---------------------------------------------------------------------------------------------
# Validation of landed files
# ---------------------------------------------------------------------------------------------
EXPECTED_REASON = {
    "null": "{column} must not be null (rule not_nullable), got null",
    "negative_trips": "avg_daily_trips must be >= 0 (rule greater_than_or_equal_to(0)), got -",
    "unparseable_timestamp": "{column} must be an ISO 8601 timestamp (rule parseable), got '",
    "duplicate_key": "duplicate key (driver_id=",
}


@pytest.mark.parametrize("dataset", [STATS, ORDERS])
def test_validation_rejects_exactly_the_planted_rows_with_the_right_reasons(landed, stats, orders, dataset):
    landing, summaries = landed
    clean = {STATS: stats, ORDERS: orders}[dataset]
    summary = summaries[dataset]
    valid_parts = []
    for file in summary.files:
        valid, rejected = validate(read_raw((landing / file).read_bytes(), file.rsplit(".", 1)[1], dataset), dataset)
        planted = {p.row_number: p for p in summary.planted if p.file == file}
        assert sorted(rejected["row_number"]) == sorted(planted), f"{file}: rejected rows differ from planted ones"
        for row_number, reason in zip(rejected["row_number"], rejected["reason"], strict=True):
            plant = planted[row_number]
            if plant.kind == "out_of_range":
                expected = (f"{plant.column} must be between 0 and 1 (rule in_range(0, 1))" if dataset == STATS
                            else "trip_completed must be 0 or 1 (rule isin([0, 1]))")
            else:
                expected = EXPECTED_REASON[plant.kind].format(column=plant.column)
            assert expected in reason, f"{file} row {row_number} ({plant.kind}): {reason}"
            if plant.kind == "duplicate_key":
                assert reason.startswith("duplicate key") and "first seen at row" in reason
        valid_parts.append(valid)
    corrupted = {(p.driver_id, p.event_timestamp) for p in summary.planted if p.kind != "duplicate_key"}
    keys = list(zip(clean["driver_id"], clean["event_timestamp"], strict=True))
    expected = clean[[key not in corrupted for key in keys]].reset_index(drop=True)
    loaded = pd.concat(valid_parts).reset_index(drop=True)[list(clean.columns)]
    pd.testing.assert_frame_equal(loaded, expected, check_dtype=True)


def raw_stats(**overrides) -> pd.DataFrame:
    rows = {
        "driver_id": ["1001", "1002", "1003", "1001"],
        "event_timestamp": ["2024-05-01T00:00:00Z"] * 4,
        "created": ["2024-05-01T00:05:00Z"] * 4,
        "conv_rate": ["0.5", "0.6", "0.7", "0.9"],
        "acc_rate": ["0.8", "0.8", "0.8", "0.8"],
        "avg_daily_trips": ["10", "11", "12", "13"],
    }
    rows.update(overrides)
    return pd.DataFrame(rows)


def test_a_duplicate_key_keeps_its_first_occurrence():
    valid, rejected = validate(raw_stats(), STATS)
    assert list(valid.index) == [0, 1, 2]
    assert valid.loc[0, "conv_rate"] == 0.5
    assert rejected["row_number"].tolist() == [3]
    assert rejected["reason"].iloc[0] == ("duplicate key (driver_id=1001, event_timestamp=2024-05-01T00:00:00Z) "
                                          "(rule unique), first seen at row 0")
    assert rejected["conv_rate"].iloc[0] == "0.9"  # raw values, as delivered


def test_reasons_name_column_rule_and_value_and_are_joined():
    raw = raw_stats(driver_id=["1001", "1002", "x", "1004"], conv_rate=["1.7", "0.6", "0.7", None],
                    avg_daily_trips=["10", "-2", "2.5", "4"])
    valid, rejected = validate(raw, STATS)
    reasons = dict(zip(rejected["row_number"], rejected["reason"], strict=True))
    assert list(valid.index) == []
    assert reasons == {
        0: "conv_rate must be between 0 and 1 (rule in_range(0, 1)), got '1.7'",
        1: "avg_daily_trips must be >= 0 (rule greater_than_or_equal_to(0)), got '-2'",
        2: "driver_id must be a number (rule parseable), got 'x'; "
           "avg_daily_trips must be a whole number (rule whole_number), got '2.5'",
        3: "conv_rate must not be null (rule not_nullable), got null",
    }


def test_valid_rows_come_out_typed():
    valid, _ = validate(raw_stats(driver_id=["1001", "1002", "1003", "1004"]), STATS)
    assert valid["driver_id"].dtype == np.int64 and valid["avg_daily_trips"].dtype == np.int64
    assert str(valid["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert valid["event_timestamp"].iloc[0] == pd.Timestamp("2024-05-01", tz="UTC")


def test_timestamps_outside_the_window_are_rejected_and_the_window_is_configurable():
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    stamps = ["2014-12-31T23:00:00Z", "2015-01-01T00:00:00Z", "2024-05-02T11:00:00Z", "2024-05-02T13:00:00Z"]
    raw = raw_stats(driver_id=["1", "2", "3", "4"], event_timestamp=stamps, created=stamps)
    valid, rejected = validate(raw, STATS, TimestampWindow(now=now))
    assert list(valid.index) == [1, 2]
    assert rejected["row_number"].tolist() == [0, 3]
    assert ("event_timestamp must be between 2015-01-01T00:00:00Z and 2024-05-02T12:00:00Z "
            "(rule timestamp_window), got '2014-12-31T23:00:00Z'") in rejected["reason"].iloc[0]
    stricter = TimestampWindow(earliest=datetime(2020, 1, 1, tzinfo=UTC), max_future=timedelta(0), now=now)
    assert list(validate(raw, STATS, stricter).valid.index) == []


def test_other_iso_forms_parse_and_mean_the_same_instant():
    raw = raw_stats(driver_id=["1", "2", "3", "4"],
                    event_timestamp=["2024-05-01T02:00:00+02:00", "2024-05-01 00:00:00", "2024-05-01T00:00:00.000Z",
                                     "2024-05-01T00:00:00Z"])
    valid, rejected = validate(raw, STATS)
    assert rejected.empty
    assert (valid["event_timestamp"] == pd.Timestamp("2024-05-01", tz="UTC")).all()


def test_a_file_without_a_needed_column_says_which():
    with pytest.raises(SchemaMismatch, match=r"missing \['acc_rate'\]"):
        validate(raw_stats().drop(columns="acc_rate"), STATS)


def test_quarantine_json_keeps_raw_values_and_nulls():
    frame = pd.DataFrame({"event_timestamp": ["not-a-time", None], "driver_id": pd.array([1001, None], dtype="Int64"),
                          "trip_completed": pd.array([None, 2.0], dtype="Float64")})
    assert [json.loads(x) for x in raw_json(frame, ORDERS)] == [
        {"event_timestamp": "not-a-time", "driver_id": 1001, "trip_completed": None},
        {"event_timestamp": None, "driver_id": None, "trip_completed": 2.0},
    ]


def test_an_interval_takes_only_the_partitions_that_start_in_it(landed):
    landing, _ = landed
    picked = interval_files("2024-05-05", datetime(2024, 5, 7, tzinfo=UTC), "all", landing)
    assert sorted(p.relative_to(landing).as_posix() for _, p in picked) == [
        "driver_stats/date=2024-05-05/driver_stats_2024-05-05.parquet",
        "driver_stats/date=2024-05-06/driver_stats_2024-05-06.parquet",
        "orders/date=2024-05-05/orders_2024-05-05.csv",
        "orders/date=2024-05-06/orders_2024-05-06.csv",
    ]
    assert interval_files("2024-05-05T01:00:00+00:00", "2024-05-06", "orders", landing) == []
    with pytest.raises(ValueError, match="must end after it starts"):
        interval_files("2024-05-06", "2024-05-05", "all", landing)


def test_hidden_and_foreign_files_are_not_landed(tmp_path: Path):
    folder = tmp_path / STATS / "date=2024-05-01"
    folder.mkdir(parents=True)
    for name in (".driver_stats_2024-05-01.parquet.tmp-1", "notes.txt", "driver_stats_2024-05-01.parquet"):
        (folder / name).write_bytes(b"")
    (tmp_path / STATS / "date=yesterday").mkdir()
    assert [p.name for _, p in landed_files(tmp_path, STATS)] == ["driver_stats_2024-05-01.parquet"]
