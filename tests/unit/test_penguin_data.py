"""Penguin rows: each planted bad row quarantined for its own rule, missing sex kept, indicators as serving encodes."""

from __future__ import annotations

from datetime import date

import pytest

from data_pipeline.landing import read_landed
from data_pipeline.validate import PENGUINS, TimestampWindow, validate
from feast_repo import penguin_features as contract
from simulation.penguins import PLANTS, land

DAY = date(2024, 5, 1)
# The rule a reason names for each planted kind of bad row.
RULE_OF_PLANT = {"missing_measurement": "flipper_length_mm must not be null (rule not_nullable)",
                 "out_of_bounds": "body_mass_g must be between 2000 and 7000 (rule in_range",
                 "unknown_island": "island must be one of ['Biscoe', 'Dream', 'Torgersen'] (rule known_category)",
                 "unknown_sex": "sex must be one of ['female', 'male'] or missing (rule known_category)",
                 "unknown_species": "species must be one of ['Adelie', 'Chinstrap', 'Gentoo'] or missing",
                 "duplicate_key": "duplicate key (penguin_id=1, ",
                 "bad_id": "penguin_id must be a number (rule parseable), got 'P-17'",
                 "bad_timestamp": "event_timestamp must be an ISO 8601 timestamp (rule parseable)"}


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    class Landing:
        landing_dir = tmp_path_factory.mktemp("landing")

    summary = land(Landing, DAY, bad_rows=len(PLANTS))
    raw = read_landed(open(summary["path"], "rb").read(), "csv")
    return summary, validate(raw.rows, PENGUINS, TimestampWindow(), row_numbers=raw.rows.index)


def test_each_planted_row_is_quarantined_for_its_own_rule(landed):
    summary, (valid, rejected) = landed
    reasons = dict(zip(rejected["row_number"], rejected["reason"], strict=True))
    for plant in summary["planted"]:
        reason = reasons.get(plant["row_number"], "")
        assert RULE_OF_PLANT[plant["rule"]] in reason, (plant, reason)
    assert len(valid) == summary["expected_valid"]
    assert len(rejected) == len(PLANTS) + summary["rows_missing_measurements"]


def test_missing_sex_is_no_error_and_both_sex_indicators_are_zero(landed):
    _, (valid, _) = landed
    unknown = valid[valid["sex"].isna()]
    assert len(unknown) > 0
    assert (unknown[["sex_female", "sex_male"]] == 0).all().all()


def test_indicator_columns_are_what_serving_encodes(landed):
    _, (valid, _) = landed
    names = [feature.name for feature in contract.INDICATORS]
    for row in valid.head(50).itertuples(index=False):
        row = row._asdict()
        assert {n: row[n] for n in names} == contract.encode_categories(row["island"], row["sex"])


def test_drifted_measurements_move_but_stay_valid(tmp_path):
    class Landing:
        landing_dir = tmp_path

    summary = land(Landing, DAY, drifted=True)
    raw = read_landed(open(summary["path"], "rb").read(), "csv")
    valid, rejected = validate(raw.rows, PENGUINS, TimestampWindow())
    assert len(valid) == summary["expected_valid"]
    assert valid["body_mass_g"].mean() > 4_400  # the package's mean body mass is about 4,200 g
