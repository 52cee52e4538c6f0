"""Driver statistics streamed through Kafka reach Redis (through Feast) and PostgreSQL, exactly once in effect.

The consumer under test is the platform's `stream-consumer` service (started by `bash run.sh kafka up`,
stopped with signals to its process group). Until that service is registered, a subprocess of our own
stands in for it. Every test uses fresh driver ids from a random high range, so tests neither see nor
disturb each other's rows; every wait polls against a deadline.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from data_pipeline import stream_messages as sm
from mlops_platform import local
from mlops_platform.health import CHECKS, Unhealthy
from mlops_platform.services import BY_NAME, log_file, merged_env
from simulation.stream_producer import INVALID_KINDS, invalid_payload
from tests.conftest import REPO_ROOT, eventually, run_sh
from tests.services.dead_letters import dead_letters, end_offset
from tests.services.driver_stats_stream import (
    Sent,
    Stream,
    all_committed,
    committed_offsets,
    expected_offline,
    offline_rows,
    online_values,
    send,
    stats,
    valid_item,
    wait_until_stored,
)

SERVICE = "stream-consumer"
TEST_LOG = "stream-consumer-test"
REGISTERED = SERVICE in BY_NAME


def fresh_driver_ids(count: int) -> list[int]:
    first = random.SystemRandom().randrange(10**9, 4 * 10**12)
    return list(range(first, first + count))


# ---------------------------------------------------------------------------------------------
# The consumer under test
# ---------------------------------------------------------------------------------------------
class ConsumerUnderTest:
    """The platform's stream-consumer service, or (until it is registered) a subprocess of our own."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen | None = None

    def pid(self) -> int | None:
        if REGISTERED:
            return local.read_pid(self.settings, SERVICE)
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        return None

    def start(self) -> None:
        """Running and healthy afterwards; a no-op when it already is."""
        if REGISTERED:
            run_sh("kafka", "up")
        elif self.pid() is None:
            self.process = spawn_consumer(self.settings, [sys.executable, "-m", "data_pipeline.stream_consumer"])
        eventually(lambda: CHECKS[SERVICE](self.settings), timeout=120, what="stream consumer healthy")

    def signal(self, signum: int) -> int:
        pid = self.pid()
        assert pid is not None, "the stream consumer is not running"
        os.killpg(pid, signum)
        eventually(lambda: not local.group_alive(pid), timeout=60, what=f"consumer stopped after {signum!r}")
        if self.process is not None:
            self.process.wait(timeout=10)
        return pid

    def log(self) -> Path:
        return log_file(self.settings, SERVICE if REGISTERED else TEST_LOG)


def spawn_consumer(settings, argv: list[str]) -> subprocess.Popen:
    """A consumer process of the test's own, in its own process group, logging next to the platform's."""
    path = log_file(settings, TEST_LOG)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                                env=merged_env({"PYTHONPATH": str(REPO_ROOT)}), start_new_session=True)


@pytest.fixture(scope="module")
def consumer(kafka_up, settings):
    handle = ConsumerUnderTest(settings)
    handle.start()
    yield handle
    if REGISTERED:
        handle.start()  # the session's other tests expect the kafka stack as `kafka up` left it
    elif handle.pid() is not None:
        handle.signal(signal.SIGTERM)


@pytest.fixture(scope="module")
def store(feast_up, settings):
    from mlops_platform.feature_store import feature_store

    return feature_store(settings)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_consumer_is_healthy_and_serves_its_metrics(consumer, settings):
    import urllib.request

    assert CHECKS[SERVICE](settings).startswith("ready")
    body = urllib.request.urlopen(f"{settings.stream_consumer_url}/metrics", timeout=5).read().decode()
    for name in ("messages_consumed_total", "messages_pushed_total", "messages_rejected_total", "dlq_sends_total",
                 "batch_write_seconds_bucket", "lag{", "freshness_seconds_bucket",
                 "last_success_timestamp_seconds", "ready 1.0"):
        assert f"driver_stats_consumer_{name}" in body, name


def test_health_check_names_what_is_wrong(settings):
    from dataclasses import replace

    with pytest.raises(Unhealthy, match="does not answer"):
        CHECKS[SERVICE](replace(settings, stream_consumer_port=1))


