"""Feast on the platform: fast materialization writes what Feast would, and point-in-time joins hold.

Rows here live in March 2021, a window no other test writes, and use driver ids of their own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from data_pipeline import materialize as mat
from data_pipeline.offline_store import STATS_TABLE, ensure_schema
from data_pipeline.shards import plan_shards, shard_of
from feast_repo.features import (
    ENTITY,
    FEATURE_NAMES,
    FEATURE_SERVICE,
    FEATURE_TTL,
    FEATURE_VIEW,
    JOIN_KEY,
    OFFLINE_TABLE,
    PUSH_SOURCE,
)
from mlops_platform.feast_apply import plan
from mlops_platform.feature_store import FeastRedisEncoding, feature_store, online_store_address, value_kinds
from mlops_platform.postgres import connect
from mlops_platform.redis_client import redis_client

T0 = datetime(2021, 3, 1, tzinfo=UTC)
FEATURES = list(FEATURE_NAMES)


def insert_stats(rows: list[tuple]) -> None:
    """rows: (driver_id, event_timestamp, conv_rate, acc_rate, avg_daily_trips)."""
    with connect() as conn, conn.cursor() as cur:
        for driver_id, ts, conv, acc, trips in rows:
            cur.execute(
                f"insert into {STATS_TABLE} (driver_id, event_timestamp, created, conv_rate, acc_rate, "
                "avg_daily_trips, source) values (%s, %s, %s, %s, %s, %s, 'test') on conflict do nothing",
                (driver_id, ts, ts + timedelta(minutes=5), conv, acc, trips))


def delete_drivers(ids: list[int]) -> None:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from {STATS_TABLE} where driver_id = any(%s)", (ids,))


@pytest.fixture(scope="module")
def store(feast_up):
    ensure_schema()
    return feature_store()


def online(store, ids: list[int]) -> pd.DataFrame:
    frame = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE),
        entity_rows=[{"driver_id": i} for i in ids]).to_df()
    return frame.set_index("driver_id").sort_index()[FEATURES]


def raw_hashes(store, ids: list[int]) -> dict[int, dict]:
    client = redis_client(online_store_address(store))
    fv = store.get_feature_view(FEATURE_VIEW)
    encoding = FeastRedisEncoding(store.project, JOIN_KEY, FEATURE_VIEW, value_kinds(fv), 3)
    try:
        return {i: client.hgetall(encoding.key(i)) for i in ids}
    finally:
        client.close()


def clear_online(store, ids: list[int]) -> None:
    mat.delete_online_rows(store, ids)


def test_the_registry_holds_the_feature_contract(store):
    """What `feast apply` registered from feast_repo/definitions.py is the contract: names, types, order, TTL."""
    from feast.types import Float32, Int64

    from feast_repo.features import FEATURES as CONTRACT

    view = store.get_feature_view(FEATURE_VIEW)
    dtypes = {"float32": Float32, "int64": Int64}
    assert [(field.name, field.dtype) for field in view.features] == [(f.name, dtypes[f.dtype]) for f in CONTRACT]
    assert view.ttl == FEATURE_TTL and view.entities == [ENTITY] and view.online
    assert store.get_entity(ENTITY).join_key == JOIN_KEY
    assert view.batch_source.get_table_query_string() == OFFLINE_TABLE
    assert view.stream_source.name == PUSH_SOURCE and store.get_data_source(PUSH_SOURCE).name == PUSH_SOURCE
    projections = store.get_feature_service(FEATURE_SERVICE).feature_view_projections
    assert [(p.name, [f.name for f in p.features]) for p in projections] == [(FEATURE_VIEW, list(FEATURE_NAMES))]


def test_feast_plan_finds_every_object_of_the_repository_in_the_registry(store, settings):
    """`up` applied the repository, so `feast plan` (printed before every apply) creates and deletes nothing.

    Not "No changes to registry": once a view is materialized, Feast 0.67's plan reports it as updated
    because the metadata timestamps of its sources moved, though no definition changed.
    """
    output = plan(settings)
    changes = [line for line in output.splitlines() if line.startswith(("Created ", "Deleted "))]
    assert not changes and "No changes to infrastructure" in output, output


def test_online_features_are_the_latest_row_in_the_interval(store):
    ids = [7_100_001, 7_100_002, 7_100_003]
    delete_drivers(ids)
    clear_online(store, ids)
    insert_stats([
        (ids[0], T0 + timedelta(hours=1), 0.10, 0.20, 3),
        (ids[0], T0 + timedelta(hours=5), 0.15, 0.25, 4),
        (ids[0], T0 + timedelta(hours=30), 0.99, 0.99, 99),  # after the interval: not taken
        (ids[1], T0 + timedelta(hours=2), 0.55, 0.65, 12),
    ])
    report = mat.materialize_interval(T0, T0 + timedelta(hours=24), overlap=timedelta(0), store=store)
    assert report.rows_read >= 2
    values = online(store, ids)
    assert values.loc[ids[0]].tolist() == pytest.approx([0.15, 0.25, 4])
    assert values.loc[ids[1]].tolist() == pytest.approx([0.55, 0.65, 12])
    assert values.loc[ids[2]].isna().all(), "a driver with no rows has no features"


def test_fast_path_writes_the_same_bytes_as_feast_materialize_whole_and_in_shards(store):
    """One shard or four (the last holding none of these drivers): Redis holds what Feast's own materialize wrote,
    and the registry records the interval as Feast's would."""
    ids = [d for d in range(7_200_001, 7_200_068) if shard_of(d, 4) != 3]
    delete_drivers(ids)
    insert_stats([(d, T0 + timedelta(days=3, hours=h, minutes=d % 60), (d % 97) / 97, (d % 89) / 89, d % 40)
                  for d in ids for h in range(3)])
    start, end = T0 + timedelta(days=3), T0 + timedelta(days=4)
    clear_online(store, ids)
    store.materialize(start_date=start, end_date=end, feature_views=["driver_stats"])
    by_feast = raw_hashes(store, ids)
    assert all(by_feast[i] for i in ids)

    clear_online(store, ids)
    mat.materialize_interval(start, end, overlap=timedelta(0), store=store)
    assert raw_hashes(store, ids) == by_feast

    clear_online(store, ids)
    reports = [mat.materialize_shard(start, end, shard, store=store) for shard in plan_shards(4)]
    mat.record_materialization(store, start, end)
    assert [r.rows_read for r in reports] == [sum(1 for d in ids if shard_of(d, 4) == s) for s in range(4)]
    assert reports[3].rows_read == 0 and sum(r.rows_written for r in reports) == len(ids)
    assert raw_hashes(store, ids) == by_feast
    view = store.registry.get_feature_view(FEATURE_VIEW, store.project, allow_cache=False)
    assert (start, end) in [(s.astimezone(UTC), e.astimezone(UTC)) for s, e in view.materialization_intervals]


