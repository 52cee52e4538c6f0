"""Raw values to typed columns (timestamps as UTC, numbers as float64); what cannot be parsed becomes null."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as arrow
import pyarrow.compute as pc

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # what upstream is asked for; other ISO 8601 forms still parse
_NS_LOW, _NS_HIGH = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")


def is_missing(value: object) -> bool:
    """No value delivered (None, NA, NaT, a null NaN); a float NaN counts as missing only here, for text forms."""
    return value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def missing_cells(raw: pd.Series) -> np.ndarray:
    """Cells with no value: None, NA, NaT. A float NaN is a value (not a number), judged by the finite rule."""
    if isinstance(raw.dtype, np.dtype) and raw.dtype.kind == "f":  # numpy floats cannot tell them apart: NaN it is
        return np.zeros(len(raw), dtype=bool)
    missing = raw.isna().to_numpy()  # nullable floats (Float64) keep NaN apart from NA already
    if raw.dtype == object:
        for position in np.flatnonzero(missing):  # few: only the null-looking cells
            missing[position] = not isinstance(raw.iat[position], float | np.floating)
    return missing


def _timestamp_text(raw: pd.Series) -> arrow.Array:
    try:
        return arrow.array(raw, type=arrow.string(), from_pandas=True)
    except (arrow.ArrowInvalid, arrow.ArrowTypeError):  # not all text: judge each value's text form
        return arrow.array([None if is_missing(v) else str(v) for v in raw], type=arrow.string())


def _in_nanoseconds(parsed: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """UTC timestamps at pandas' nanosecond unit; those outside its range (1677..2262) become NaT and are flagged."""
    outside = (parsed.notna() & ((parsed < _NS_LOW) | (parsed > _NS_HIGH))).to_numpy()
    if outside.any():
        parsed = parsed.where(~outside)
    return parsed.astype("datetime64[ns, UTC]"), outside


def parse_timestamps(raw: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """UTC timestamps from text or timestamps, and which were too far from today to hold (outside 1677..2262).

    The agreed format is parsed in C, anything else by pandas; what does not parse becomes NaT.
    """
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        parsed = raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw.dt.tz_convert("UTC")
        return _in_nanoseconds(parsed)
    fast = pc.strptime(_timestamp_text(raw), format=TIMESTAMP_FORMAT, unit="s", error_is_null=True)
    parsed, outside = _in_nanoseconds(pd.Series(fast.to_pandas(), index=raw.index).dt.tz_convert("UTC"))
    retry = parsed.isna() & raw.notna() & ~outside
    if retry.any():
        parsed[retry] = pd.to_datetime(raw[retry].astype(str), format="ISO8601", utc=True, errors="coerce")
    return parsed, outside


def _one_number(value: object) -> float:
    try:
        return float(pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0])
    except (TypeError, ValueError):
        return np.nan


def parse_numbers(raw: pd.Series, allow_bool: bool = False) -> pd.Series:
    """float64 from text or numbers (inf stays inf); anything else, booleans unless allowed, becomes NaN."""
    if pd.api.types.is_bool_dtype(raw.dtype):
        values = raw.to_numpy(dtype="float64", na_value=np.nan) if allow_bool else np.full(len(raw), np.nan)
        return pd.Series(values, index=raw.index)
    if pd.api.types.is_numeric_dtype(raw.dtype) and raw.dtype.kind != "c":
        return pd.Series(raw.to_numpy(dtype="float64", na_value=np.nan), index=raw.index)
    values = raw.astype(object)
    if not allow_bool:
        values = values.where([not isinstance(v, bool | np.bool_) for v in values], None)
    try:
        parsed = pd.to_numeric(values, errors="coerce")
    except (TypeError, ValueError):  # values pandas cannot even look at (lists, mappings): one at a time
        parsed = values.map(_one_number)
    return pd.Series(np.asarray(parsed, dtype="float64"), index=raw.index)
