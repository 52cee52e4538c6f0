"""Validation of raw landed rows, so only typed, in-range, unique rows reach the offline store.

Upstream files are messy: numbers and timestamps may arrive as text, values may be missing or out
of range, and a key may be delivered twice. Each raw frame is parsed column by column (vectorised;
what cannot be parsed becomes null and is reported with its raw value), then checked with a pandera
schema in lazy mode, and every failure case is mapped back to its 0-based row in the file. A row
fails as a whole: `rejected` keeps its raw values and a reason per broken rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as arrow
import pyarrow.compute as pc

STATS = "driver_stats"
ORDERS = "orders"
DATASETS = (STATS, ORDERS)
KEY = ("driver_id", "event_timestamp")

# Column kinds of each dataset's raw files, in file order.
COLUMNS: dict[str, dict[str, str]] = {
    STATS: {"driver_id": "id", "event_timestamp": "timestamp", "created": "timestamp",
            "conv_rate": "rate", "acc_rate": "rate", "avg_daily_trips": "count"},
    ORDERS: {"event_timestamp": "timestamp", "driver_id": "id", "trip_completed": "flag"},
}
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # what upstream is asked for; other ISO 8601 forms still parse
DEFAULT_EARLIEST = datetime(2015, 1, 1, tzinfo=UTC)
DEFAULT_MAX_FUTURE = timedelta(days=1)

_PARSE_EXPECTATION = {"timestamp": "an ISO 8601 timestamp"}
_NUMBER = "a number"


class SchemaMismatch(ValueError):
    """A raw frame lacks columns its dataset needs, so none of its rows can be judged."""


@dataclass(frozen=True)
class TimestampWindow:
    """Timestamps outside [earliest, now + max_future] are upstream clock or format errors."""

    earliest: datetime = DEFAULT_EARLIEST
    max_future: timedelta = DEFAULT_MAX_FUTURE
    now: datetime | None = None  # None: the time of validation

    def bounds(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        now = pd.Timestamp(self.now or datetime.now(UTC))
        return _utc(pd.Timestamp(self.earliest)), _utc(now) + self.max_future


class Validated(NamedTuple):
    valid: pd.DataFrame  # typed rows; the index is the 0-based row number in the file
    rejected: pd.DataFrame  # raw values, then row_number and reason


def _utc(value: pd.Timestamp) -> pd.Timestamp:
    return value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")


# ---------------------------------------------------------------------------------------------
# Parsing: raw values to typed columns; unparseable values become null
# ---------------------------------------------------------------------------------------------
def parse_timestamps(raw: pd.Series) -> pd.Series:
    """UTC timestamps from text or timestamps; the agreed format is parsed in C, anything else by pandas."""
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        parsed = raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw.dt.tz_convert("UTC")
        return parsed.astype("datetime64[ns, UTC]")
    try:
        text = arrow.array(raw, type=arrow.string(), from_pandas=True)
    except (arrow.ArrowInvalid, arrow.ArrowTypeError):  # not all text: judge each value's text form
        text = arrow.array([None if _is_null(v) else str(v) for v in raw], type=arrow.string())
    fast = pc.strptime(text, format=TIMESTAMP_FORMAT, unit="s", error_is_null=True)
    parsed = pd.Series(fast.to_pandas(), index=raw.index).astype("datetime64[ns, UTC]")
    retry = parsed.isna() & raw.notna()
    if retry.any():
        parsed[retry] = pd.to_datetime(raw[retry].astype(str), format="ISO8601", utc=True, errors="coerce")
    return parsed


def _is_null(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def parse_numbers(raw: pd.Series) -> pd.Series:
    """float64 from text or numbers; text that is not a number becomes NaN."""
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        return pd.Series(raw.to_numpy(dtype="float64", na_value=np.nan), index=raw.index)
    return pd.to_numeric(raw.astype(object), errors="coerce").astype("float64")


def parse(raw: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The dataset's columns, typed for checking: timestamps as UTC, every number as float64."""
    missing = [c for c in COLUMNS[dataset] if c not in raw.columns]
    if missing:
        raise SchemaMismatch(
            f"{dataset} rows need columns {list(COLUMNS[dataset])}, found {list(raw.columns)} "
            f"(missing {missing}); ask the upstream team to deliver every column, or fix the file and land it again"
        )
    return pd.DataFrame(
        {
            column: parse_timestamps(raw[column]) if kind == "timestamp" else parse_numbers(raw[column])
            for column, kind in COLUMNS[dataset].items()
        },
        index=raw.index,
    )


# ---------------------------------------------------------------------------------------------
# The pandera schemas, on parsed columns
# ---------------------------------------------------------------------------------------------
def _whole_number() -> pa.Check:
    return pa.Check(lambda s: np.floor(s) == s, name="whole_number")


def _window(low: pd.Timestamp, high: pd.Timestamp) -> pa.Check:
    return pa.Check(lambda s: (s >= low) & (s <= high), name="timestamp_window")


def schema(dataset: str, window: TimestampWindow | None = None) -> pa.DataFrameSchema:
    """Types, nulls, ranges, the timestamp window and key uniqueness (first occurrence wins)."""
    low, high = (window or TimestampWindow()).bounds()
    checks: dict[str, list[pa.Check]] = {
        "id": [_whole_number(), pa.Check.ge(1)],
        "timestamp": [_window(low, high)],
        "rate": [pa.Check.in_range(0, 1)],
        "count": [_whole_number(), pa.Check.ge(0)],
        "flag": [pa.Check.isin([0, 1])],
    }
    columns = {
        column: pa.Column("datetime64[ns, UTC]" if kind == "timestamp" else "float64",
                          checks=checks[kind], nullable=False)
        for column, kind in COLUMNS[dataset].items()
    }
    return pa.DataFrameSchema(columns, unique=list(KEY), report_duplicates="exclude_first", name=dataset)


