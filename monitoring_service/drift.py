"""Data drift of the served features and score against the champion's training reference (Evidently).

Every column uses the normed Wasserstein distance, the method Evidently picks for the 5,000-row
reference training logs, so a drift score means the same whatever the window's size: 0 is the
reference's own distribution, and a column drifted when its score reaches DRIFT_THRESHOLD. The drift
share counts the features only; the score's drift is reported beside them, as feature "score".
On a window of a few hundred rows the distance of an unchanged distribution is itself about 0.05-0.1,
so one feature may cross the threshold by chance; the alert and the retraining trigger therefore
look at the share of features, not at one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from model_serving.prediction_store import FEATURES

SCORE = "score"
COLUMNS = (*FEATURES, SCORE)
DRIFT_METHOD = "wasserstein"
DRIFT_THRESHOLD = 0.1


@dataclass(frozen=True)
class DriftResult:
    scores: dict[str, float]  # column -> drift score
    drifted: dict[str, bool]
    share: float  # share of FEATURES that drifted
    snapshot: Any  # Evidently's snapshot, for the HTML report


def check_columns(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """The frame's COLUMNS as float64; ValueError naming the missing ones."""
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"expected the {what} to have columns {list(COLUMNS)}, it lacks {missing} "
                         f"(found {list(frame.columns)})")
    if frame.empty:
        raise ValueError(f"expected rows in the {what}, found none")
    return frame[list(COLUMNS)].astype("float64").reset_index(drop=True)


def compute_drift(reference: pd.DataFrame, current: pd.DataFrame) -> DriftResult:
    """Per-column drift of `current` against `reference`, and the share of drifted features."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference = check_columns(reference, "reference")
    current = check_columns(current, "window")
    definition = DataDefinition(numerical_columns=list(COLUMNS))
    report = Report([DataDriftPreset(columns=list(COLUMNS), method=DRIFT_METHOD, threshold=DRIFT_THRESHOLD)])
    snapshot = report.run(Dataset.from_pandas(current, data_definition=definition),
                          Dataset.from_pandas(reference, data_definition=definition))
    scores = value_drift_scores(snapshot.dict())
    missing = [column for column in COLUMNS if column not in scores]
    if missing:
        raise RuntimeError(f"expected Evidently to report a drift score for {list(COLUMNS)}, missing {missing}")
    drifted = {column: scores[column] >= DRIFT_THRESHOLD for column in COLUMNS}
    share = sum(drifted[feature] for feature in FEATURES) / len(FEATURES)
    return DriftResult(scores, drifted, share, snapshot)


def value_drift_scores(snapshot: dict) -> dict[str, float]:
    """column -> score of each ValueDrift metric in a snapshot's dict."""
    scores: dict[str, float] = {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config") or {}
        if str(config.get("type", "")).endswith(":ValueDrift") and "column" in config:
            scores[str(config["column"])] = float(metric["value"])
    return scores
