"""What the champion served in the window: its logged predictions, and those that have an outcome.

Only the champion's version is read, and only the answers it returned: its training reference is what
the drift is measured against, and its served scores are what live error is about (during a rollout the
challenger's rows, failed ones and a shadow's unserved ones are the rollout comparison's business).
Both reads are plain SQL on the prediction store.
Every logged feature is read; a champion trained on fewer has nulls in the others, and drift keeps
only its own (monitoring_service.drift.watched_features).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from model_serving.prediction_store import FEATURES, LABELED_VIEW, PREDICTIONS_TABLE

PREDICTION_FRAME = (*FEATURES, "score")
LABELED_FRAME = ("score", "trip_completed")
# The version's answers that were returned: not a shadow challenger's unserved scores, and not the rows
# where it failed (no score); the same version's served canary answers count once it is the champion.
CHAMPION_ROWS = "model_name = %s and model_version = %s and served"


@dataclass(frozen=True)
class Window:
    """The half-open interval (start, end] of prediction times one evaluation looks at."""

    start: datetime
    end: datetime

    @classmethod
    def ending(cls, end: datetime, minutes: int) -> Window:
        if minutes < 1:
            raise ValueError(f"expected a window of at least 1 minute, got {minutes}")
        return cls(end - timedelta(minutes=minutes), end)


def read_predictions(cur, window: Window, model_name: str, model_version: str) -> pd.DataFrame:
    """Features and score of each prediction the version made in the window."""
    cur.execute(f"select {', '.join(PREDICTION_FRAME)} from {PREDICTIONS_TABLE} "
                f"where {CHAMPION_ROWS} and error is null and predicted_at > %s and predicted_at <= %s",
                (model_name, model_version, window.start, window.end))
    return pd.DataFrame(cur.fetchall(), columns=list(PREDICTION_FRAME), dtype="float64")


def read_labeled(cur, window: Window, model_name: str, model_version: str) -> pd.DataFrame:
    """Score and outcome of each prediction of the window whose outcome has arrived (the view holds no failed
    rows)."""
    cur.execute(f"select {', '.join(LABELED_FRAME)} from {LABELED_VIEW} "
                f"where {CHAMPION_ROWS} and predicted_at > %s and predicted_at <= %s",
                (model_name, model_version, window.start, window.end))
    return pd.DataFrame(cur.fetchall(), columns=list(LABELED_FRAME), dtype="float64")
