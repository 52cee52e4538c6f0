"""Validation of raw landed rows, so only typed, in-range, unique rows reach the offline store.

Upstream files are messy: numbers and timestamps may arrive as text, values may be missing or out
of range, a category may be outside its vocabulary, and a key may be delivered twice. Each raw
frame is parsed column by column (vectorised;
what cannot be parsed becomes null and is reported with its raw value). A value its PostgreSQL column
cannot hold (inf, NaN, an integer float64 no longer holds exactly, a rate too small for a real, a
timestamp outside 1677..2262) is set aside with a rule of its own, so no such value ever reaches a load.
The rest is checked with a pandera schema in lazy mode, and every failure case is mapped back to its
0-based row in the file. A row fails as a whole: `rejected` keeps its raw values and a reason per
broken rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np
import pandas as pd
import pandera.pandas as pa

from data_pipeline.categories import CATEGORIES, parse_category, with_indicators
from data_pipeline.parse_values import (
    TIMESTAMP_FORMAT,  # noqa: F401  (what upstream is asked for, exported here)
    is_missing,
    missing_cells,
    parse_numbers,
    parse_timestamps,
)
from feast_repo import penguin_features as penguin

STATS = "driver_stats"
ORDERS = "orders"
PENGUINS = "penguins"
DATASETS = (STATS, ORDERS, PENGUINS)
KEY = ("driver_id", "event_timestamp")  # the driver datasets' key
KEYS = {STATS: KEY, ORDERS: KEY, PENGUINS: (penguin.JOIN_KEY, penguin.TIMESTAMP_FIELD)}

# Column kinds of each dataset's raw files, in file order.
COLUMNS: dict[str, dict[str, str]] = {
    STATS: {"driver_id": "id", "event_timestamp": "timestamp", "created": "timestamp",
            "conv_rate": "rate", "acc_rate": "rate", "avg_daily_trips": "count"},
    ORDERS: {"event_timestamp": "timestamp", "driver_id": "id", "trip_completed": "flag"},
    PENGUINS: {penguin.JOIN_KEY: "id", penguin.TIMESTAMP_FIELD: "timestamp", penguin.CREATED_FIELD: "timestamp",
               penguin.LABEL: "species", "island": "island",
               **{name: "measurement" for name in penguin.MEASUREMENT_NAMES}, "sex": "sex"},
}
DEFAULT_EARLIEST = datetime(2015, 1, 1, tzinfo=UTC)
DEFAULT_MAX_FUTURE = timedelta(days=1)

_PARSE_EXPECTATION = {"timestamp": "an ISO 8601 timestamp", "island": f"one of {list(penguin.ISLANDS)}"}
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
# Bounds of what the offline store keeps exactly: ids and counts go through float64 into bigint, rates into real.
EXACT_INTEGER = 2**53 - 1  # float64 holds every whole number up to here exactly; well inside bigint
REAL_SMALLEST = float(np.finfo(np.float32).smallest_subnormal)
REAL_LARGEST = float(np.finfo(np.float32).max)
_NAN_TEXT = frozenset({"nan", "+nan", "-nan"})


class Unrepresentable(NamedTuple):
    """Cells whose value cannot be stored as its column's type, and the rule they break."""

    rows: np.ndarray  # boolean mask over the frame's rows
    rule: str  # the rule's name, as in the reasons
    expectation: str  # what the value must be


def _nan_values(raw: pd.Series, typed: pd.Series, missing: np.ndarray) -> np.ndarray:
    """Cells holding NaN itself (a float NaN, or the text 'nan'), as opposed to nothing or other text."""
    nan = np.isnan(typed.to_numpy()) & ~missing
    if raw.dtype.kind == "f":
        return nan
    if raw.dtype == object or isinstance(raw.dtype, pd.StringDtype):
        for position in np.flatnonzero(nan):  # few: values that did not parse as numbers
            value = raw.iat[position]
            nan[position] = isinstance(value, float | np.floating) or str(value).strip().lower() in _NAN_TEXT
        return nan
    return np.zeros(len(raw), dtype=bool)