# ---------------------------------------------------------------------------------------------
# Failure cases back to rows
# ---------------------------------------------------------------------------------------------
_RULES = {
    "in_range(0, 1)": "must be between 0 and 1",
    "greater_than_or_equal_to(0)": "must be >= 0",
    "greater_than_or_equal_to(1)": "must be >= 1",
    "isin([0, 1])": "must be 0 or 1",
    "whole_number": "must be a whole number",
}


def _iso(value: pd.Timestamp) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _show(value: object) -> str:
    if _is_null(value):
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _column_reasons(failures: pd.DataFrame, raw: pd.DataFrame, dataset: str, window_text: str) -> pd.Series:
    """One reason per (row, column) failure case, naming the column, the rule and the raw value."""
    parts = []
    for (column, check), cases in failures.groupby(["column", "check"], sort=False):
        rows = cases["index"].to_numpy(dtype="int64")
        shown = [_show(value) for value in raw[column].to_numpy()[rows]]  # the value as delivered
        if check == "not_nullable":  # null after parsing: either missing, or not parseable as its type
            expected = _PARSE_EXPECTATION.get(COLUMNS[dataset][column], _NUMBER)
            texts = [f"{column} must not be null (rule not_nullable), got null" if value == "null"
                     else f"{column} must be {expected} (rule parseable), got {value}" for value in shown]
        else:
            rule = window_text if check == "timestamp_window" else _RULES.get(check, f"must satisfy {check}")
            texts = [f"{column} {rule} (rule {check}), got {value}" for value in shown]
        parts.append(pd.DataFrame({"row": rows, "position": list(COLUMNS[dataset]).index(column), "text": texts}))
    if not parts:
        return pd.Series([], dtype=object)
    ordered = pd.concat(parts).sort_values(["row", "position"], kind="stable")  # file order, then column order
    return pd.Series(ordered["text"].to_numpy(), index=ordered["row"].to_numpy(), dtype=object)


def _duplicate_reasons(rows: np.ndarray, typed: pd.DataFrame) -> pd.Series:
    """'duplicate key ...' for each later occurrence, pointing at the first one, which stays valid."""
    keyed = typed[list(KEY)]
    repeated = keyed[keyed.duplicated(list(KEY), keep=False)]
    first = repeated.reset_index(names="row").groupby(list(KEY), sort=False)["row"].transform("min")
    first.index = repeated.index
    reasons = [
        f"duplicate key (driver_id={int(typed.at[row, 'driver_id'])}, "
        f"event_timestamp={_iso(typed.at[row, 'event_timestamp'])}) (rule unique), first seen at row {int(first[row])}"
        for row in rows
    ]
    return pd.Series(reasons, index=rows, dtype=object)


def validate(raw: pd.DataFrame, dataset: str, window: TimestampWindow | None = None) -> Validated:
    """Split a raw file's rows into typed valid rows and rejected raw rows with reasons.

    Row numbers are positions in the file (0-based), whatever index `raw` comes with.
    """
    if dataset not in COLUMNS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {list(COLUMNS)}")
    raw = raw.reset_index(drop=True)
    typed = parse(raw, dataset)
    low, high = (window or TimestampWindow()).bounds()
    window_text = f"must be between {_iso(low)} and {_iso(high)}"

    reasons = pd.Series([], dtype=object)
    try:
        schema(dataset, window).validate(typed, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        unmapped = cases[cases["index"].isna()]
        if len(unmapped):
            raise RuntimeError(
                f"{dataset}: pandera reported failures without a row: "
                f"{unmapped[['column', 'check', 'failure_case']].to_dict('records')[:5]}; "
                "the schema and the parsed dtypes disagree, fix validate.schema()"
            ) from errors
        cases = cases.astype({"index": "int64"})
        is_duplicate = cases["check"].astype(str).str.contains("uniqueness")
        per_column = _column_reasons(cases[~is_duplicate & cases["column"].isin(list(COLUMNS[dataset]))],
                                     raw, dataset, window_text)
        duplicate_rows = np.unique(cases.loc[is_duplicate, "index"].to_numpy())
        # A key with a missing part is no key: those rows already fail on the null or unparseable part.
        keyed = typed.loc[duplicate_rows, list(KEY)].notna().all(axis=1).to_numpy()
        duplicates = _duplicate_reasons(duplicate_rows[keyed], typed)
        reasons = pd.concat([part for part in (per_column, duplicates) if len(part)] or [reasons])

    if len(reasons):
        joined = reasons.groupby(level=0, sort=True).agg("; ".join)
    else:
        joined = pd.Series([], dtype=object, index=pd.Index([], dtype="int64"))
    bad = np.zeros(len(raw), dtype=bool)
    bad[joined.index.to_numpy()] = True

    rejected = raw.loc[bad].astype(object)
    rejected.insert(len(rejected.columns), "row_number", rejected.index.to_numpy(dtype="int64"))
    rejected.insert(len(rejected.columns), "reason", joined.reindex(rejected.index).to_numpy())

    valid = typed.loc[~bad]
    integers = {c: "int64" for c, kind in COLUMNS[dataset].items() if kind in {"id", "count", "flag"}}
    return Validated(valid.astype(integers), rejected)
