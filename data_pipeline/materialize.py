"""Materialization: the newest offline row of each driver, written into Feast's Redis online store.

Feast's own `store.materialize()` converts every row to protobuf objects in Python and writes them
one by one (about 12k rows/s). This module writes the very same keys and bytes: it asks PostgreSQL
for the latest row per driver (DISTINCT ON, streamed with COPY), packs the values in the byte layouts
Feast itself produces (data_pipeline.online_write, checked against Feast's serializer on every run),
and writes them with one server-side compare-and-set call per 2,000 drivers. Like Feast, it never
replaces a value with an older one, and it records the interval in Feast's registry so `feast` tools
see what was materialized.

The drivers split into shards by driver_id (data_pipeline.shards): the DAG runs one task per shard
(`materialize_shard`), then records the interval once (`record_materialization`). Within a shard the
work goes in parts, so PostgreSQL reads the next part while this process packs the last one and Redis
stores the one before.

The penguin view (a few hundred rows) goes through Feast's own `store.materialize()`: no fast path to keep
in step with Feast's encoding for a view that small.
"""

from __future__ import annotations

import io
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from data_pipeline.offline_store import STATS_TABLE
from data_pipeline.online_write import CompareAndSetPacker, write_newer_lua
from data_pipeline.shards import Shard
from feast_repo import penguin_features
from feast_repo.features import FEATURE_VIEW
from mlops_platform.feature_store import FeastRedisEncoding, feature_store, online_store_address
from mlops_platform.postgres import connect
from mlops_platform.redis_client import redis_client
from mlops_platform.settings import Settings, get_settings

CHUNK_ROWS = 2_000  # drivers per script call: Redis runs one call for ~10 ms, then serves others
PARTS_PER_SHARD = 4  # reads per shard, each overlapping the writes of the one before
IN_FLIGHT_CALLS = 2  # packed calls waiting for Redis: enough to keep it busy, few enough to bound memory
ALL_DRIVERS = Shard(0, 1)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaterializeReport:
    start: datetime
    end: datetime
    rows_read: int
    rows_written: int
    rows_skipped_older: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0


def _utc(value: datetime) -> datetime:
    """A plain UTC datetime (naive means UTC); also turns pendulum's DateTime, as Airflow passes it, into one."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value.timestamp(), UTC)


def latest_rows(start: datetime, end: datetime, features: list[str], settings: Settings | None = None,
                shard: Shard = ALL_DRIVERS) -> pd.DataFrame:
    """The newest row per driver of `shard` with start <= event_timestamp < end, as Feast's offline pull picks it."""
    columns = ", ".join(features)
    query = (
        f"COPY (SELECT DISTINCT ON (driver_id) driver_id, "
        f"(extract(epoch from event_timestamp) * 1000000)::bigint AS event_us, {columns} "
        f"FROM {STATS_TABLE} WHERE event_timestamp >= %s AND event_timestamp < %s AND {shard.sql_condition()} "
        f"ORDER BY driver_id, event_timestamp DESC, created DESC) TO STDOUT WITH (FORMAT csv)"
    )
    buffer = io.BytesIO()
    with connect(settings) as conn, conn.cursor() as cur:
        cur.copy_expert(cur.mogrify(query, (_utc(start), _utc(end))).decode(), buffer)
    buffer.seek(0)
    if not buffer.getbuffer().nbytes:
        return pd.DataFrame(columns=["driver_id", "event_us", *features])
    return pd.read_csv(buffer, header=None, names=["driver_id", "event_us", *features], engine="pyarrow")


