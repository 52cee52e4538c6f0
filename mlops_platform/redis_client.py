"""Redis, the one way in: clients on the platform's Redis, which is also Feast's online store.

`timeout` bounds each connect and each reply (None: wait as long as redis-py does); `retries` is how
many times a failed command is retried at once on a fresh connection (None: redis-py's own policy).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlops_platform.settings import Settings

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    password: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> RedisAddress:
        return cls(settings.redis_host, settings.redis_port, settings.redis_password or None)

    @classmethod
    def parse(cls, connection_string: str) -> RedisAddress:
        """Feast's online-store form `host:port,password=...` (feast_repo/feature_store.yaml)."""
        parts = connection_string.split(",")
        host, _, port = parts[0].partition(":")
        options = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
        return cls(host, int(port or DEFAULT_PORT), options.get("password") or None)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _options(timeout: float | None, retries: int | None, retry_class) -> dict:
    from redis.backoff import NoBackoff

    options: dict = {}
    if timeout is not None:
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    if retries is not None:
        options["retry"] = retry_class(NoBackoff(), retries)
    return options


def redis_client(where: Settings | RedisAddress, timeout: float | None = None, retries: int | None = None):
    """A synchronous client (redis.Redis) on the platform's Redis, or on another address."""
    import redis
    from redis.retry import Retry

    address = where if isinstance(where, RedisAddress) else RedisAddress.of(where)
    return redis.Redis(host=address.host, port=address.port, password=address.password,
                       **_options(timeout, retries, Retry))


def async_redis_client(where: Settings | RedisAddress, timeout: float | None = None, retries: int | None = None):
    """An asyncio client (redis.asyncio.Redis) without idle health checks: a request never waits for one."""
    import redis.asyncio
    from redis.asyncio.retry import Retry

    address = where if isinstance(where, RedisAddress) else RedisAddress.of(where)
    return redis.asyncio.Redis(host=address.host, port=address.port, password=address.password,
                               health_check_interval=0, **_options(timeout, retries, Retry))