def _number_problems(raw: pd.Series, typed: pd.Series, kind: str) -> list[Unrepresentable]:
    values = typed.to_numpy()
    non_finite = np.isinf(values) | _nan_values(raw, typed, missing_cells(raw))
    magnitude = np.abs(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0))
    if kind in {"id", "count", "flag"}:  # bigint, through float64
        beyond = Unrepresentable(magnitude > EXACT_INTEGER, "exact_integer",
                                 f"must be a whole number between -{EXACT_INTEGER} and {EXACT_INTEGER}")
    else:  # real
        beyond = Unrepresentable((magnitude > REAL_LARGEST) | ((magnitude > 0) & (magnitude <= REAL_SMALLEST / 2)),
                                 "real_range", f"must be 0 or between {REAL_SMALLEST:.3g} and {REAL_LARGEST:.4g} "
                                 "in magnitude, as a PostgreSQL real holds")
    return [Unrepresentable(non_finite, "finite", "must be a finite number"), beyond]


def parse(raw: pd.DataFrame, dataset: str,
          window_text: str = "") -> tuple[pd.DataFrame, dict[str, list[Unrepresentable]]]:
    """The dataset's columns typed for checking (timestamps as UTC, numbers as float64), and per column the
    cells that cannot be stored as its type; those cells are null in the typed frame."""
    missing = [c for c in COLUMNS[dataset] if c not in raw.columns]
    if missing:
        raise SchemaMismatch(
            f"{dataset} rows need columns {list(COLUMNS[dataset])}, found {list(raw.columns)} "
            f"(missing {missing}); ask the upstream team to deliver every column, or fix the file and land it again"
        )
    repeated = sorted({c for c in COLUMNS[dataset] if list(raw.columns).count(c) > 1})
    if repeated:
        raise SchemaMismatch(f"{dataset} rows have columns {repeated} more than once; each column must appear once")
    typed, problems = {}, {}
    for column, kind in COLUMNS[dataset].items():
        if kind == "timestamp":
            typed[column], outside = parse_timestamps(raw[column])
            problems[column] = [Unrepresentable(outside, "timestamp_window", window_text)]
        elif kind in CATEGORIES:
            typed[column], unknown = parse_category(raw[column], kind)
            problems[column] = [Unrepresentable(unknown, "known_category",
                                                f"must be one of {list(CATEGORIES[kind][0])}"
                                                + (" or missing" if CATEGORIES[kind][1] else ""))]
        else:
            typed[column] = parse_numbers(raw[column], allow_bool=kind == "flag")
            problems[column] = _number_problems(raw[column], typed[column], kind)
            spoiled = np.logical_or.reduce([p.rows for p in problems[column]])
            typed[column] = typed[column].where(~spoiled)
    return pd.DataFrame(typed, index=raw.index), problems


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
    columns = {column: _column(column, kind, checks) for column, kind in COLUMNS[dataset].items()}
    return pa.DataFrameSchema(columns, unique=list(KEYS[dataset]), report_duplicates="exclude_first", name=dataset)


def _column(column: str, kind: str, checks: dict[str, list[pa.Check]]) -> pa.Column:
    if kind in CATEGORIES:  # the vocabulary was checked while parsing: only whether a value may be missing
        return pa.Column(object, nullable=CATEGORIES[kind][1])
    if kind == "measurement":
        low, high = penguin.MEASUREMENT_BOUNDS[column]
        return pa.Column("float64", checks=[pa.Check.in_range(low, high)], nullable=False)
    return pa.Column("datetime64[ns, UTC]" if kind == "timestamp" else "float64", checks=checks[kind],
                     nullable=False)


# ---------------------------------------------------------------------------------------------
# Failure cases back to rows
# ---------------------------------------------------------------------------------------------
_RULES = {
    "in_range(0, 1)": "must be between 0 and 1",
    "greater_than_or_equal_to(0)": "must be >= 0",
    "greater_than_or_equal_to(1)": "must be >= 1",
    "isin([0, 1])": "must be 0 or 1",
    "whole_number": "must be a whole number",
    **{f"in_range({low}, {high})": f"must be between {low:g} and {high:g}"
       for low, high in penguin.MEASUREMENT_BOUNDS.values()},
}


