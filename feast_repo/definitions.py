"""The Feast objects built from the feature contracts (features.py, penguin_features.py): what `feast apply`
registers.

Entity, offline source, stream push source, feature view and the model's feature service. Nothing here
names a feature or a table itself; change the contract and apply the repo.
"""

from feast import Entity, FeatureService, FeatureView, Field, PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Float32, Int64
from feast.value_type import ValueType

from feast_repo import penguin_features
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

# The penguin project, built from feast_repo/penguin_features.py the same way.
penguin = Entity(
    name=penguin_features.ENTITY,
    join_keys=[penguin_features.JOIN_KEY],
    value_type=ValueType.INT64,
    description="A penguin of the Palmer archipelago; ids are the landed file's row numbers (plus an offset).",
)

penguin_measurements_source = PostgreSQLSource(
    name=f"{penguin_features.OFFLINE_TABLE}_source",
    table=penguin_features.OFFLINE_TABLE,
    timestamp_field=penguin_features.TIMESTAMP_FIELD,
    created_timestamp_column=penguin_features.CREATED_FIELD,
    description="Validated penguin measurements, their indicator columns and species, loaded by ingestion.",
)

penguin_measurements = FeatureView(
    name=penguin_features.FEATURE_VIEW,
    entities=[penguin],
    ttl=penguin_features.FEATURE_TTL,
    schema=[Field(name=feature.name, dtype=FEAST_TYPES[feature.dtype], description=feature.description)
            for feature in penguin_features.FEATURES],
    source=penguin_measurements_source,
    online=True,
    tags={"team": "penguins"},
)

penguin_species = FeatureService(
    name=penguin_features.FEATURE_SERVICE,
    features=[penguin_measurements[list(penguin_features.FEATURE_NAMES)]],
    description="Exactly the features the penguin_species model uses, in its order.",
)
