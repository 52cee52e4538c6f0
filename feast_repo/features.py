"""The driver features: entity, offline source, stream push source, feature view and the model's service."""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Float32, Int64
from feast.value_type import ValueType

# Names shared with the pipelines (data_pipeline writes this table; training asks for this service).
OFFLINE_TABLE = "driver_hourly_stats"
FEATURE_SERVICE = "driver_trip_completion"

driver = Entity(
    name="driver",
    join_keys=["driver_id"],
    value_type=ValueType.INT64,
    description="A driver of the ride-hailing fleet; ids start at 1001.",
)

driver_stats_source = PostgreSQLSource(
    name="driver_hourly_stats_source",
    table=OFFLINE_TABLE,
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Validated hourly driver statistics loaded by the ingestion pipeline.",
)

driver_stats_push = PushSource(
    name="driver_stats_push",
    batch_source=driver_stats_source,
    description="Fresh statistics from the driver_stats Kafka topic.",
)

driver_stats = FeatureView(
    name="driver_stats",
    entities=[driver],
    # Hourly stats older than two days say little about a driver's behaviour now: past the TTL a
    # driver has no features rather than stale ones, and the API reports them as missing.
    ttl=timedelta(days=2),
    schema=[
        Field(name="conv_rate", dtype=Float32, description="Share of offers the driver converted."),
        Field(name="acc_rate", dtype=Float32, description="Share of offers the driver accepted."),
        Field(name="avg_daily_trips", dtype=Int64, description="Trips a day, averaged."),
    ],
    source=driver_stats_push,
    online=True,
    tags={"team": "driver-ranking"},
)

driver_trip_completion = FeatureService(
    name=FEATURE_SERVICE,
    features=[driver_stats[["conv_rate", "acc_rate", "avg_daily_trips"]]],
    description="Exactly the features the driver_trip_completion model uses, in its order.",
)
