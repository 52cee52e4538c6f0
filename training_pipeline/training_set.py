"""The training set: each label in `orders` joined to the driver's features as they were at that moment.

The labels are given to Feast as a SQL query over `orders` (its PostgreSQL offline store runs it in
place) rather than as an uploaded DataFrame. Two ways to run the point-in-time join:

- "feast": `FeatureStore.get_historical_features(entity_df=<SQL>, features=<feature service>)`.
  Its PostgreSQL query joins every label to every stats row of its driver within the TTL before
  picking the latest (48 rows a label for hourly stats and a 2-day TTL), then fetches the result
  row by row in Python: 509 s for a million labels (benchmarks/bench_training_set.py).
- "fast" (default): the same rule written as one index lookup per label (LEFT JOIN LATERAL ...
  ORDER BY event_timestamp DESC, created DESC LIMIT 1) and streamed out with COPY: 7.5 s for the
  same million. The query is built from the feature service's own definitions (views, source
  tables, timestamp and created columns, field mappings, join keys, TTL), and on every run a seeded
  sample of labels is joined by Feast itself and must come out identical, so a Feast upgrade that
  changes the rule fails loudly.

Either way the result has the same canonical form: one row per label, sorted by (event_timestamp,
driver_id), ids and labels int64, timestamps UTC, features float64 (Float32 features pass through
float32 first, exactly as Feast returns them, so both ways give the same bytes).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from data_pipeline.offline_store import ORDERS_TABLE
from feast_repo.features import JOIN_KEY
from mlops_platform.postgres import connect
from mlops_platform.settings import Settings

LABEL = "trip_completed"
ENTITY = JOIN_KEY
TIMESTAMP = "event_timestamp"
log = logging.getLogger(__name__)


class TrainingSetError(RuntimeError):
    """The training set cannot be built or is not fit to train on; the message says why."""


@dataclass(frozen=True)
class ViewPlan:
    """What the point-in-time join needs to know about one feature view of the service."""

    name: str
    table: str  # the batch source's table, or "(query)"
    join_key: str  # column in the source
    entity_column: str  # column in the labels
    timestamp_field: str
    created_column: str | None
    ttl_seconds: int
    columns: dict[str, str]  # feature name -> source column
    float32: tuple[str, ...]  # features Feast returns as float32


def feature_plan(store, service_name: str, features: list[str]) -> list[ViewPlan]:
    """The feature service's views restricted to `features`, read from the Feast registry."""
    from feast.types import Float32

    service = store.get_feature_service(service_name)
    plans = []
    for projection in service.feature_view_projections:
        wanted = [f for f in projection.features if f.name in features]
        if not wanted:
            continue
        view = store.get_feature_view(projection.name)
        source = view.batch_source
        if len(view.entity_columns) != 1:
            raise TrainingSetError(f"feature view {view.name!r} has {len(view.entity_columns)} join keys; "
                                   "the training set supports views keyed by exactly one entity (driver_id)")
        reverse = {feature: column for column, feature in source.field_mapping.items()}
        key = view.entity_columns[0].name
        ttl = int(view.ttl.total_seconds()) if view.ttl else 0
        plans.append(ViewPlan(
            name=projection.name_to_use(),
            table=source.get_table_query_string(),
            join_key=reverse.get(key, key),
            entity_column=projection.join_key_map.get(key, key),
            timestamp_field=reverse.get(source.timestamp_field, source.timestamp_field),
            created_column=(reverse.get(source.created_timestamp_column, source.created_timestamp_column)
                            or None),
            ttl_seconds=ttl,
            columns={f.name: reverse.get(f.name, f.name) for f in wanted},
            float32=tuple(f.name for f in wanted if f.dtype == Float32),
        ))
    return plans


def service_features(store, service_name: str) -> list[str]:
    """The feature names a feature service serves, in its order."""
    service = store.get_feature_service(service_name)
    return [f.name for projection in service.feature_view_projections for f in projection.features]


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC).isoformat()}'::timestamptz"


