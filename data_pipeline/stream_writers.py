"""Where a batch of valid stream messages goes: Feast's online store and the offline table.

Both writes are idempotent, which is what makes at-least-once delivery safe: a batch replayed after
a crash writes nothing new.

- Online: only the newest message per driver of a batch is pushed through the push source. Feast's
  Redis store (0.67) compares each row's event_timestamp with the one stored for the entity and
  skips the row when it is older *or equal*, so a late message never overwrites a newer value and a
  replayed one is a no-op. That check reads then writes (not atomic); it is safe here because one
  driver's messages live in one partition, which one consumer owns at a time.
- Offline: every valid message becomes a row of `driver_hourly_stats`, one INSERT per batch;
  ON CONFLICT (driver_id, event_timestamp) DO NOTHING makes a replay add nothing. Feast's
  PostgreSQL offline store has no offline_write_batch, hence plain SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from data_pipeline.offline_store import STATS_COLUMNS, STATS_TABLE, ensure_schema
from data_pipeline.stream_messages import DriverStats
from feast_repo.features import FEATURE_VIEW, PUSH_SOURCE
from mlops_platform.feature_store import feature_store
from mlops_platform.postgres import PostgresBatchWriter, insert_rows
from mlops_platform.redis_client import redis_client
from mlops_platform.settings import Settings

OFFLINE_SOURCE = "stream:driver_stats"


def newest_per_driver(messages: Iterable[DriverStats]) -> list[DriverStats]:
    """The newest message of each driver by (event_timestamp, created); on a tie the later one wins."""
    newest: dict[int, DriverStats] = {}
    for message in messages:
        current = newest.get(message.driver_id)
        if current is None or (message.event_timestamp, message.created) >= (current.event_timestamp,
                                                                             current.created):
            newest[message.driver_id] = message
    return list(newest.values())


class OnlineWriter:
    """Pushes the newest statistics of each driver to the online store (Redis) through Feast."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = feature_store(settings)

    def check(self) -> None:
        """Fail unless the feature repo is applied and Redis answers: what `ready` promises."""
        self.store.get_feature_view(FEATURE_VIEW)  # raises when `feast apply` never ran
        self.store.get_data_source(PUSH_SOURCE)
        client = redis_client(self.settings, timeout=5)
        try:
            client.ping()
        finally:
            client.close()

    def write(self, messages: Sequence[DriverStats]) -> int:
        """Push the newest message of each driver; returns how many rows were pushed."""
        import pandas as pd
        from feast.data_source import PushMode

        rows = newest_per_driver(messages)
        if not rows:
            return 0
        frame = pd.DataFrame({
            "driver_id": pd.Series([r.driver_id for r in rows], dtype="int64"),
            "event_timestamp": pd.to_datetime([r.event_timestamp for r in rows], utc=True),
            "created": pd.to_datetime([r.created for r in rows], utc=True),
            "conv_rate": pd.Series([r.conv_rate for r in rows], dtype="float32"),
            "acc_rate": pd.Series([r.acc_rate for r in rows], dtype="float32"),
            "avg_daily_trips": pd.Series([r.avg_daily_trips for r in rows], dtype="int64"),
        })
        self.store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
        return len(rows)


class OfflineWriter(PostgresBatchWriter):
    """Inserts every valid message into the offline table, one statement per batch; returns the new rows."""

    INSERT = (f"insert into {STATS_TABLE} ({', '.join(STATS_COLUMNS)}, source) values %s "
              "on conflict (driver_id, event_timestamp) do nothing")
    application_name = "driver-stats-stream-consumer"

    def ensure_tables(self) -> None:
        ensure_schema(self.settings)

    def insert(self, cur, messages: Sequence[DriverStats]) -> int:
        rows = [(m.driver_id, m.event_timestamp, m.created, m.conv_rate, m.acc_rate, m.avg_daily_trips,
                 OFFLINE_SOURCE) for m in messages]
        return insert_rows(cur, self.INSERT, rows)
