"""The Feast and Redis factories of the ground floor: one store, one address, one byte layout."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest

from mlops_platform.redis_client import RedisAddress, async_redis_client, redis_client
from tests.conftest import build_settings


def settings(**env: str):
    return build_settings(REDIS_PASSWORD="redis-secret", **env)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- Redis -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.5:6380,password=s3cret", RedisAddress("10.0.0.5", 6380, "s3cret")),
    ("redis:6379,password=", RedisAddress("redis", 6379, None)),
    ("localhost", RedisAddress("localhost", 6379, None)),
    ("h:1,ssl=true,password=a=b", RedisAddress("h", 1, "a=b")),
])
def test_feasts_connection_string_is_read_as_feast_reads_it(text, expected):
    assert RedisAddress.parse(text) == expected


def test_the_clients_take_the_address_and_password_from_settings():
    config = settings(REDIS_HOST="10.1.2.3", REDIS_PORT="6390")
    for client in (redis_client(config), async_redis_client(config)):
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["password"]) == ("10.1.2.3", 6390, "redis-secret")


def test_a_client_with_a_timeout_and_no_retry_fails_at_once_on_a_closed_port():
    import redis

    client = redis_client(RedisAddress("127.0.0.1", closed_port()), timeout=0.5, retries=0)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.5
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()


def test_the_async_client_never_delays_a_request_with_a_health_check_and_fails_on_a_closed_port():
    import redis

    async def ping() -> None:
        client = async_redis_client(RedisAddress("127.0.0.1", closed_port()), timeout=0.5, retries=1)
        assert client.connection_pool.connection_kwargs["health_check_interval"] == 0
        try:
            await client.ping()
        finally:
            await client.aclose()

    with pytest.raises(redis.ConnectionError):
        asyncio.run(ping())


# ---- Feast -------------------------------------------------------------------------------------
def feature_view(*fields: tuple[str, object]):
    from feast import Entity, FeatureView, Field, PushSource, ValueType
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.types import Int64

    source = PostgreSQLSource(name="stats", table="stats", timestamp_field="event_timestamp")
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    schema = [Field(name="driver_id", dtype=Int64), *(Field(name=name, dtype=dtype) for name, dtype in fields)]
    return FeatureView(name="driver_stats", entities=[driver], ttl=timedelta(days=2), schema=schema,
                       source=PushSource(name="push", batch_source=source))


def test_value_kinds_cover_the_contracts_types_in_order_and_name_what_they_cannot_encode():
    from feast.types import Float32, Float64, Int32, Int64, String

    from mlops_platform.feature_store import value_kinds

    view = feature_view(("conv_rate", Float32), ("avg_daily_trips", Int64), ("rank", Int32))
    assert list(value_kinds(view).items()) == [("conv_rate", "float"), ("avg_daily_trips", "int"), ("rank", "int")]
    with pytest.raises(TypeError, match="driver_stats.city"):
        value_kinds(feature_view(("conv_rate", Float32), ("city", String)))
    with pytest.raises(TypeError, match="Float64"):
        value_kinds(feature_view(("conv_rate", Float64)))


def test_the_store_is_the_platforms_and_its_online_store_is_the_platforms_redis():
    """Opening the store reaches no server; its online store must be the Redis the clients use."""
    from feast.types import Float32, Int64

    from mlops_platform.feature_store import FeastRedisEncoding, feature_store, online_store_address

    config = settings(REDIS_HOST="10.9.8.7", REDIS_PORT="6391", POSTGRES_PORT=str(closed_port()))
    store = feature_store(config)
    assert store.project == "ride_mlops"
    assert online_store_address(store) == RedisAddress.of(config) == RedisAddress("10.9.8.7", 6391, "redis-secret")

    encoding = FeastRedisEncoding.of(store, feature_view(("conv_rate", Float32), ("avg_daily_trips", Int64)))
    assert encoding.kinds == {"conv_rate": "float", "avg_daily_trips": "int"}
    assert encoding.ts_field == b"_ts:driver_stats"
    assert encoding.key(1001) != encoding.key(1002) and encoding.key(1001).endswith(b"ride_mlops")