def _iso(value: pd.Timestamp) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _show(value: object) -> str:
    """A raw value as a reason quotes it: text in quotes (escaped), numbers as written, null for nothing."""
    if is_missing(value) and not isinstance(value, float | np.floating):
        return "null"
    if isinstance(value, str):
        return repr(value)  # escapes NULs and control characters
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return "NaN"
        if np.isfinite(value) and float(value).is_integer() and abs(value) <= EXACT_INTEGER:
            return str(int(value))
    text = str(value).replace("\x00", "\\x00")
    return text if len(text) <= 200 else text[:200] + "..."


def _column_reasons(failures: pd.DataFrame, raw: pd.DataFrame, dataset: str, window_text: str) -> pd.DataFrame:
    """One reason per (row, column) failure case, naming the column, the rule and the raw value."""
    parts = []
    for (column, check), cases in failures.groupby(["column", "check"], sort=False):
        rows = cases["index"].to_numpy(dtype="int64")
        shown = [_show(value) for value in raw[column].astype(object).to_numpy()[rows]]  # the value as delivered
        if check == "not_nullable":  # null after parsing: either missing, or not parseable as its type
            expected = _PARSE_EXPECTATION.get(COLUMNS[dataset][column], _NUMBER)
            texts = [f"{column} must not be null (rule not_nullable), got null" if value == "null"
                     else f"{column} must be {expected} (rule parseable), got {value}" for value in shown]
        else:
            rule = window_text if check == "timestamp_window" else _RULES.get(check, f"must satisfy {check}")
            texts = [f"{column} {rule} (rule {check}), got {value}" for value in shown]
        parts.append(pd.DataFrame({"row": rows, "position": list(COLUMNS[dataset]).index(column), "text": texts}))
    return pd.concat(parts) if parts else pd.DataFrame({"row": [], "position": [], "text": []})


def _unrepresentable_reasons(problems: dict[str, list[Unrepresentable]], raw: pd.DataFrame,
                             dataset: str) -> pd.DataFrame:
    """A reason for each cell parse() nulled because its value cannot be stored as the column's type."""
    parts = []
    for column, found in problems.items():
        for problem in found:
            rows = np.flatnonzero(problem.rows)
            if len(rows):
                texts = [f"{column} {problem.expectation} (rule {problem.rule}), got {_show(value)}"
                         for value in raw[column].astype(object).to_numpy()[rows]]
                parts.append(pd.DataFrame({"row": rows, "position": list(COLUMNS[dataset]).index(column),
                                           "text": texts}))
    return pd.concat(parts) if parts else pd.DataFrame({"row": [], "position": [], "text": []})


def _duplicate_reasons(rows: np.ndarray, typed: pd.DataFrame, row_numbers: np.ndarray, dataset: str) -> pd.Series:
    """'duplicate key ...' for each later occurrence, pointing at the first one, which stays valid."""
    key = list(KEYS[dataset])
    keyed = typed[key]
    repeated = keyed[keyed.duplicated(key, keep=False)]
    first = repeated.reset_index(names="row").groupby(key, sort=False)["row"].transform("min")
    first.index = repeated.index
    reasons = [
        f"duplicate key ({key[0]}={int(typed.at[row, key[0]])}, "
        f"event_timestamp={_iso(typed.at[row, 'event_timestamp'])}) (rule unique), "
        f"first seen at row {int(row_numbers[int(first[row])])}"
        for row in rows
    ]
    return pd.Series(reasons, index=rows, dtype=object)


def validate(raw: pd.DataFrame, dataset: str, window: TimestampWindow | None = None, *,
             row_numbers: np.ndarray | pd.Index | None = None) -> Validated:
    """Split a raw file's rows into typed valid rows and rejected raw rows with reasons.

    Row numbers are positions in the file (0-based) unless `row_numbers` gives each row's own (a CSV
    reader that set malformed lines aside); the valid frame's index is the row number as well.
    """
    if dataset not in COLUMNS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {list(COLUMNS)}")
    numbers = np.arange(len(raw), dtype="int64") if row_numbers is None else np.asarray(row_numbers, dtype="int64")
    if len(numbers) != len(raw):
        raise ValueError(f"row_numbers must give one number per row: {len(numbers)} numbers for {len(raw)} rows")
    raw = raw.reset_index(drop=True)
    low, high = (window or TimestampWindow()).bounds()
    window_text = f"must be between {_iso(low)} and {_iso(high)}"
    typed, problems = parse(raw, dataset, window_text)

    parts = [_unrepresentable_reasons(problems, raw, dataset)]
    duplicates = pd.Series([], dtype=object)
    try:
        schema(dataset, window).validate(typed, lazy=True)
    except pa.errors.SchemaErrors as errors:
        column_reasons, duplicates = _schema_reasons(errors, problems, raw, typed, numbers, dataset, window_text)
        parts.append(column_reasons)
    return _split(raw, typed, numbers, _reasons_by_row(parts, duplicates), dataset)