def test_valid_messages_reach_both_stores_and_invalid_ones_the_dead_letter_topic(consumer, settings, store):
    rng = random.Random(11)
    ids = fresh_driver_ids(20)
    base = datetime.now(UTC) - timedelta(hours=1)
    items = []
    for driver_id in ids:  # five versions per driver, sent out of event-time order
        steps = rng.sample(range(5), 5)
        items += [valid_item(stats(driver_id, base + timedelta(seconds=step), rng)) for step in steps]
    invalid = [(sm.message_key(ids[i]), invalid_payload(kind, {"driver_id": ids[i], "conv_rate": 0.5,
                                                               "acc_rate": 0.5, "avg_daily_trips": 3},
                                                        datetime.now(UTC)), None)
               for i, kind in enumerate(INVALID_KINDS * 2)]
    mixed = items + invalid
    rng.shuffle(mixed)
    # A driver's versions keep their relative order only by chance: the consumer must pick by event time.
    since = end_offset(settings, settings.driver_stats_dlq_topic)

    sent = send(settings, mixed)

    assert len(sent.valid) == 100
    wait_until_stored(settings, store, sent)
    eventually(lambda: all_committed(settings, sent), timeout=30, what="offsets committed")
    letters = dead_letters(settings, settings.driver_stats_dlq_topic, since, {str(i) for i in ids})
    assert len(letters) == len(invalid) == 12
    assert collections.Counter(e["reason_class"] for e in letters) == collections.Counter(INVALID_KINDS * 2)
    for entry in letters:
        assert entry["reason"] and entry["topic"] == settings.driver_stats_topic
        assert entry["partition"] in sent.offsets and entry["offset"] <= sent.offsets[entry["partition"]]
        assert entry["payload"].startswith('{"driver_id": ' + entry["key"])
        assert datetime.fromisoformat(entry["rejected_at"]) > base


def test_an_older_message_never_overwrites_a_newer_online_value(consumer, settings, store):
    rng = random.Random(12)
    (driver_id,) = fresh_driver_ids(1)
    now = datetime.now(UTC) - timedelta(minutes=5)
    newer = stats(driver_id, now, rng)
    older = stats(driver_id, now - timedelta(minutes=10), rng)
    assert (newer.conv_rate, newer.acc_rate) != (older.conv_rate, older.acc_rate)

    first = send(settings, [valid_item(newer)])
    wait_until_stored(settings, store, first)
    late = send(settings, [valid_item(older)])
    eventually(lambda: all_committed(settings, late), timeout=30, what="late message committed")

    assert offline_rows(settings, [driver_id]) == expected_offline(Sent(valid=[newer, older]))
    assert online_values(store, [driver_id]) == {driver_id: (newer.conv_rate, newer.acc_rate, newer.avg_daily_trips)}


def test_a_killed_consumer_loses_nothing_once_restarted(consumer, settings, store):
    ids = fresh_driver_ids(200)
    stream = Stream(settings, ids, count=3000, rate=500, seed=13)
    stream.start()
    eventually(lambda: len(offline_rows(settings, ids)) >= 300, timeout=60, what="consumer mid-stream")

    consumer.signal(signal.SIGKILL)
    written_when_killed = len(offline_rows(settings, ids))
    consumer.start()
    sent = stream.finish()

    assert written_when_killed < len(sent.valid), "the kill came after the stream was fully consumed"
    wait_until_stored(settings, store, sent, timeout=180)


