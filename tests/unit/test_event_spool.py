"""The event spool and its sender: records survive any process's death and a broker outage, in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from model_serving.event_channel import EventChannel
from model_serving.event_sender import KafkaDelivery, SpoolForwarder
from model_serving.event_spool import HEADER, SpoolFull, SpoolReader, SpoolWriter, orphans, segments
from model_serving.events import FeedbackRecord, PredictionRecord

REPO_ROOT = Path(__file__).resolve().parents[2]


def feedback(n: int) -> bytes:
    return FeedbackRecord("ground_truth", f"r{n}", n, n % 2, 0.0).to_wire()


def drain(reader: SpoolReader) -> list[bytes]:
    out = []
    while True:
        batch = reader.read(max_records=7)
        out.extend(batch.records)
        if batch.end == reader.position:
            return out
        reader.commit(batch.end)


def test_records_come_back_in_order_across_segments_and_the_cursor_survives_a_new_reader(tmp_path):
    writer = SpoolWriter(tmp_path, max_bytes=10**9, segment_bytes=300)
    for n in range(50):
        writer.append(feedback(n))
    assert len(segments(writer.folder)) > 5, "small segments: the writer rotated"
    reader = SpoolReader.claim(writer.folder)
    first = reader.read(max_records=20)
    reader.commit(first.end)
    reader.release()  # a sender dies after acknowledging 20

    again = SpoolReader.claim(writer.folder)
    rest = drain(again)
    assert [json.loads(r)["request_id"] for r in first.records + rest] == [f"r{n}" for n in range(50)]
    assert len(segments(writer.folder)) == 1, "acknowledged segments are deleted"
    assert again.backlog_bytes() == 0


def test_a_folder_has_one_reader_at_a_time(tmp_path):
    writer = SpoolWriter(tmp_path, max_bytes=10**6)
    reader = SpoolReader.claim(writer.folder)
    assert reader is not None and SpoolReader.claim(writer.folder) is None
    reader.release()
    assert SpoolReader.claim(writer.folder) is not None


def test_past_the_bound_a_record_is_refused_counting_every_writer(tmp_path):
    other = SpoolWriter(tmp_path, max_bytes=2000)
    for n in range(10):
        other.append(feedback(n))
    used = sum(f.stat().st_size for f in other.folder.glob("*.seg"))
    writer = SpoolWriter(tmp_path, max_bytes=used + 250)
    writer.append(feedback(100))
    with pytest.raises(SpoolFull, match="EVENT_SPOOL_MAX_BYTES"):
        for n in range(10):
            writer.append(feedback(n))


def test_a_torn_frame_waits_while_its_writer_lives_and_is_skipped_once_it_is_gone(tmp_path):
    writer = SpoolWriter(tmp_path, max_bytes=10**6)
    writer.append(feedback(1))
    segment = writer.folder / "00000001.seg"
    whole = feedback(2)
    with open(segment, "ab") as f:  # a write cut short: the header and half the record
        f.write(HEADER.pack(len(whole), 0) + whole[: len(whole) // 2])
    reader = SpoolReader.claim(writer.folder)
    batch = reader.read()
    assert len(batch.records) == 1 and batch.corrupt == 0, "the writer may still finish it"
    reader.commit(batch.end)
    writer.close()
    batch = reader.read()
    assert batch.records == [] and batch.corrupt == 1
    reader.commit(batch.end)
    assert reader.drained()


def test_a_record_failing_its_checksum_is_skipped_and_counted(tmp_path):
    writer = SpoolWriter(tmp_path, max_bytes=10**6)
    for n in range(3):
        writer.append(feedback(n))
    segment = writer.folder / "00000001.seg"
    data = bytearray(segment.read_bytes())
    second = HEADER.size + len(feedback(0)) + HEADER.size + 5
    data[second] ^= 0xFF
    segment.write_bytes(bytes(data))
    batch = SpoolReader.claim(writer.folder).read()
    assert [json.loads(r)["request_id"] for r in batch.records] == ["r0", "r2"] and batch.corrupt == 1


def test_records_written_survive_the_writers_sigkill(tmp_path):
    """Each append is one write to the page cache: a process killed right after it loses nothing."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from pathlib import Path
        from model_serving.event_spool import SpoolWriter
        writer = SpoolWriter(Path({str(tmp_path)!r}), max_bytes=10**9, segment_bytes=4096)
        n = 0
        while True:
            writer.append(b'{{"n": %d}}' % n)
            print(n, flush=True)
            n += 1
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    for line in process.stdout:
        acknowledged = int(line)
        if acknowledged >= 2000:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    (folder,) = list(orphans(tmp_path))
    records = [json.loads(r)["n"] for r in drain(SpoolReader.claim(folder))]
    assert records[: acknowledged + 1] == list(range(acknowledged + 1)), "every acknowledged record, in order"


