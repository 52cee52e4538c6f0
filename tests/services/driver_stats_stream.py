"""Driver statistics sent to the stats topic, and read back from both stores and the consumer group's offsets:
what tests/services/test_streaming.py checks the stream consumer against."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from data_pipeline import stream_messages as sm
from data_pipeline.offline_store import STATS_TABLE
from data_pipeline.stream_consumer import GROUP_ID
from feast_repo.features import FEATURE_SERVICE
from tests.conftest import eventually


@dataclass
class Sent:
    valid: list[sm.DriverStats] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) of each valid message
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> highest offset written

    def newest(self) -> dict[int, sm.DriverStats]:
        newest: dict[int, sm.DriverStats] = {}
        for message in self.valid:
            if message.driver_id not in newest or message.event_timestamp > newest[message.driver_id].event_timestamp:
                newest[message.driver_id] = message
        return newest


def stats(driver_id: int, event_timestamp: datetime, rng: random.Random) -> sm.DriverStats:
    # Values on a 1/1024 grid survive Feast's float32 and PostgreSQL's real exactly.
    return sm.DriverStats(driver_id=driver_id, event_timestamp=event_timestamp, created=event_timestamp,
                          conv_rate=rng.randrange(1025) / 1024, acc_rate=rng.randrange(1025) / 1024,
                          avg_daily_trips=rng.randrange(60), produced_at=datetime.now(UTC))


def producer(settings):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=5)


def send(settings, items: list[tuple[bytes, bytes, sm.DriverStats | None]], rate: float | None = None,
         sent: Sent | None = None) -> Sent:
    """Send (key, payload, record-if-valid) items, paced at `rate` per second if given; records what arrived."""
    sent = sent or Sent()
    client = producer(settings)
    futures = []
    start = time.perf_counter()
    for i, (key, payload, record) in enumerate(items):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        futures.append((client.send(settings.driver_stats_topic, value=payload, key=key), record))
    client.flush(timeout=30)
    client.close()
    for future, record in futures:
        metadata = future.get(timeout=10)
        sent.offsets[metadata.partition] = max(sent.offsets.get(metadata.partition, -1), metadata.offset)
        if record is not None:
            sent.valid.append(record)
            sent.positions.append((metadata.partition, metadata.offset))
    return sent


def valid_item(record: sm.DriverStats) -> tuple[bytes, bytes, sm.DriverStats]:
    return sm.message_key(record.driver_id), sm.encode(record), record


def offline_rows(settings, driver_ids: list[int]) -> dict[tuple[int, datetime], tuple]:
    import psycopg2

    conn = psycopg2.connect(settings.postgres_dsn(settings.feast_db))
    try:
        with conn.cursor() as cur:
            # real -> float8 gives the exact float32 value back (its text form is only the shortest one)
            cur.execute(f"select driver_id, event_timestamp, conv_rate::float8, acc_rate::float8, avg_daily_trips, "
                        f"source from {STATS_TABLE} where driver_id = any(%s)", (driver_ids,))
            return {(row[0], row[1]): row[2:] for row in cur.fetchall()}
    finally:
        conn.close()


def online_values(store, driver_ids: list[int]) -> dict[int, tuple]:
    features = store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE),
                                         entity_rows=[{"driver_id": i} for i in driver_ids]).to_dict()
    return {driver_id: (conv, acc, trips) for driver_id, conv, acc, trips in
            zip(features["driver_id"], features["conv_rate"], features["acc_rate"], features["avg_daily_trips"],
                strict=True)}


def expected_online(sent: Sent) -> dict[int, tuple]:
    return {d: (m.conv_rate, m.acc_rate, m.avg_daily_trips) for d, m in sent.newest().items()}


def expected_offline(sent: Sent) -> dict[tuple[int, datetime], tuple]:
    return {(m.driver_id, m.event_timestamp): (m.conv_rate, m.acc_rate, m.avg_daily_trips, "stream:driver_stats")
            for m in sent.valid}


def wait_until_stored(settings, store, sent: Sent, timeout: float = 120.0) -> None:
    """Every valid message is an offline row, and each driver's newest values are online."""
    ids = sorted({m.driver_id for m in sent.valid})
    want_offline = expected_offline(sent)
    eventually(lambda: len(offline_rows(settings, ids)) >= len(want_offline), timeout=timeout,
               what=f"{len(want_offline)} offline rows")
    assert offline_rows(settings, ids) == want_offline
    want_online = expected_online(sent)
    eventually(lambda: online_values(store, ids) == want_online, timeout=30, what="newest values online")


def committed_offsets(settings) -> dict[int, int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        offsets = admin.list_group_offsets({GROUP_ID: None})[GROUP_ID]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == settings.driver_stats_topic}


def all_committed(settings, sent: Sent) -> bool:
    committed = committed_offsets(settings)
    return all(committed.get(partition, -1) > offset for partition, offset in sent.offsets.items())


class Stream(threading.Thread):
    """Valid messages for `driver_ids`, sent at `rate` per second in the background."""

    def __init__(self, settings, driver_ids: list[int], count: int, rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        rng = random.Random(seed)
        start = datetime.now(UTC) - timedelta(hours=1)
        self.items = [valid_item(stats(rng.choice(driver_ids), start + timedelta(milliseconds=i), rng))
                      for i in range(count)]
        self.settings, self.rate, self.sent, self.error = settings, rate, Sent(), None

    def run(self) -> None:
        try:
            send(self.settings, self.items, self.rate, self.sent)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> Sent:
        self.join(timeout=120)
        assert not self.is_alive() and self.error is None, self.error
        return self.sent
