"""The landing folder's contract: where upstream raw files go, how they are written and read back.

    <landing>/<dataset>/date=YYYY-MM-DD/<dataset>_YYYY-MM-DD.<parquet|csv>

Writers put a file under a hidden temporary name and rename it when complete, so readers, which skip
hidden files, never see half a file.
"""

from __future__ import annotations

import io
import logging
import os
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as arrow
import pyarrow.csv as arrow_csv
import pyarrow.parquet as parquet

from data_pipeline.validate import COLUMNS

log = logging.getLogger("data_pipeline.landing")

FILE_FORMATS = ("parquet", "csv")
_NULLABLE_INTEGERS = {arrow.int64(): pd.Int64Dtype(), arrow.int32(): pd.Int32Dtype()}


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
        return path.resolve().relative_to(landing.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def read_raw(data: bytes, file_format: str, dataset: str) -> pd.DataFrame:
    """A raw file's rows as delivered: parquet keeps its types, CSV is read as text (empty = null).

    Integers stay integers next to a null (pandas would turn the column into floats).
    """
    if file_format == "parquet":
        return parquet.read_table(io.BytesIO(data)).to_pandas(types_mapper=_NULLABLE_INTEGERS.get)
    if file_format == "csv":
        text_columns = {column: arrow.string() for column in COLUMNS[dataset]}
        table = arrow_csv.read_csv(io.BytesIO(data), convert_options=arrow_csv.ConvertOptions(
            column_types=text_columns, strings_can_be_null=True, null_values=[""]))
        return table.to_pandas()
    raise ValueError(f"cannot read {file_format!r} files: expected one of {FILE_FORMATS}")