def labels_sql(start: datetime, end: datetime, table: str = ORDERS_TABLE) -> str:
    """The labels of [start, end) as a SQL query: Feast's entity_df, run where the data lives."""
    return (f"SELECT {ENTITY}, {TIMESTAMP}, {LABEL} FROM {table} "
            f"WHERE {TIMESTAMP} >= {_literal(start)} AND {TIMESTAMP} < {_literal(end)}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def point_in_time_sql(labels: str, plans: list[ViewPlan]) -> str:
    """For each label, the latest row of each view at or before it and within the TTL (Feast's rule)."""
    select = [f"l.{ENTITY}", f"(extract(epoch from l.{TIMESTAMP}) * 1000000)::bigint AS event_us", f"l.{LABEL}"]
    joins = []
    for n, plan in enumerate(plans):
        alias = f"f{n}"
        ts, key = _quote(plan.timestamp_field), _quote(plan.join_key)
        columns = ", ".join(f"s.{_quote(column)} AS {_quote(feature)}" for feature, column in plan.columns.items())
        order = f"s.{ts} DESC" + (f", s.{_quote(plan.created_column)} DESC" if plan.created_column else "")
        ttl = f" AND s.{ts} >= l.{TIMESTAMP} - interval '{plan.ttl_seconds} seconds'" if plan.ttl_seconds else ""
        joins.append(
            f"LEFT JOIN LATERAL (SELECT {columns} FROM {plan.table} AS s "
            f"WHERE s.{key} = l.{_quote(plan.entity_column)} AND s.{ts} <= l.{TIMESTAMP}{ttl} "
            f"ORDER BY {order} LIMIT 1) AS {alias} ON true")
        select += [f"{alias}.{_quote(feature)}" for feature in plan.columns]
    return f"SELECT {', '.join(select)} FROM ({labels}) AS l {' '.join(joins)}"


def fetch_fast(labels: str, plans: list[ViewPlan], settings: Settings) -> pd.DataFrame:
    """Run the point-in-time query in PostgreSQL and stream the result out with COPY."""
    import pyarrow as arrow
    import pyarrow.csv as arrow_csv

    features = [f for plan in plans for f in plan.columns]
    names = [ENTITY, "event_us", LABEL, *features]
    buffer = io.BytesIO()
    with connect(settings) as conn, conn.cursor() as cur:
        cur.copy_expert(f"COPY ({point_in_time_sql(labels, plans)}) TO STDOUT WITH (FORMAT csv)", buffer)
    if not buffer.getbuffer().nbytes:
        return canonical(pd.DataFrame({name: [] for name in names}), plans)
    buffer.seek(0)
    types = {ENTITY: arrow.int64(), "event_us": arrow.int64(), LABEL: arrow.int64(),
             **{f: arrow.float64() for f in features}}
    table = arrow_csv.read_csv(buffer, read_options=arrow_csv.ReadOptions(column_names=names),
                               convert_options=arrow_csv.ConvertOptions(column_types=types))
    return canonical(table.to_pandas(), plans)


def fetch_feast(store, labels: str, service_name: str, plans: list[ViewPlan]) -> pd.DataFrame:
    """Feast's own point-in-time join of the labels (a SQL string) through the feature service."""
    service = store.get_feature_service(service_name)
    frame = store.get_historical_features(entity_df=labels, features=service).to_df()
    return canonical(frame, plans)


def canonical(frame: pd.DataFrame, plans: list[ViewPlan]) -> pd.DataFrame:
    """One layout for every way of building the set: fixed columns, dtypes and row order."""
    features = [f for plan in plans for f in plan.columns]
    float32 = {f for plan in plans for f in plan.float32}
    if "event_us" in frame:
        stamps = pd.to_datetime(frame["event_us"].to_numpy(np.int64), unit="us", utc=True)
    else:
        stamps = pd.to_datetime(frame[TIMESTAMP], utc=True)
    out = pd.DataFrame({
        ENTITY: frame[ENTITY].to_numpy(np.int64),
        TIMESTAMP: pd.DatetimeIndex(stamps).as_unit("ns"),
        LABEL: frame[LABEL].to_numpy(np.int64),
    })
    for feature in features:
        values = pd.to_numeric(frame[feature]).to_numpy(np.float64, na_value=np.nan)
        out[feature] = values.astype(np.float32).astype(np.float64) if feature in float32 else values
    return out.sort_values([TIMESTAMP, ENTITY], kind="stable").reset_index(drop=True)


def sample_sql(labels: str, sample: pd.DataFrame) -> str:
    """`labels` restricted to the sample's (driver_id, event_timestamp) keys."""
    keys = ", ".join(f"({int(d)}, {_literal(ts.to_pydatetime())})"
                     for d, ts in zip(sample[ENTITY], sample[TIMESTAMP], strict=True))
    return f"SELECT * FROM ({labels}) AS l WHERE ({ENTITY}, {TIMESTAMP}) IN (VALUES {keys})"


def mismatches(ours: pd.DataFrame, reference: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Rows where two canonical frames disagree (a missing row counts; NaN equals NaN)."""
    merged = ours.merge(reference, on=[ENTITY, TIMESTAMP], how="outer", suffixes=("", "_ref"), indicator=True)
    bad = merged["_merge"] != "both"
    for column in [LABEL, *features]:
        a, b = merged[column], merged[f"{column}_ref"]
        bad |= ~((a == b) | (a.isna() & b.isna()))
    return merged[bad]


def check_against_feast(store, labels: str, service_name: str, plans: list[ViewPlan], frame: pd.DataFrame,
                        rows: int, seed: int) -> int:
    """Join a seeded sample of labels with Feast itself; raise unless it matches `frame` exactly."""
    if rows == 0 or frame.empty:
        return 0
    sample = frame.sample(n=min(rows, len(frame)), random_state=seed)
    reference = fetch_feast(store, sample_sql(labels, sample), service_name, plans)
    features = [f for plan in plans for f in plan.columns]
    bad = mismatches(sample.sort_values([TIMESTAMP, ENTITY]), reference, features)
    if len(bad):
        example = bad.head(3).drop(columns="_merge").to_dict("records")
        raise TrainingSetError(
            f"the fast point-in-time join disagrees with Feast's get_historical_features on {len(bad)} of "
            f"{len(sample)} sampled labels, e.g. {example}; rerun with retrieval=feast and look at the "
            "feature view's definition (TTL, timestamp columns) for what changed")
    return len(sample)


def build(store, labels: str, service_name: str, features: list[str], settings: Settings,
          retrieval: str = "fast", check_rows: int = 500, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The joined labels in canonical form, and how they were obtained (for the run's params)."""
    plans = feature_plan(store, service_name, features)
    started = datetime.now(UTC)
    if retrieval == "feast":
        frame, checked = fetch_feast(store, labels, service_name, plans), 0
    else:
        frame = fetch_fast(labels, plans, settings)
        checked = check_against_feast(store, labels, service_name, plans, frame, check_rows, seed)
    seconds = (datetime.now(UTC) - started).total_seconds()
    log.info("built training set", extra={"rows": len(frame), "retrieval": retrieval, "seconds": round(seconds, 3),
                                          "feast_checked_rows": checked})
    return frame, {"retrieval": retrieval, "retrieval_seconds": round(seconds, 3), "feast_checked_rows": checked}
