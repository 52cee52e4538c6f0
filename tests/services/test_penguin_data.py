"""Penguin data on the platform: landed with planted bad rows -> ingested (bad rows quarantined with their
reasons, a re-run adds nothing) -> materialized -> served by Feast's penguin_species feature service.

The penguins here are landed on a day of 2019 with ids from 900001, which no other test uses.
"""

from __future__ import annotations

from datetime import date

import pytest

from data_pipeline.ingest import ingest_file
from data_pipeline.offline_store import QUARANTINE_TABLE, ensure_schema
from data_pipeline.validate import PENGUINS
from feast_repo import penguin_features as contract
from mlops_platform.feature_store import feature_store
from mlops_platform.postgres import connect
from simulation.penguins import PLANTS, prepare

DAY = date(2019, 6, 3)
ID_OFFSET = 900_000
pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def prepared(feast_up, settings):
    ensure_schema(settings)
    with connect(settings) as conn, conn.cursor() as cur:  # a previous session's rows of this test
        cur.execute(f"delete from {contract.OFFLINE_TABLE} where {contract.JOIN_KEY} > %s", (ID_OFFSET,))
        cur.execute(f"delete from {QUARANTINE_TABLE} where dataset = %s and source like %s",
                    (PENGUINS, f"%{DAY.isoformat()}%"))
        cur.execute("delete from ingestion_runs where dataset = %s and source like %s",
                    (PENGUINS, f"%{DAY.isoformat()}%"))
    return prepare(settings, DAY, bad_rows=len(PLANTS), id_offset=ID_OFFSET)


def offline_rows(settings) -> dict[int, dict]:
    columns = [contract.JOIN_KEY, "species", "island", "sex", *contract.FEATURE_NAMES]
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select {', '.join(columns)} from {contract.OFFLINE_TABLE} where {contract.JOIN_KEY} > %s",
                    (ID_OFFSET,))
        return {row[0]: dict(zip(columns, row, strict=True)) for row in cur.fetchall()}


def test_valid_rows_are_loaded_with_their_indicators(prepared, settings):
    rows = offline_rows(settings)
    assert len(rows) == prepared["landed"]["expected_valid"]
    assert prepared["ingestion"]["rows_loaded"] == len(rows)
    unknown_sex = [row for row in rows.values() if row["sex"] is None]
    assert unknown_sex and all(row["sex_female"] == 0 and row["sex_male"] == 0 for row in unknown_sex)
    for row in list(rows.values())[:20]:
        expected = contract.encode_categories(row["island"], row["sex"])
        assert {name: row[name] for name in expected} == expected


def test_planted_rows_are_in_quarantine_with_their_reasons(prepared, settings):
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select row_number, reason from {QUARANTINE_TABLE} where dataset = %s and source like %s",
                    (PENGUINS, f"%{DAY.isoformat()}%"))
        reasons = dict(cur.fetchall())
    for plant in prepared["landed"]["planted"]:
        assert plant["row_number"] in reasons, plant
    assert any("known_category" in reason for reason in reasons.values())
    assert len(reasons) == len(PLANTS) + prepared["landed"]["rows_missing_measurements"]


def test_a_rerun_adds_nothing(prepared, settings):
    before = offline_rows(settings)
    report = ingest_file(prepared["landed"]["path"], PENGUINS, settings)
    assert (report.status, report.rows_loaded) == ("skipped", 0)
    assert offline_rows(settings) == before


def test_feast_serves_the_materialized_penguins(prepared, settings):
    rows = offline_rows(settings)
    ids = sorted(rows)[:25]
    store = feature_store(settings)
    online = store.get_online_features(features=store.get_feature_service(contract.FEATURE_SERVICE),
                                       entity_rows=[{contract.JOIN_KEY: i} for i in ids]).to_df()
    online = online.set_index(contract.JOIN_KEY)
    for penguin_id in ids:
        for name in contract.FEATURE_NAMES:
            assert online.at[penguin_id, name] == pytest.approx(rows[penguin_id][name], rel=1e-6), (penguin_id, name)