class Future:
    def __init__(self, ok: bool) -> None:
        self.is_done, self.ok = True, ok
        self.exception = None if ok else TimeoutError("not acknowledged")

    def failed(self) -> bool:
        return not self.ok


class Broker:
    """Stands in for kafka-python's producer: acknowledges while `up`, fails every send while down."""

    def __init__(self) -> None:
        self.up = True
        self.log: list[tuple[str, dict]] = []

    def partitions_for(self, topic):
        if not self.up:
            raise TimeoutError("metadata not available after 1000 ms")
        return {0, 1, 2}

    def send(self, topic, value, key, partition=None):
        assert partition in {0, 1, 2}
        if self.up:
            self.log.append((topic, json.loads(value)))
        return Future(self.up)

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


def forwarder_for(folder: Path, broker: Broker):
    counts: dict[tuple[str, str], int] = {}

    def add(key, n):
        counts[key] = counts.get(key, 0) + n

    forwarder = SpoolForwarder(folder, KafkaDelivery("unused:9092", producer_factory=lambda: broker),
                               on_delivered=lambda topic, n: add((topic, "delivered"), n),
                               on_dropped=lambda topic, reason, n: add((topic, reason), n))
    return forwarder, counts


def run_until_idle(forwarder: SpoolForwarder, steps: int = 20) -> None:
    for _ in range(steps):
        forwarder._retry_at = 0.0  # no pauses between retries in a unit test
        forwarder._scanned_at = float("-inf")
        forwarder.step()


def test_an_outage_delays_events_and_loses_none_and_they_arrive_in_order(tmp_path):
    writer = SpoolWriter(tmp_path, max_bytes=10**9)
    broker = Broker()
    forwarder, counts = forwarder_for(writer.folder, broker)
    writer.append(PredictionRecord("predictions", "p0", "m", "1", ("a", "b"), [1, 2], [(0.1, 2), (0.3, 4)],
                                   [0.5, 0.4], 0.0).to_wire())
    run_until_idle(forwarder)
    broker.up = False
    for n in range(20):
        writer.append(feedback(n))
    forwarder._retry_at = 0.0
    forwarder.step()
    assert forwarder.backlog_bytes() > 0 and counts.get(("ground_truth", "delivered"), 0) == 0
    broker.up = True
    run_until_idle(forwarder)
    assert [m["request_id"] for topic, m in broker.log if topic == "ground_truth"] == [f"r{n}" for n in range(20)]
    assert [(m["request_id"], m["driver_id"]) for topic, m in broker.log if topic == "predictions"] == [
        ("p0", 1), ("p0", 2)]
    assert counts == {("predictions", "delivered"): 2, ("ground_truth", "delivered"): 20}


def test_a_sender_delivers_what_a_gone_worker_left_and_removes_its_folder(tmp_path):
    gone = SpoolWriter(tmp_path, max_bytes=10**9)
    for n in range(5):
        gone.append(feedback(n))
    gone.close()  # the worker exited (a SIGKILL releases its lock the same way)
    ours = SpoolWriter(tmp_path, max_bytes=10**9)
    broker = Broker()
    forwarder, counts = forwarder_for(ours.folder, broker)
    run_until_idle(forwarder)
    assert [m["request_id"] for _, m in broker.log] == [f"r{n}" for n in range(5)]
    assert not gone.folder.exists() and ours.folder.exists()