def _schema_reasons(errors: pa.errors.SchemaErrors, problems: dict[str, list[Unrepresentable]], raw: pd.DataFrame,
                    typed: pd.DataFrame, numbers: np.ndarray, dataset: str,
                    window_text: str) -> tuple[pd.DataFrame, pd.Series]:
    """The schema's failures as reasons: per cell (those parsing did not explain already) and per duplicate key."""
    cases = errors.failure_cases
    unmapped = cases[cases["index"].isna()]
    if len(unmapped):
        raise RuntimeError(
            f"{dataset}: pandera reported failures without a row: "
            f"{unmapped[['column', 'check', 'failure_case']].to_dict('records')[:5]}; "
            "the schema and the parsed dtypes disagree, fix validate.schema()"
        ) from errors
    spoiled = pd.DataFrame({column: np.logical_or.reduce([p.rows for p in found])
                            for column, found in problems.items()})
    cases = cases.astype({"index": "int64"})
    is_duplicate = cases["check"].astype(str).str.contains("uniqueness")
    per_column = cases[~is_duplicate & cases["column"].isin(list(COLUMNS[dataset]))]
    already_explained = [bool(spoiled.at[row, column]) for row, column in
                         zip(per_column["index"], per_column["column"], strict=True)]
    column_reasons = _column_reasons(per_column[~np.asarray(already_explained, dtype=bool)], raw, dataset,
                                     window_text)
    duplicate_rows = np.unique(cases.loc[is_duplicate, "index"].to_numpy())
    # A key with a missing part is no key: those rows already fail on the null or unparseable part.
    keyed = typed.loc[duplicate_rows, list(KEYS[dataset])].notna().all(axis=1).to_numpy()
    return column_reasons, _duplicate_reasons(duplicate_rows[keyed], typed, numbers, dataset)


def _reasons_by_row(parts: list[pd.DataFrame], duplicates: pd.Series) -> pd.Series:
    """One text per rejected row (by position): its reasons in column order, joined with "; "."""
    cells = pd.concat(parts).astype({"row": "int64", "position": "int64"})
    ordered = cells.sort_values(["row", "position"], kind="stable")  # file order, then column order
    reasons = pd.Series(ordered["text"].to_numpy(), index=ordered["row"].to_numpy(), dtype=object)
    reasons = pd.concat([part for part in (reasons, duplicates) if len(part)] or [reasons])
    if len(reasons):
        return reasons.groupby(level=0, sort=True).agg("; ".join)
    return pd.Series([], dtype=object, index=pd.Index([], dtype="int64"))


def _split(raw: pd.DataFrame, typed: pd.DataFrame, numbers: np.ndarray, joined: pd.Series,
           dataset: str) -> Validated:
    """Typed valid rows and raw rejected rows (with row_number and reason), each indexed by row number."""
    bad = np.zeros(len(raw), dtype=bool)
    bad[joined.index.to_numpy()] = True

    rejected = raw.loc[bad].astype(object)
    rejected.insert(len(rejected.columns), "row_number", numbers[bad])
    rejected.insert(len(rejected.columns), "reason", joined.reindex(rejected.index).to_numpy())
    rejected.index = pd.Index(numbers[bad])

    valid = typed.loc[~bad]
    valid.index = pd.Index(numbers[~bad])
    integers = {c: "int64" for c, kind in COLUMNS[dataset].items() if kind in {"id", "count", "flag"}}
    valid = valid.astype(integers)
    return Validated(with_indicators(valid) if dataset == PENGUINS else valid, rejected)

