"""The landing folder's contract: where upstream raw files go, how they are written and read back.

    <landing>/<dataset>/date=YYYY-MM-DD/<dataset>_YYYY-MM-DD.<parquet|csv>

Writers put a file under a hidden temporary name and rename it when complete, so readers, which skip
hidden files, never see half a file.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import zlib
from datetime import date
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyarrow as arrow
import pyarrow.csv as arrow_csv
import pyarrow.parquet as parquet

from data_pipeline.raw_csv import MalformedLine, UnreadableFile, read_csv
from data_pipeline.validate import SchemaMismatch

log = logging.getLogger("data_pipeline.landing")

FILE_FORMATS = ("parquet", "csv")
# Integers stay integers next to a null, and a float's NaN stays apart from a missing value (NA).
_NULLABLE_NUMBERS = {arrow.int64(): pd.Int64Dtype(), arrow.int32(): pd.Int32Dtype(),
                     arrow.float64(): pd.Float64Dtype(), arrow.float32(): pd.Float32Dtype()}
_UTF8_BOM = b"\xef\xbb\xbf"
_OTHER_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
               b"\xfe\xff": "UTF-16"}


class RawFile(NamedTuple):
    """A landed file's rows as delivered, and the lines (CSV only) that hold no row at all."""

    rows: pd.DataFrame  # the index is each row's 0-based number in the file
    malformed: list[MalformedLine]


def landing_file(landing: Path, dataset: str, day: date, file_format: str) -> Path:
    stamp = day.isoformat()
    return landing / dataset / f"date={stamp}" / f"{dataset}_{stamp}.{file_format}"


def write_atomically(table: arrow.Table, path: Path, file_format: str) -> None:
    """Write to a hidden temporary name in the same folder, then rename: readers see all or nothing."""
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file format must be one of {FILE_FORMATS}, got {file_format!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if file_format == "parquet":
            parquet.write_table(table, temporary)
        else:
            arrow_csv.write_csv(table, temporary, arrow_csv.WriteOptions(quoting_style="needed"))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def landed_files(landing: Path, dataset: str) -> list[tuple[date, Path]]:
    """(partition day, path) of every complete raw file of a dataset, oldest first."""
    found = []
    for folder in sorted((landing / dataset).glob("date=*")):
        try:
            day = date.fromisoformat(folder.name.removeprefix("date="))
        except ValueError:
            log.warning(f"skipping folder {folder}: expected date=YYYY-MM-DD", extra={"dataset": dataset})
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower().lstrip(".") in FILE_FORMATS:
                found.append((day, path))
    return found


def source_name(path: Path, landing: Path) -> str:
    """How the offline store names a file: its path relative to the landing folder (absolute elsewhere)."""
    try:
        name = path.resolve().relative_to(landing.resolve()).as_posix()
    except ValueError:
        name = str(path.resolve())
    return name.encode("utf-8", errors="backslashreplace").decode("utf-8")  # a name that is no UTF-8, escaped


def _decompressed(data: bytes) -> bytes:
    """A gzip'd landed file is read as what it holds (whatever its name says)."""
    if not data.startswith(b"\x1f\x8b"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise UnreadableFile(f"the file is gzip-compressed but cannot be decompressed ({error}); "
                             "land it again, complete") from None


def _csv_text(data: bytes) -> bytes:
    """UTF-8 bytes without their byte order mark; other encodings are named, not guessed."""
    for bom, encoding in _OTHER_BOMS.items():
        if data.startswith(bom):
            raise UnreadableFile(f"the file is {encoding} text (it starts with a {encoding} byte order mark); "
                                 "expected UTF-8: save it as UTF-8 and land it again")
    if not data.strip():
        raise UnreadableFile("the file is empty: expected a header line and rows")
    return data.removeprefix(_UTF8_BOM)


def _parquet_rows(data: bytes) -> pd.DataFrame:
    if not data:
        raise UnreadableFile("the file is empty: expected a parquet file")
    rows = parquet.read_table(io.BytesIO(data)).to_pandas(types_mapper=_NULLABLE_NUMBERS.get)
    repeated = sorted({name for name in rows.columns if list(rows.columns).count(name) > 1})
    if repeated:
        raise SchemaMismatch(f"the file has columns {repeated} more than once; each column must appear once")
    return rows


def read_landed(data: bytes, file_format: str) -> RawFile:
    """A landed file's rows as delivered: parquet keeps its types, CSV is read as text (empty = null).

    Raises UnreadableFile, SchemaMismatch or an Arrow error when the file as a whole cannot be read.
    """
    data = _decompressed(data)
    if file_format == "parquet":
        return RawFile(_parquet_rows(data), [])
    if file_format == "csv":
        rows, malformed = read_csv(_csv_text(data))
        return RawFile(rows, malformed)
    raise ValueError(f"cannot read {file_format!r} files: expected one of {FILE_FORMATS}")


def read_raw(data: bytes, file_format: str, dataset: str | None = None) -> pd.DataFrame:
    """The rows of read_landed (malformed CSV lines left out); `dataset` is accepted for older callers."""
    return read_landed(data, file_format).rows
