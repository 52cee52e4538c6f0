"""What a rollout has logged so far: every (request, driver, variant) row of it, with its outcome if known.

One query per evaluation, from the rollout's start (its rows carry its rollout_id), so the comparison
grows with the rollout rather than sliding with the champion's window.
"""

from __future__ import annotations

import pandas as pd

from mlops_platform.rollout import Rollout
from model_serving.prediction_store import GROUND_TRUTH_TABLE, PREDICTIONS_TABLE

ROLLOUT_FRAME = ("request_id", "driver_id", "variant", "model_version", "served", "score", "latency_ms", "failed",
                 "trip_completed")


def read_rollout_rows(cur, rollout: Rollout) -> pd.DataFrame:
    """Rows of ROLLOUT_FRAME; `failed` is true for a variant that did not answer (its score is null),
    `trip_completed` is NaN until the outcome arrives."""
    cur.execute(f"select p.request_id, p.driver_id, p.variant, p.model_version, p.served, p.score, p.latency_ms, "
                f"p.error is not null, g.trip_completed from {PREDICTIONS_TABLE} p "
                f"left join {GROUND_TRUTH_TABLE} g using (request_id, driver_id) "
                "where p.rollout_id = %s and p.model_name = %s", (rollout.rollout_id, rollout.model_name))
    frame = pd.DataFrame(cur.fetchall(), columns=list(ROLLOUT_FRAME))
    for column in ("score", "latency_ms", "trip_completed"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["served"] = frame["served"].astype(bool)
    frame["failed"] = frame["failed"].astype(bool)
    return frame