def test_sigterm_stops_the_consumer_cleanly_with_exit_0_and_loses_nothing(consumer, settings, store):
    ids = fresh_driver_ids(100)

    # The platform's service: SIGTERM mid-stream, and it logs a clean stop.
    first = Stream(settings, ids, count=1500, rate=500, seed=14)
    log_size = consumer.log().stat().st_size if consumer.log().exists() else 0
    first.start()
    eventually(lambda: len(offline_rows(settings, ids)) >= 200, timeout=60, what="consumer mid-stream")
    consumer.signal(signal.SIGTERM)
    with open(consumer.log(), "rb") as log:
        log.seek(log_size)
        lines = [json.loads(line) for line in log.read().decode().splitlines() if line.startswith("{")]
    assert any(line["message"] == "stopped cleanly" and line.get("exit_code") == 0 for line in lines), lines[-5:]
    committed = committed_offsets(settings)
    stored = offline_rows(settings, ids)
    first_sent = first.finish()
    assert len(stored) < len(first_sent.valid), "the stop came after the stream was fully consumed"
    # Whatever was committed was written: the stop committed no batch it had not stored.
    committed_but_missing = [
        (m.driver_id, m.event_timestamp) for m, (partition, offset) in zip(first_sent.valid, first_sent.positions,
                                                                            strict=True)
        if offset < committed.get(partition, 0) and (m.driver_id, m.event_timestamp) not in stored]
    assert committed_but_missing == []

    # The same command the platform runs, as our own child: its exit status is ours to read.
    command = ["-m", "mlops_platform.exec", SERVICE] if REGISTERED else ["-m", "data_pipeline.stream_consumer"]
    child = spawn_consumer(settings, [sys.executable, *command])
    try:
        eventually(lambda: CHECKS[SERVICE](settings), timeout=120, what="child consumer healthy")
        second = Stream(settings, ids, count=1500, rate=500, seed=15)
        second.start()
        before = len(offline_rows(settings, ids))
        eventually(lambda: len(offline_rows(settings, ids)) >= before + 200, timeout=60, what="child mid-stream")
        os.killpg(child.pid, signal.SIGTERM)
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    second_sent = second.finish()

    consumer.start()
    everything = Sent(valid=first_sent.valid + second_sent.valid)
    wait_until_stored(settings, store, everything, timeout=180)


def test_producer_cli_replays_at_its_rate_and_plants_invalid_messages(consumer, settings):
    ids = fresh_driver_ids(10)
    since = end_offset(settings, settings.driver_stats_dlq_topic)
    result = subprocess.run(
        [sys.executable, "-m", "simulation.stream_producer", "--rate", "300", "--count", "600", "--drivers", "10",
         "--first-driver-id", str(ids[0]), "--invalid-share", "0.1", "--seed", "5"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=merged_env({"PYTHONPATH": str(REPO_ROOT)}))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])

    assert (summary["sent"], summary["valid"], summary["invalid_planted"], summary["errors"]) == (600, 540, 60, 0)
    assert abs(summary["achieved_rate"] - 300) / 300 < 0.1, summary
    assert summary["duration_s"] == pytest.approx(2.0, abs=0.3)
    eventually(lambda: len(offline_rows(settings, ids)) >= 540, what="540 offline rows")
    assert len(offline_rows(settings, ids)) == 540
    keys = {str(i) for i in ids}
    letters = eventually(lambda: (found := dead_letters(settings, settings.driver_stats_dlq_topic, since, keys))
                         and len(found) >= 60 and found, what="60 dead letters")
    assert collections.Counter(e["reason_class"] for e in letters) == summary["invalid_by_kind"]


def test_producer_cli_replays_a_landed_file_as_live_events(consumer, settings, store, tmp_path: Path):
    import pandas as pd

    rng = random.Random(16)
    ids = fresh_driver_ids(10)
    rows = [{"driver_id": ids[i % 10], "event_timestamp": "2020-01-01T00:00:00Z",
             "conv_rate": rng.randrange(1025) / 1024, "acc_rate": rng.randrange(1025) / 1024,
             "avg_daily_trips": rng.randrange(60)} for i in range(30)]
    path = tmp_path / "driver_stats.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    started = datetime.now(UTC)

    result = subprocess.run(
        [sys.executable, "-m", "simulation.stream_producer", "--rate", "100", "--count", "30",
         "--from-file", str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=merged_env({"PYTHONPATH": str(REPO_ROOT)}))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["sent"] == 30

    eventually(lambda: len(offline_rows(settings, ids)) >= 30, what="30 offline rows")
    stored = offline_rows(settings, ids)
    assert sorted(v[:3] for v in stored.values()) == sorted(
        (r["conv_rate"], r["acc_rate"], r["avg_daily_trips"]) for r in rows)
    assert all(ts >= started - timedelta(seconds=1) for _, ts in stored), "event_timestamp is the replay time"
    last = {r["driver_id"]: (r["conv_rate"], r["acc_rate"], r["avg_daily_trips"]) for r in rows}
    eventually(lambda: online_values(store, ids) == last, timeout=30, what="last replayed row of each driver online")