class OnlineWriter:
    """Writes frames of (driver_id, event_us, features...) into Redis with the compare-and-set script.

    `add()` packs a frame and queues its calls (a thread sends them while the next ones are packed);
    `finish()` waits for all and returns (written, skipped as older).
    """

    def __init__(self, store, feature_view_name: str = FEATURE_VIEW) -> None:
        online = store.config.online_store
        if str(getattr(online, "redis_type", "redis")).lower().endswith("cluster"):
            raise NotImplementedError("the fast path writes to a single Redis server, not a cluster")
        encoding = FeastRedisEncoding.of(store, store.get_feature_view(feature_view_name))
        self._features = list(encoding.kinds)
        self._script = write_newer_lua(len(self._features))
        self._client = redis_client(online_store_address(store))
        sha = self._client.script_load(self._script)
        self._packer = CompareAndSetPacker(encoding, sha, int(online.key_ttl_seconds or 0))
        self._connection = self._client.connection_pool.get_connection()
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-writer")
        self._pending: deque = deque()
        self.rows = 0
        self.written = 0

    def add(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        keys = self._packer.keys(frame["driver_id"].to_numpy(dtype=np.int64))
        arguments = self._packer.row_arguments(frame["event_us"].to_numpy(dtype=np.int64),
                                               [frame[name].to_numpy() for name in self._features])
        per_row = self._packer.items_per_row
        for begin in range(0, len(frame), CHUNK_ROWS):
            end = min(begin + CHUNK_ROWS, len(frame))
            command = self._packer.command(keys[begin:end], arguments[begin * per_row:end * per_row])
            self._pending.append(self._sender.submit(self._send, command))
            while len(self._pending) > IN_FLIGHT_CALLS:
                self.written += self._pending.popleft().result()
        self.rows += len(frame)

    def finish(self) -> tuple[int, int]:
        while self._pending:
            self.written += self._pending.popleft().result()
        return self.written, self.rows - self.written

    def close(self) -> None:
        self._sender.shutdown(wait=True, cancel_futures=True)
        self._connection.disconnect()  # never hand a connection with unread replies back to the pool
        self._client.connection_pool.release(self._connection)
        self._client.close()

    def __enter__(self) -> OnlineWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _send(self, command: bytes) -> int:
        from redis.exceptions import NoScriptError

        self._connection.send_packed_command([command], check_health=False)
        try:
            return int(self._connection.read_response())
        except NoScriptError:  # Redis restarted or flushed its scripts since start-up: load it, send again
            self._client.script_load(self._script)
            self._connection.send_packed_command([command], check_health=False)
            return int(self._connection.read_response())


def write_rows(store, frame: pd.DataFrame, feature_view_name: str = FEATURE_VIEW) -> tuple[int, int]:
    """Write the rows (driver_id, event_us, features...) into Redis; returns (written, skipped as older)."""
    with OnlineWriter(store, feature_view_name) as writer:
        writer.add(frame)
        return writer.finish()


def write_shard(start: datetime, end: datetime, shard: Shard, store, settings: Settings | None = None,
                parts: int = PARTS_PER_SHARD) -> tuple[int, int, int]:
    """Read and write the latest rows of `shard` in [start, end) in `parts` parts, the next part read while the
    last is written; returns (rows read, written, skipped as older). Records nothing in Feast's registry."""
    features = [f.name for f in store.get_feature_view(FEATURE_VIEW).features]
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-reader")
    with OnlineWriter(store) as writer, reader:
        pending = None
        for part in shard.parts(parts):
            reading = reader.submit(latest_rows, start, end, features, settings, part)
            if pending is not None:
                writer.add(pending.result())
            pending = reading
        writer.add(pending.result())
        written, skipped = writer.finish()
        return writer.rows, written, skipped


def record_materialization(store, start: datetime, end: datetime) -> None:
    """Tell Feast's registry that driver_stats holds [start, end), as its own materialize would."""
    store.registry.apply_materialization(store.get_feature_view(FEATURE_VIEW), store.project, start, end)


def delete_online_rows(store, driver_ids, feature_view_name: str = FEATURE_VIEW) -> int:
    """Remove drivers from the online store (a driver who left, or a test's own ids); returns keys deleted."""
    encoding = FeastRedisEncoding.of(store, store.get_feature_view(feature_view_name))
    client = redis_client(online_store_address(store))
    ids = [int(d) for d in driver_ids]
    deleted = 0
    try:
        for begin in range(0, len(ids), 50_000):
            deleted += client.delete(*[encoding.key(d) for d in ids[begin:begin + 50_000]])
    finally:
        client.close()
    return deleted


def _window(start: datetime, end: datetime, settings: Settings, overlap: timedelta | None) -> tuple[datetime, datetime]:
    """[start - overlap, end) in UTC; `overlap` (default from settings) catches rows that arrived late."""
    overlap = timedelta(minutes=settings.materialize_overlap_minutes) if overlap is None else overlap
    start, end = _utc(start) - overlap, _utc(end)
    if start >= end:
        raise ValueError(f"materialization needs start < end, got {start.isoformat()} >= {end.isoformat()}")
    return start, end


def materialize_interval(start: datetime, end: datetime, settings: Settings | None = None,
                         overlap: timedelta | None = None, store=None) -> MaterializeReport:
    """Materialize [start - overlap, end) into Redis; `overlap` (default from settings) catches late rows."""
    settings = settings or get_settings()
    start, end = _window(start, end, settings, overlap)
    began = time.perf_counter()
    store = store or feature_store(settings)
    rows, written, skipped = write_shard(start, end, ALL_DRIVERS, store, settings)
    record_materialization(store, start, end)
    report = MaterializeReport(start, end, rows, written, skipped, time.perf_counter() - began)
    _log_report(report)
    return report


def materialize_shard(start: datetime, end: datetime, shard: Shard, settings: Settings | None = None,
                      store=None) -> MaterializeReport:
    """One shard's part of a sharded run over exactly [start, end) (the planner applied the overlap); the
    run records the interval with `record_materialization` once every shard succeeded."""
    settings = settings or get_settings()
    start, end = _utc(start), _utc(end)
    began = time.perf_counter()
    store = store or feature_store(settings)
    rows, written, skipped = write_shard(start, end, shard, store, settings)
    report = MaterializeReport(start, end, rows, written, skipped, time.perf_counter() - began)
    _log_report(report, shard)
    return report


def planned_window(start: datetime, end: datetime, settings: Settings | None = None,
                   overlap: timedelta | None = None) -> tuple[datetime, datetime]:
    """The window a run materializes, [start - overlap, end) in UTC, fixed once for all its shards."""
    return _window(start, end, settings or get_settings(), overlap)


def _log_report(report: MaterializeReport, shard: Shard = ALL_DRIVERS) -> None:
    log.info("materialized %s", FEATURE_VIEW, extra={
        "interval_start": report.start.isoformat(), "interval_end": report.end.isoformat(),
        "shard": shard.index, "shards": shard.count, "rows_read": report.rows_read,
        "rows_written": report.rows_written, "rows_skipped_older": report.rows_skipped_older,
        "seconds": round(report.seconds, 3)})


def materialize_penguins(start: datetime, end: datetime, settings: Settings | None = None,
                         overlap: timedelta | None = None, store=None) -> MaterializeReport:
    """Materialize the penguin view over [start - overlap, end) with Feast's own materialize (small data)."""
    settings = settings or get_settings()
    start, end = _window(start, end, settings, overlap)
    began = time.perf_counter()
    store = store or feature_store(settings)
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select count(distinct {penguin_features.JOIN_KEY}) from {penguin_features.OFFLINE_TABLE} "
                    "where event_timestamp >= %s and event_timestamp < %s", (start, end))
        rows = int(cur.fetchone()[0])
    store.materialize(start, end, feature_views=[penguin_features.FEATURE_VIEW])
    report = MaterializeReport(start, end, rows, rows, 0, time.perf_counter() - began)
    log.info("materialized %s", penguin_features.FEATURE_VIEW, extra={
        "interval_start": start.isoformat(), "interval_end": end.isoformat(), "rows_read": rows,
        "seconds": round(report.seconds, 3)})
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from mlops_platform.logs import configure_logging

    parser = argparse.ArgumentParser(description="Materialize the feature views into the online store.")
    parser.add_argument("--start", required=True, type=datetime.fromisoformat, help="ISO timestamp (UTC if naive)")
    parser.add_argument("--end", type=datetime.fromisoformat, default=None, help="ISO timestamp; default now")
    parser.add_argument("--overlap-minutes", type=int, default=None)
    parser.add_argument("--feature-view", choices=[FEATURE_VIEW, penguin_features.FEATURE_VIEW, "all"], default="all")
    args = parser.parse_args(argv)
    configure_logging("materialize", get_settings().log_level)
    overlap = None if args.overlap_minutes is None else timedelta(minutes=args.overlap_minutes)
    end = args.end or datetime.now(UTC)
    summary: dict = {}
    if args.feature_view in (FEATURE_VIEW, "all"):
        report = materialize_interval(args.start, end, overlap=overlap)
        summary.update({"rows_read": report.rows_read, "rows_written": report.rows_written,
                        "rows_skipped_older": report.rows_skipped_older, "seconds": round(report.seconds, 3),
                        "rows_per_second": round(report.rows_per_second)})
    if args.feature_view in (penguin_features.FEATURE_VIEW, "all"):
        penguins = materialize_penguins(args.start, end, overlap=overlap)
        summary[penguin_features.FEATURE_VIEW] = {"rows_read": penguins.rows_read,
                                                  "seconds": round(penguins.seconds, 3)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
