"""The feature contract: the driver entity, its features and their types, and the names the pipelines share.

Every package reads the feature names from here: the stream's message contract, the offline table's
columns, the serving path, training's default feature service, the simulators and the tests. It is plain
Python on purpose, because importing Feast costs seconds; the Feast objects are built from it in
definitions.py, which `feast apply` registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

ENTITY = "driver"
JOIN_KEY = "driver_id"

# The offline table the ingestion pipeline writes and Feast's offline source reads.
OFFLINE_TABLE = "driver_hourly_stats"
TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created"

FEATURE_VIEW = "driver_stats"
PUSH_SOURCE = "driver_stats_push"  # where the stream consumer pushes fresh statistics
# Hourly stats older than two days say little about a driver's behaviour now: past the TTL a driver has
# no features rather than stale ones, and the API reports them as missing.
FEATURE_TTL = timedelta(days=2)

FEATURE_SERVICE = "driver_trip_completion"  # what the model is trained on and served with


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # "float32" or "int64", Feast's value type of the feature
    description: str


# In the feature service's order, which is the order the model receives them in.
FEATURES = (
    Feature("conv_rate", "float32", "Share of offers the driver converted."),
    Feature("acc_rate", "float32", "Share of offers the driver accepted."),
    Feature("avg_daily_trips", "int64", "Trips a day, averaged."),
)
FEATURE_NAMES = tuple(feature.name for feature in FEATURES)
