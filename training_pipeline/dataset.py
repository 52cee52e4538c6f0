"""Checks a joined training set before anything trains on it, fingerprints it, and hands it between tasks.

Labels whose driver had no stats within the feature view's TTL come back with every feature null.
They are dropped rather than imputed: a model taught that "no data" looks like an average driver
would rank new or inactive drivers as average. They are counted and logged, and when they exceed
`max_unmatched_share` the run fails, because that means the offline store is missing data. A null
in only some features cannot come from the join (the offline table forbids nulls) and fails the run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training_pipeline.training_set import ENTITY, LABEL, TIMESTAMP, TrainingSetError


@dataclass(frozen=True)
class DatasetReport:
    rows: int
    rows_unmatched_dropped: int
    rows_fit: int
    rows_holdout: int
    label_time_min: str
    label_time_max: str
    holdout_start: str
    positive_share: float
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def expected_columns(features: list[str]) -> list[str]:
    return [ENTITY, TIMESTAMP, LABEL, *features]


def check_schema(frame: pd.DataFrame, features: list[str]) -> None:
    """Columns, dtypes and label values as `training_set.canonical` produces them."""
    expected = expected_columns(features)
    if list(frame.columns) != expected:
        raise TrainingSetError(f"training set columns must be {expected}, found {list(frame.columns)}")
    problems = []
    if frame[ENTITY].dtype != np.int64 or frame[LABEL].dtype != np.int64:
        problems.append(f"{ENTITY} and {LABEL} must be int64, found {frame[ENTITY].dtype}, {frame[LABEL].dtype}")
    if str(frame[TIMESTAMP].dtype) != "datetime64[ns, UTC]":
        problems.append(f"{TIMESTAMP} must be datetime64[ns, UTC], found {frame[TIMESTAMP].dtype}")
    bad_dtypes = {f: str(frame[f].dtype) for f in features if frame[f].dtype != np.float64}
    if bad_dtypes:
        problems.append(f"features must be float64, found {bad_dtypes}")
    labels = set(np.unique(frame[LABEL]).tolist())
    if not labels <= {0, 1}:
        problems.append(f"{LABEL} must be 0 or 1, found values {sorted(labels)}")
    if frame.duplicated([ENTITY, TIMESTAMP]).any():
        problems.append(f"({ENTITY}, {TIMESTAMP}) must be unique, found "
                        f"{int(frame.duplicated([ENTITY, TIMESTAMP]).sum())} repeated keys")
    if problems:
        raise TrainingSetError("training set schema: " + "; ".join(problems))


def drop_unmatched(frame: pd.DataFrame, features: list[str], max_share: float) -> tuple[pd.DataFrame, int]:
    """Drop labels with no features at all; fail on partial nulls or too many unmatched labels."""
    nulls = frame[features].isna()
    unmatched = nulls.all(axis=1)
    partial = nulls.any(axis=1) & ~unmatched
    if partial.any():
        raise TrainingSetError(
            f"{int(partial.sum())} labels have some features null and others not, e.g. "
            f"{frame[partial].head(3).to_dict('records')}; the offline table should forbid nulls: check "
            "driver_hourly_stats' constraints and the ingestion that loaded it")
    dropped = int(unmatched.sum())
    if len(frame) and dropped / len(frame) > max_share:
        raise TrainingSetError(
            f"{dropped} of {len(frame)} labels ({dropped / len(frame):.1%}) have no driver stats within the "
            f"feature view's TTL; at most {max_share:.1%} is allowed. Ingest the missing driver_hourly_stats "
            "for the label window, or move the window (label_start/label_end) to where stats exist")
    return frame[~unmatched].reset_index(drop=True), dropped


def holdout_start(frame: pd.DataFrame, share: float) -> pd.Timestamp:
    """The first label time of the comparison holdout: the most recent `share` of labels.

    Labels at the same instant go to the same side, so the cut is a time, not a row count.
    """
    stamps = frame[TIMESTAMP].sort_values(kind="stable").reset_index(drop=True)
    position = min(len(stamps) - 1, max(0, int(np.floor(len(stamps) * (1.0 - share)))))
    return stamps.iloc[position]


def split_holdout(frame: pd.DataFrame, start: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit part, holdout) of a canonical frame; the fit part is what CV and the final model see."""
    in_holdout = frame[TIMESTAMP] >= start
    return frame[~in_holdout].reset_index(drop=True), frame[in_holdout].reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the canonically sorted frame's column names and values (independent of file format)."""
    ordered = frame.sort_values([TIMESTAMP, ENTITY], kind="stable")
    digest = hashlib.sha256()
    for column in ordered.columns:
        values = ordered[column]
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            data = values.dt.tz_convert("UTC").to_numpy("datetime64[ns]").view(np.int64)
        elif np.issubdtype(values.dtype, np.floating):
            data = values.to_numpy(np.float64)
            data = np.where(np.isnan(data), np.nan, data)  # one NaN bit pattern
        else:
            data = values.to_numpy(np.int64)
        digest.update(column.encode() + b"\0" + str(data.dtype).encode() + b"\0")
        digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()