def test_a_record_goes_to_the_partition_kafkas_default_partitioner_picks_for_its_key():
    from kafka.partitioner.default import DefaultPartitioner

    cluster = SimpleNamespace(topics=lambda: {"p"}, partitions_for_topic=lambda topic: {0, 1, 2},
                              available_partitions_for_topic=lambda topic: {0, 1, 2})
    delivery = KafkaDelivery("unused:9092")
    delivery._producer = Broker()
    for key in [b"a", b"req-1", *(uuid.uuid4().hex.encode() for _ in range(50))]:
        assert delivery._partition("p", key) == DefaultPartitioner().partition("p", key, key, None, None, cluster)


class CountingMetrics:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, ...], float] = {}
        metrics = self

        class Child:
            def __init__(self, key):
                self.key = key

            def inc(self, n=1):
                metrics.counts[self.key] = metrics.counts.get(self.key, 0) + n

            def set(self, value):
                metrics.counts[self.key] = value

        self.dropped = SimpleNamespace(labels=lambda topic, reason: Child((topic, reason)))
        self.spooled = SimpleNamespace(labels=lambda topic: Child((topic, "spooled")))
        self.spool_limit = Child(("limit",))


def test_the_channel_spools_durably_and_counts_what_the_bound_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_PORT", "1")  # no broker: everything stays in the spool
    for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "SERVING_API_TOKEN"):
        monkeypatch.setenv(key, "x")
    metrics = CountingMetrics()
    channel = EventChannel(metrics, tmp_path, max_bytes=1500)
    record = FeedbackRecord("ground_truth", "r", 1, 1, 0.0)
    assert not channel.publish(record) and metrics.counts == {("ground_truth", "spool_error"): 1}, "not started"
    channel.start()
    try:
        accepted = sum(channel.publish_durably(record) for _ in range(40))
        assert 0 < accepted < 40
        assert metrics.counts[("ground_truth", "spooled")] == accepted
        assert metrics.counts[("ground_truth", "spool_full")] == 40 - accepted
        assert "EVENT_SPOOL_MAX_BYTES" in channel.problem
        assert channel._process.poll() is None, "the sender waits for a broker"
    finally:
        channel.stop()
    assert channel._process.returncode in (0, -signal.SIGTERM), "stopped (before or after its handler was set)"
    (folder,) = list(orphans(tmp_path))
    assert len(drain(SpoolReader.claim(folder))) == accepted, "what Kafka never took is still spooled"
    assert os.stat(folder).st_mode & 0o077 == 0


def test_what_an_earlier_run_left_reaches_kafka_before_what_this_one_answers(tmp_path):
    earlier = SpoolWriter(tmp_path, max_bytes=10**9)
    for n in range(5):
        earlier.append(feedback(n))
    earlier.close()
    busy = SpoolReader.claim(earlier.folder)  # the gone worker's own sender, still in its last seconds
    ours = SpoolWriter(tmp_path, max_bytes=10**9)
    for n in range(5, 8):
        ours.append(feedback(n))
    broker = Broker()
    forwarder, _ = forwarder_for(ours.folder, broker)
    run_until_idle(forwarder)
    assert broker.log == [], "ours waits while an older folder is being drained elsewhere"
    busy.release()  # that sender exited, leaving its folder undelivered
    run_until_idle(forwarder)
    assert [m["request_id"] for _, m in broker.log] == [f"r{n}" for n in range(8)]


def test_a_producer_that_stays_broken_after_an_outage_is_replaced(tmp_path):
    writer = SpoolWriter(tmp_path, max_bytes=10**9)
    wedged, healthy = Broker(), Broker()
    wedged.up = False  # it never recovers, although the broker is back
    producers = iter([wedged, healthy])
    counts: dict = {}
    forwarder = SpoolForwarder(writer.folder, KafkaDelivery("unused:9092", producer_factory=lambda: next(producers)),
                               on_delivered=lambda topic, n: counts.update({topic: counts.get(topic, 0) + n}))
    for n in range(3):
        writer.append(feedback(n))
    run_until_idle(forwarder)
    assert [m["request_id"] for _, m in healthy.log] == ["r0", "r1", "r2"] and counts == {"ground_truth": 3}
