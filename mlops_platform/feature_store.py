"""Feast, the one way in: the platform's FeatureStore, and the byte layout of its Redis online store.

`feature_store()` opens the one feature repo (feast_repo/) on the platform's configuration.
`value_kinds()` and `FeastRedisEncoding` describe what Feast's Redis store holds for a feature view, so
the fast materialization (data_pipeline.materialize) writes exactly the keys and bytes that the online
API (model_serving.features) reads, and both match what Feast itself would write and read.
"""

from __future__ import annotations

import os
import struct
from datetime import UTC, datetime

from mlops_platform.redis_client import RedisAddress
from mlops_platform.settings import REPO_ROOT, Settings, get_settings

FEATURE_REPO = REPO_ROOT / "feast_repo"


def feature_store(settings: Settings | None = None):
    """A Feast FeatureStore on the platform's configuration (feature_store.yaml expands these variables)."""
    settings = settings or get_settings()
    os.environ.update(settings.feast_environment())  # Feast reads only the process environment
    from feast import FeatureStore

    return FeatureStore(repo_path=str(FEATURE_REPO))


def online_store_address(store) -> RedisAddress:
    """The Redis server Feast's online store is configured with (feature_store.yaml's connection string)."""
    return RedisAddress.parse(store.config.online_store.connection_string)


def value_kinds(feature_view) -> dict[str, str]:
    """feature -> "float" (Float32) or "int" (Int32, Int64), in the view's order: the value types the
    online store's byte layouts below cover. Any other type raises TypeError naming the feature."""
    from feast.types import Float32, Float64, Int32, Int64

    kinds = {}
    for field in feature_view.features:
        if field.dtype in (Float32, Float64):
            kinds[field.name] = "float" if field.dtype == Float32 else "double"
        elif field.dtype in (Int32, Int64):
            kinds[field.name] = "int"
        else:
            raise TypeError(f"{feature_view.name}.{field.name}: type {field.dtype} is not supported by the fast path")
    if "double" in kinds.values():
        raise TypeError("Float64 features are not supported by the fast path")
    return kinds


class FeastRedisEncoding:
    """The byte layouts of Feast's Redis online store for one single-key int64 entity feature view.

    Derived from Feast's own serializers at start-up and checked against them, so a Feast upgrade
    that changes a layout fails loudly here instead of writing keys Feast cannot read.
    """

    def __init__(self, project: str, join_key: str, feature_view: str, features: dict[str, str],
                 serialization_version: int) -> None:
        import numpy as np
        from feast.infra.online_stores.helpers import _mmh3, _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        def feast_key(driver_id: int) -> bytes:
            key = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=driver_id)])
            return _redis_key(project, key, entity_key_serialization_version=serialization_version)

        # A single int64 entity key is <head><little-endian id><project>.
        self._key_tail = project.encode()
        self._key_head = feast_key(0)[: -len(self._key_tail) - 8]
        self.ts_field = f"_ts:{feature_view}".encode()
        self.fields = {name: _mmh3(f"{feature_view}:{name}") for name in features}
        self.kinds = features
        self._float_tag = Value(float_val=0.0).SerializeToString()[:-4]
        self._int_tag = Value(int64_val=0).SerializeToString()[:-1]
        for sample in (1001, 2**33 + 7):
            assert self.key(sample) == feast_key(sample), "Feast's entity key layout changed"
        assert self.value("float", 0.3) == Value(float_val=np.float32(0.3)).SerializeToString()
        assert self.value("int", 300) == Value(int64_val=300).SerializeToString()
        assert self.timestamp(1_700_000_000_123_456) == _feast_timestamp(1_700_000_000_123_456)

    @classmethod
    def of(cls, store, feature_view, kinds: dict[str, str] | None = None) -> FeastRedisEncoding:
        """The encoding of `feature_view` (a Feast FeatureView) in `store`; `kinds` defaults to all its features."""
        return cls(store.project, feature_view.entity_columns[0].name, feature_view.name,
                   value_kinds(feature_view) if kinds is None else kinds,
                   store.config.entity_key_serialization_version)

    def key(self, driver_id: int) -> bytes:
        return self._key_head + struct.pack("<q", driver_id) + self._key_tail

    def value(self, kind: str, value) -> bytes:
        if kind == "float":
            return self._float_tag + struct.pack("<f", value)
        return self._int_tag + _varint(int(value) & 0xFFFFFFFFFFFFFFFF)

    @staticmethod
    def timestamp(epoch_us: int) -> bytes:
        seconds, micros = divmod(int(epoch_us), 1_000_000)
        encoded = b"\x08" + _varint(seconds)
        return encoded + (b"\x10" + _varint(micros * 1000) if micros else b"")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _feast_timestamp(epoch_us: int) -> bytes:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(datetime.fromtimestamp(epoch_us / 1_000_000, UTC).replace(
        microsecond=epoch_us % 1_000_000))
    return ts.SerializeToString()
