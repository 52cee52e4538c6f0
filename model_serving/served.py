"""Which (request_id, driver_id) pairs the API scored: /feedback accepts outcomes only for those.

The pairs this process scored recently are kept in memory (bounded in count and age, oldest first
out), which answers nearly every feedback call at once. A pair not found there may have been scored
by another worker or before a restart; it is then looked up in PostgreSQL's `prediction_log`, which
the prediction logger fills from the `predictions` topic (so an outcome for a prediction made a moment
ago by another worker can still be unknown for the second or so the log takes). A missing table means
nothing was logged yet, i.e. unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from mlops_platform import postgres
from mlops_platform.settings import Settings
from model_serving.prediction_store import PREDICTIONS_TABLE

MEMORY_REQUESTS = 100_000
MEMORY_SECONDS = 24 * 3600.0
LOOKUP_TIMEOUT_SECONDS = 2.0


class LookupUnavailable(RuntimeError):
    """PostgreSQL could not be asked; the message says which server and why."""


class RecentRequests:
    """request_id -> (time, driver ids) for the requests this process scored, oldest evicted first."""

    def __init__(self, capacity: int = MEMORY_REQUESTS, max_age_seconds: float = MEMORY_SECONDS) -> None:
        self.capacity = capacity
        self.max_age = max_age_seconds
        self._entries: OrderedDict[str, tuple[float, frozenset[int]]] = OrderedDict()

    def remember(self, request_id: str, driver_ids: Iterable[int], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        ids = frozenset(driver_ids)
        previous = self._entries.pop(request_id, None)
        if previous is not None:
            ids |= previous[1]
        self._entries[request_id] = (now, ids)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def contains(self, request_id: str, driver_id: int, now: float | None = None) -> bool:
        entry = self._entries.get(request_id)
        if entry is None:
            return False
        now = time.monotonic() if now is None else now
        if now - entry[0] > self.max_age:
            self._expire(now)
            return False
        return driver_id in entry[1]

    def _expire(self, now: float) -> None:
        while self._entries:
            request_id, (when, _) = next(iter(self._entries.items()))
            if now - when <= self.max_age:
                return
            del self._entries[request_id]

    def __len__(self) -> int:
        return len(self._entries)


class PredictionLogLookup:
    """Asks PostgreSQL's prediction_log (feast database) over one lazily opened async connection.

    `query` (with placeholders for the model name, request id and entity key) asks another log instead:
    model_prediction_log for the projects' routes (`logged_for_model`).
    """

    def __init__(self, settings: Settings, table: str = PREDICTIONS_TABLE, query: str | None = None) -> None:
        self.settings = settings
        self.address = postgres.address(settings)
        self.query = query or f"select 1 from {table} where request_id = %s and driver_id = %s limit 1"
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def logged(self, request_id: str, driver_id: int) -> bool:
        """True when the pair is in prediction_log; raises LookupUnavailable when PostgreSQL fails."""
        return await self._exists((request_id, driver_id), request_id)

    async def logged_for_model(self, model_name: str, request_id: str, entity_key: int) -> bool:
        """True when the model logged a prediction of the (request, entity); LookupUnavailable when PostgreSQL fails."""
        return await self._exists((model_name, request_id, str(entity_key)), request_id)

    async def _exists(self, params: tuple[Any, ...], request_id: str) -> bool:
        import psycopg

        async with self._lock:
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS * 2):
                    if self._conn is None or self._conn.closed:
                        self._conn = await postgres.connect_async(self.settings, LOOKUP_TIMEOUT_SECONDS)
                    cursor = await self._conn.execute(self.query, params)
                    return await cursor.fetchone() is not None
            except psycopg.errors.UndefinedTable:
                return False  # the prediction logger has not created its table yet: nothing was logged
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self._reset()
                raise LookupUnavailable(f"PostgreSQL {self.address} could not be asked whether request_id "
                                        f"{request_id!r} was served: {type(exc).__name__}: {exc}") from exc

    async def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # closing a broken connection may fail too; it is dropped either way
                pass

    async def close(self) -> None:
        await self._reset()