def test_an_older_row_never_replaces_a_newer_online_value(store):
    driver = 7_300_001
    delete_drivers([driver])
    clear_online(store, [driver])
    insert_stats([(driver, T0 + timedelta(days=6), 0.9, 0.9, 9)])
    mat.materialize_interval(T0 + timedelta(days=6), T0 + timedelta(days=7), overlap=timedelta(0), store=store)
    insert_stats([(driver, T0 + timedelta(days=5), 0.1, 0.1, 1)])  # a late row, older than what is online
    report = mat.materialize_interval(T0 + timedelta(days=5), T0 + timedelta(days=6), overlap=timedelta(0),
                                      store=store)
    assert report.rows_skipped_older >= 1
    assert online(store, [driver]).loc[driver].tolist() == pytest.approx([0.9, 0.9, 9])


def test_overlap_catches_a_row_that_landed_late_for_the_previous_interval(store):
    driver = 7_400_001
    delete_drivers([driver])
    clear_online(store, [driver])
    interval_start = T0 + timedelta(days=8)
    insert_stats([(driver, interval_start - timedelta(minutes=30), 0.42, 0.43, 5)])
    mat.materialize_interval(interval_start, interval_start + timedelta(hours=1), overlap=timedelta(hours=1),
                             store=store)
    assert online(store, [driver]).loc[driver].tolist() == pytest.approx([0.42, 0.43, 5])


def test_point_in_time_join_returns_the_row_valid_at_each_timestamp(store):
    driver = 7_500_001
    delete_drivers([driver])
    t = T0 + timedelta(days=10)
    insert_stats([(driver, t, 0.1, 0.1, 1), (driver, t + timedelta(hours=2), 0.2, 0.2, 2)])
    entity_df = pd.DataFrame({
        "driver_id": [driver] * 5,
        "event_timestamp": [
            t - timedelta(minutes=1),            # before any row: nothing
            t + timedelta(minutes=30),           # first row
            t + timedelta(hours=2),              # exactly at the second row: it is valid
            t + timedelta(hours=3),              # second row
            t + timedelta(days=3),               # past the 2-day TTL: nothing
        ],
        "label": [0, 1, 2, 3, 4],
    })
    frame = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(FEATURE_SERVICE)).to_df()
    frame = frame.sort_values("label").reset_index(drop=True)
    assert frame["conv_rate"].isna().tolist() == [True, False, False, False, True]
    assert frame["conv_rate"][1:4].tolist() == pytest.approx([0.1, 0.2, 0.2])
    assert frame["avg_daily_trips"][1:4].tolist() == [1, 2, 2]
