"""Data drift of the served features and score against the champion's training reference (Evidently).

Drift is watched on the champion's own features: those of its drift reference, which training logs
with exactly the features the model was fitted on (all of them, or a subset such as
`--features avg_daily_trips`), beside its score. A feature the champion does not use is not compared:
serving logs it as null for such a model, and a change in it cannot move the champion's scores.

Every column uses the normed Wasserstein distance, the method Evidently picks for the 5,000-row
reference training logs, so a drift score means the same whatever the window's size: 0 is the
reference's own distribution, and a column drifted when its score reaches DRIFT_THRESHOLD. The drift
share counts the watched features only; the score's drift is reported beside them, as feature "score".
On a window of a few hundred rows the distance of an unchanged distribution is itself about 0.05-0.1,
so one feature may cross the threshold by chance; the alert and the retraining trigger therefore
look at the share of features, not at one of them. With a single watched feature the share is 0 or 1,
so only the alert's `for` and RETRAIN_SUSTAIN_MINUTES stand between a chance crossing and a breach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from model_serving.prediction_store import FEATURES

SCORE = "score"
DRIFT_METHOD = "wasserstein"
DRIFT_THRESHOLD = 0.1


@dataclass(frozen=True)
class DriftResult:
    features: tuple[str, ...]  # the watched features, in the reference's order
    scores: dict[str, float]  # column (each watched feature, and SCORE) -> drift score
    drifted: dict[str, bool]
    share: float  # share of the watched features that drifted
    snapshot: Any  # Evidently's snapshot, for the HTML report

    @property
    def not_watched(self) -> tuple[str, ...]:
        """The logged features the champion does not use."""
        return tuple(feature for feature in FEATURES if feature not in self.features)


def watched_features(reference: pd.DataFrame) -> tuple[str, ...]:
    """The reference's feature columns (all but SCORE); ValueError when they cannot be watched."""
    found = [str(column) for column in reference.columns]
    if SCORE not in found:
        raise ValueError(f"expected the reference to have its features and a {SCORE!r} column, it lacks "
                         f"['{SCORE}'] (found {found}): log it as training_pipeline.final_model does")
    features = tuple(column for column in found if column != SCORE)
    unknown = [feature for feature in features if feature not in FEATURES]
    if not features or unknown:
        raise ValueError(f"expected the reference's features to be some of the logged features {list(FEATURES)}, "
                         f"found {list(features) or 'none'}: the prediction log has no column for {unknown or 'none'}. "
                         "Retrain on logged features, or log the reference with the model's features")
    return features


def check_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """The frame's `columns` as float64; ValueError naming the missing or empty ones."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"expected the {what} to have columns {list(columns)}, it lacks {missing} "
                         f"(found {list(frame.columns)})")
    if frame.empty:
        raise ValueError(f"expected rows in the {what}, found none")
    selected = frame[list(columns)].astype("float64").reset_index(drop=True)
    empty = [column for column in columns if selected[column].isna().all()]
    if empty:
        raise ValueError(f"expected values of {empty} in the {what}, found only nulls: the model that scored these "
                         "rows does not use them, or the online store had no features for their drivers")
    return selected


def compute_drift(reference: pd.DataFrame, current: pd.DataFrame) -> DriftResult:
    """Drift of `current` against `reference` on the reference's features and the score, and the share drifted."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    features = watched_features(reference)
    columns = (*features, SCORE)
    reference = check_columns(reference, columns, "reference")
    current = check_columns(current, columns, "window")
    definition = DataDefinition(numerical_columns=list(columns))
    report = Report([DataDriftPreset(columns=list(columns), method=DRIFT_METHOD, threshold=DRIFT_THRESHOLD)])
    snapshot = report.run(Dataset.from_pandas(current, data_definition=definition),
                          Dataset.from_pandas(reference, data_definition=definition))
    scores = value_drift_scores(snapshot.dict())
    missing = [column for column in columns if column not in scores]
    if missing:
        raise RuntimeError(f"expected Evidently to report a drift score for {list(columns)}, missing {missing}")
    scores = {column: scores[column] for column in columns}
    drifted = {column: scores[column] >= DRIFT_THRESHOLD for column in columns}
    share = sum(drifted[feature] for feature in features) / len(features)
    return DriftResult(features, scores, drifted, share, snapshot)


def value_drift_scores(snapshot: dict) -> dict[str, float]:
    """column -> score of each ValueDrift metric in a snapshot's dict."""
    scores: dict[str, float] = {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config") or {}
        if str(config.get("type", "")).endswith(":ValueDrift") and "column" in config:
            scores[str(config["column"])] = float(metric["value"])
    return scores
