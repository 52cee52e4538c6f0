"""Landed CSV files read so that one malformed line costs that line, not the file.

Arrow reads a clean file in one fast pass. When it cannot (a line with too many or too few fields, bytes
that are not UTF-8, an unterminated quote that would swallow the lines after it, blank lines), the file
is read again line by line: each physical line is one record, and a line that cannot be split into the
header's fields is set aside as a `MalformedLine` with its number and text, for quarantine. None of the
datasets has a text column, so a value never legitimately spans lines.

Row numbers are 0-based record positions, counted the way the header-less lines are numbered:
row N is physical line N + 2 (line 1 is the header).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as arrow
import pyarrow.csv as arrow_csv

from data_pipeline.validate import SchemaMismatch

SHOWN_LINE_CHARS = 300  # how much of a malformed line its quarantine row keeps


class UnreadableFile(ValueError):
    """The file as a whole cannot be read as rows (empty, not UTF-8 text, no header): nothing can be judged."""


@dataclass(frozen=True)
class MalformedLine:
    line_number: int  # 1-based physical line of the file; the header is line 1
    text: str  # the line as delivered, undecodable bytes as \\x.. escapes, cut at SHOWN_LINE_CHARS
    problem: str

    @property
    def row_number(self) -> int:
        return self.line_number - 2

    @property
    def reason(self) -> str:
        return f"line {self.line_number} {self.problem} (rule well_formed_line)"


class CsvRows(NamedTuple):
    rows: pd.DataFrame  # the header's columns as text (empty = None); the index is the row number
    malformed: list[MalformedLine]


def shown_text(line: bytes | str) -> str:
    """A line as storable text: undecodable bytes and NULs escaped, cut to SHOWN_LINE_CHARS."""
    text = line.decode("utf-8", errors="backslashreplace") if isinstance(line, bytes) else line
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= SHOWN_LINE_CHARS else text[:SHOWN_LINE_CHARS] + f"... ({len(text)} chars)"


def _split(text: str) -> list[str]:
    """One line's fields; csv.Error when it is not one well-formed CSV record (e.g. an unterminated quote)."""
    return next(csv.reader([text], strict=True), [])


def read_header(data: bytes) -> list[str]:
    """The column names of the first line, which must be UTF-8 CSV with unique names."""
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not first.strip():
        raise UnreadableFile("the first line is empty: expected a header line with the column names")
    try:
        names = _split(first.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UnreadableFile(f"the header line is not UTF-8 ({error.reason} at byte {error.start}): "
                             f"{shown_text(first)!r}; save the file as UTF-8") from None
    except csv.Error as error:
        raise UnreadableFile(f"the header line is not valid CSV ({error}): {shown_text(first)!r}") from None
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SchemaMismatch(f"the header names columns {repeated} more than once: {names}; each column must "
                             "appear once. Fix the file and land it again")
    return names


def _fast(data: bytes, names: list[str]) -> pd.DataFrame | None:
    """Arrow's reading of a clean file, or None when the file needs the line-by-line reading."""
    options = arrow_csv.ConvertOptions(column_types={name: arrow.string() for name in names},
                                       strings_can_be_null=True, null_values=[""])
    try:
        table = arrow_csv.read_csv(io.BytesIO(data), convert_options=options)
    except arrow.ArrowException:
        return None
    records = data.count(b"\n") - (1 if data.endswith(b"\n") else 0)  # lines after the header
    if table.num_rows != records or table.column_names != names:
        return None  # blank lines, or a quote that spans lines: count what each line holds
    return table.to_pandas()


def _by_line(data: bytes, names: list[str]) -> CsvRows:
    records: list[list[str]] = []
    row_numbers: list[int] = []
    malformed: list[MalformedLine] = []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline ends the last line, it does not start another
    for line_number, line in enumerate(lines[1:], start=2):
        line = line.rstrip(b"\r")
        if not line:
            continue  # a blank line holds no record
        try:
            fields = _split(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            malformed.append(MalformedLine(line_number, shown_text(line),
                                           f"is not UTF-8 text ({error.reason}: byte 0x{line[error.start]:02x} "
                                           f"at position {error.start})"))
            continue
        except csv.Error as error:
            malformed.append(MalformedLine(line_number, shown_text(line), f"is not a valid CSV record ({error})"))
            continue
        if len(fields) != len(names):
            malformed.append(MalformedLine(line_number, shown_text(line),
                                           f"has {len(fields)} fields, expected {len(names)} ({','.join(names)})"))
            continue
        records.append([field if field != "" else None for field in fields])
        row_numbers.append(line_number - 2)
    columns = list(zip(*records, strict=True)) if records else [()] * len(names)
    rows = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in zip(names, columns, strict=True)})
    rows.index = pd.Index(np.asarray(row_numbers, dtype="int64"))
    return CsvRows(rows, malformed)


def read_csv(data: bytes) -> CsvRows:
    """The file's records as text, and the lines that are no record; `data` is UTF-8 without its BOM."""
    names = read_header(data)
    fast = _fast(data, names)
    if fast is not None:
        return CsvRows(fast, [])
    return _by_line(data, names)
