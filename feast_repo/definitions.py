"""The Feast objects built from the feature contract (features.py): what `feast apply` registers.

Entity, offline source, stream push source, feature view and the model's feature service. Nothing here
names a feature or a table itself; change the contract and apply the repo.
"""

from feast import Entity, FeatureService, FeatureView, Field, PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Float32, Int64
from feast.value_type import ValueType

from feast_repo.features import (
    CREATED_FIELD,
    ENTITY,
    FEATURE_NAMES,
    FEATURE_SERVICE,
    FEATURE_TTL,
    FEATURE_VIEW,
    FEATURES,
    JOIN_KEY,
    OFFLINE_TABLE,
    PUSH_SOURCE,
    TIMESTAMP_FIELD,
)

FEAST_TYPES = {"float32": Float32, "int64": Int64}

driver = Entity(
    name=ENTITY,
    join_keys=[JOIN_KEY],
    value_type=ValueType.INT64,
    description="A driver of the ride-hailing fleet; ids start at 1001.",
)

driver_stats_source = PostgreSQLSource(
    name=f"{OFFLINE_TABLE}_source",
    table=OFFLINE_TABLE,
    timestamp_field=TIMESTAMP_FIELD,
    created_timestamp_column=CREATED_FIELD,
    description="Validated hourly driver statistics loaded by the ingestion pipeline.",
)

driver_stats_push = PushSource(
    name=PUSH_SOURCE,
    batch_source=driver_stats_source,
    description="Fresh statistics from the driver_stats Kafka topic.",
)

driver_stats = FeatureView(
    name=FEATURE_VIEW,
    entities=[driver],
    ttl=FEATURE_TTL,
    schema=[Field(name=feature.name, dtype=FEAST_TYPES[feature.dtype], description=feature.description)
            for feature in FEATURES],
    source=driver_stats_push,
    online=True,
    tags={"team": "driver-ranking"},
)

driver_trip_completion = FeatureService(
    name=FEATURE_SERVICE,
    features=[driver_stats[list(FEATURE_NAMES)]],
    description="Exactly the features the driver_trip_completion model uses, in its order.",
)
