"""The event path's cost to a request: spooling a record on disk against handing it to a socket.

Before the spool, a request handed its record to the event sender over a local datagram socket and
forgot it (lost when the broker was down long enough). Now it appends the record to its spool folder, and
/feedback also waits for fdatasync. This measures, in one process and on the same records:

    .venv/bin/python -m benchmarks.bench_event_spool                 # 20,000 records of 10 scored drivers

- baseline: `send` of the record on a non-blocking SOCK_SEQPACKET socket (the old path), drained by a thread;
- spool append: `SpoolWriter.append` (one write to the page cache);
- spool append + fdatasync: what /feedback pays before its 202;
- replay: records read back from the spool and framed for Kafka (`messages_from_wire`), per record.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import print_table
from feast_repo.features import FEATURE_NAMES
from model_serving.event_spool import SpoolReader, SpoolWriter
from model_serving.events import PredictionRecord, messages_from_wire

FEATURES = FEATURE_NAMES


def record(i: int) -> bytes:
    ids = list(range(1000 + i % 500, 1010 + i % 500))
    return PredictionRecord("predictions", f"req-{i:08d}", "driver_trip_completion", "7", FEATURES, ids,
                            [(0.5, 0.8, 12)] * len(ids), [0.1 * k for k in range(len(ids))], time.time()).to_wire()


def per_call(call, items: list[bytes]) -> list[float]:
    out = []
    for item in items:
        started = time.perf_counter()
        call(item)
        out.append(time.perf_counter() - started)
    return out


def socket_baseline(items: list[bytes]) -> list[float]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    ours.setblocking(False)
    done = threading.Event()

    def drain() -> None:
        theirs.settimeout(0.5)
        while not done.is_set():
            try:
                theirs.recv(4 * 1024 * 1024)
            except TimeoutError:
                continue

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def send(item: bytes) -> None:
        while True:
            try:
                ours.send(item)
                return
            except BlockingIOError:
                time.sleep(0)

    try:
        return per_call(send, items)
    finally:
        done.set()
        reader.join()
        ours.close()
        theirs.close()


def summary(name: str, seconds: list[float], baseline: float) -> tuple:
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    return (name, f"{median * 1e6:.1f}", f"{ordered[int(0.99 * (len(ordered) - 1))] * 1e6:.1f}",
            f"{median / baseline:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--synced", type=int, default=500, help="records for the fdatasync case")
    args = parser.parse_args(argv)
    items = [record(i) for i in range(args.records)]
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:  # the disk the platform's state is on
        root = Path(folder)
        baseline = socket_baseline(items)
        writer = SpoolWriter(root / "plain", max_bytes=10**12)
        appended = per_call(writer.append, items)
        synced_writer = SpoolWriter(root / "synced", max_bytes=10**12)
        synced = per_call(lambda item: synced_writer.append(item, sync=True), items[: args.synced])
        reader = SpoolReader.claim(writer.folder)
        started = time.perf_counter()
        replayed = 0
        while True:
            batch = reader.read()
            if not batch.records:
                break
            for item in batch.records:
                messages_from_wire(item)
            replayed += len(batch.records)
            reader.commit(batch.end)
        replay = (time.perf_counter() - started) / max(replayed, 1)
    base = statistics.median(baseline)
    print_table(f"Event path per record (10 scored drivers, {len(items[0])} bytes)",
                ("path", "median µs", "p99 µs", "vs socket"),
                [summary("socket send (before)", baseline, base), summary("spool append", appended, base),
                 summary("spool append + fdatasync", synced, base),
                 ("replay: read + frame for Kafka", f"{replay * 1e6:.1f}", "-", f"{replay / base:.2f}x")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