def validate(frame: pd.DataFrame, features: list[str], *, min_rows: int, max_unmatched_share: float,
             holdout_share: float, folds: int) -> tuple[pd.DataFrame, DatasetReport]:
    """The frame ready to train on, and what it holds; raises TrainingSetError when it is not fit."""
    check_schema(frame, features)
    if frame.empty:
        raise TrainingSetError("the label window holds no labels: check label_start/label_end against the "
                               "orders table, or load orders for that window")
    clean, dropped = drop_unmatched(frame, features, max_unmatched_share)
    if len(clean) < min_rows:
        raise TrainingSetError(f"the training set needs at least {min_rows} labels with features, found "
                               f"{len(clean)} ({dropped} dropped without features): widen the label window "
                               "or lower min_rows")
    start = holdout_start(clean, holdout_share)
    fit, holdout = split_holdout(clean, start)
    for name, part, needed in (("fit part", fit, 2 * folds), ("comparison holdout", holdout, 2)):
        classes = set(np.unique(part[LABEL]).tolist())
        if len(part) < needed or classes != {0, 1}:
            raise TrainingSetError(
                f"the {name} needs at least {needed} labels of both classes, found {len(part)} labels with "
                f"classes {sorted(classes)}: widen the label window or change holdout_share/folds")
    report = DatasetReport(
        rows=len(clean), rows_unmatched_dropped=dropped, rows_fit=len(fit), rows_holdout=len(holdout),
        label_time_min=clean[TIMESTAMP].min().isoformat(), label_time_max=clean[TIMESTAMP].max().isoformat(),
        holdout_start=start.isoformat(), positive_share=round(float(clean[LABEL].mean()), 6),
        sha256=content_hash(clean))
    return clean, report


def save(frame: pd.DataFrame, report: DatasetReport, folder: Path) -> Path:
    """Write training_set.parquet and its report into the run's folder; returns the parquet path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "training_set.parquet"
    temporary = path.with_suffix(".parquet.tmp")
    frame.to_parquet(temporary, index=False)
    temporary.replace(path)
    (folder / "training_set.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return path


def load(folder: Path, features: list[str]) -> tuple[pd.DataFrame, DatasetReport]:
    """What `save` wrote, checked against its recorded hash (a task never trains on a changed file)."""
    path = folder / "training_set.parquet"
    if not path.is_file():
        raise TrainingSetError(f"no training set at {path}: the run's training-set step must run first "
                               "(and every task must see the same PLATFORM_HOME)")
    frame = pd.read_parquet(path)
    report = DatasetReport(**json.loads((folder / "training_set.json").read_text()))
    check_schema(frame, features)
    found = content_hash(frame)
    if found != report.sha256:
        raise TrainingSetError(f"{path} has sha256 {found}, but the run recorded {report.sha256}: the file "
                               "changed after it was built; rerun the whole training run")
    return frame, report
