"""The event spool: prediction-log and feedback records on local disk until Kafka has acknowledged them.

Each API worker appends its records to a folder of its own under EVENT_SPOOL_DIR; its event sender
process (model_serving.event_sender) reads them back in order, sends them, and only after the broker
acknowledged a batch moves its cursor and deletes finished segments. So a record survives a broker
outage, a killed sender and a killed or restarted API: the next sender claims a folder whose writer is
gone and delivers what is left. Delivery is at least once; the consumers absorb duplicates.

    <spool>/<ns>-<pid>-<random>/writer.lock   held (flock) by the worker while it writes
                                reader.lock   held by the sender that drains the folder
                                cursor        "<segment> <offset>": the first byte not yet acknowledged
                                00000001.seg  frames: 4-byte length, 4-byte CRC-32, the record

A record is one `write` to the page cache: it survives the death of any process at once, and a crash of
the machine once flushed (feedback is flushed with fsync before the API answers 202). The spool is
bounded (EVENT_SPOOL_MAX_BYTES over all writers); past the bound a record is refused, and the caller
counts it as dropped.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 8 * 1024 * 1024
HEADER = struct.Struct(">II")
MAX_FRAME_BYTES = 64 * 1024 * 1024
USAGE_REFRESH_SECONDS = 1.0
WRITER_LOCK, READER_LOCK, CURSOR = "writer.lock", "reader.lock", "cursor"


class SpoolFull(RuntimeError):
    """The spool holds EVENT_SPOOL_MAX_BYTES already: the record was not written."""


def segment_name(number: int) -> str:
    return f"{number:08d}.seg"


def segments(folder: Path) -> list[int]:
    numbers = []
    try:
        for entry in os.scandir(folder):
            if entry.name.endswith(".seg") and entry.name[:-4].isdigit():
                numbers.append(int(entry.name[:-4]))
    except FileNotFoundError:
        pass
    return sorted(numbers)


def spool_bytes(root: Path) -> int:
    """Bytes of all segments under `root` (acknowledged bytes of a segment still being read included)."""
    total = 0
    try:
        writers = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for writer in writers:
        if not writer.is_dir():
            continue
        try:
            for entry in os.scandir(writer.path):
                if entry.name.endswith(".seg"):
                    try:
                        total += entry.stat().st_size
                    except FileNotFoundError:
                        pass
        except FileNotFoundError:
            pass
    return total


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def writer_alive(folder: Path) -> bool:
    fd = _try_lock(folder / WRITER_LOCK)
    if fd is None:
        return True
    os.close(fd)
    return False


class SpoolWriter:
    """One worker's append-only side of the spool; safe to call from several threads."""

    def __init__(self, root: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        # Named by creation time first, so folders sort oldest first: what an earlier run left goes out first.
        self.folder = root / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.folder.mkdir(parents=True, mode=0o700)
        self._lock_fd = _try_lock(self.folder / WRITER_LOCK)
        self._lock = threading.Lock()
        self._number = 0
        self._fd = -1
        self._size = 0
        self._rotate()
        self._usage = spool_bytes(root)
        self._usage_at = time.monotonic()

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._number += 1
        self._fd = os.open(self.folder / segment_name(self._number),
                           os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = 0

    def used_bytes(self) -> int:
        """The spool's size over all writers, re-read at most once a second (plus what this one wrote since)."""
        now = time.monotonic()
        if now - self._usage_at >= USAGE_REFRESH_SECONDS:
            self._usage, self._usage_at = spool_bytes(self.root), now
        return self._usage

    def append(self, record: bytes, sync: bool = False) -> None:
        """Write one record; with `sync`, return only once it is on disk. SpoolFull or OSError otherwise."""
        frame = HEADER.pack(len(record), zlib.crc32(record)) + record
        with self._lock:
            if self._fd < 0:
                raise OSError("the spool writer is closed")
            if self.used_bytes() + len(frame) > self.max_bytes:
                raise SpoolFull(f"the event spool holds {self._usage} of {self.max_bytes} bytes "
                                "(EVENT_SPOOL_MAX_BYTES): Kafka has been unreachable for long")
            if self._size and self._size + len(frame) > self.segment_bytes:
                self._rotate()
            written = os.write(self._fd, frame)
            if written != len(frame):  # a full disk: the reader skips the torn frame at the end
                raise OSError(f"short write to the event spool ({written} of {len(frame)} bytes)")
            self._size += written
            self._usage += written
            if sync:
                os.fdatasync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True)
class Batch:
    records: list[bytes]
    end: Position
    corrupt: int = 0  # frames skipped because they were torn or failed their checksum


class SpoolReader:
    """The draining side of one writer's folder; a reader exists only while it holds reader.lock."""

    def __init__(self, folder: Path, lock_fd: int) -> None:
        self.folder = folder
        self._lock_fd = lock_fd
        self.position = self._read_cursor()

    @classmethod
    def claim(cls, folder: Path) -> SpoolReader | None:
        """The folder's reader, or None when another sender is draining it (or it vanished)."""
        try:
            fd = _try_lock(folder / READER_LOCK)
        except FileNotFoundError:
            return None
        return None if fd is None else cls(folder, fd)

    def _read_cursor(self) -> Position:
        first = (segments(self.folder) or [1])[0]
        try:
            number, offset = (int(part) for part in (self.folder / CURSOR).read_text().split())
        except (FileNotFoundError, ValueError):
            return Position(first, 0)
        if number < first:  # its segment was deleted after the cursor was last written
            return Position(first, 0)
        return Position(number, offset)

    def read(self, max_bytes: int = 1024 * 1024, max_records: int = 2000) -> Batch:
        """Records from the cursor on (not moving it); at the end of a finished segment, on to the next."""
        records: list[bytes] = []
        corrupt = size = 0
        position = self.position
        while True:
            # Decided before reading: a segment is finished once the writer moved on to a later one (it
            # never returns to an older one) or is gone. Only then is an incomplete frame at its end
            # garbage rather than a write in flight.
            later = [n for n in segments(self.folder) if n > position.segment]
            finished = bool(later) or not writer_alive(self.folder)
            frames, position, bad, incomplete = self._frames(position, max_bytes - size, max_records - len(records))
            records.extend(frames)
            size += sum(map(len, frames))
            corrupt += bad
            if len(records) >= max_records or size >= max_bytes or not finished:
                break
            if incomplete:
                corrupt += 1
                position = Position(position.segment, self._size(position.segment))
            if not later:
                break
            position = Position(later[0], 0)
        return Batch(records, position, corrupt)

    def _size(self, number: int) -> int:
        try:
            return (self.folder / segment_name(number)).stat().st_size
        except FileNotFoundError:
            return 0

    def _frames(self, start: Position, max_bytes: int, max_records: int) -> tuple[list[bytes], Position, int, bool]:
        """(records, where reading stopped, frames failing their checksum, whether an incomplete or garbled
        frame stopped the reading before the end of the segment)."""
        records: list[bytes] = []
        bad = size = 0
        offset = start.offset
        try:
            segment = open(self.folder / segment_name(start.segment), "rb")  # noqa: SIM115
        except FileNotFoundError:
            return records, start, 0, False
        with segment:
            segment.seek(offset)
            while len(records) < max_records and size < max_bytes:
                header = segment.read(HEADER.size)
                if not header:
                    return records, Position(start.segment, offset), bad, False
                if len(header) < HEADER.size:
                    return records, Position(start.segment, offset), bad, True
                length, checksum = HEADER.unpack(header)
                if length > MAX_FRAME_BYTES:  # a garbled header: nothing after it can be framed again
                    return records, Position(start.segment, offset), bad, True
                body = segment.read(length)
                if len(body) < length:
                    return records, Position(start.segment, offset), bad, True
                offset += HEADER.size + length
                if zlib.crc32(body) == checksum:
                    records.append(body)
                    size += length
                else:
                    bad += 1
        return records, Position(start.segment, offset), bad, False

    def commit(self, position: Position) -> None:
        """Acknowledge every record before `position`: persist the cursor, delete finished segments."""
        temporary = self.folder / f"{CURSOR}.tmp"
        temporary.write_text(f"{position.segment} {position.offset}\n")
        os.replace(temporary, self.folder / CURSOR)
        self.position = position
        for number in segments(self.folder):
            if number < position.segment:
                (self.folder / segment_name(number)).unlink(missing_ok=True)

    def backlog_bytes(self) -> int:
        """Bytes not yet acknowledged in this folder."""
        return sum(self._size(n) for n in segments(self.folder) if n >= self.position.segment) - self.position.offset

    def drained(self) -> bool:
        """Nothing left and no writer that could add more: the folder can go."""
        return not writer_alive(self.folder) and not self.read(max_records=1).records and self.backlog_bytes() <= 0

    def remove(self) -> None:
        """Delete the drained folder of a writer that is gone."""
        for entry in self.folder.iterdir():
            entry.unlink(missing_ok=True)
        self.folder.rmdir()
        self.release()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def orphans(root: Path, skip: Path | None = None) -> Iterator[Path]:
    """Writer folders whose writer is gone (a dead or restarted worker's); the caller tries to claim them."""
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except FileNotFoundError:
        return
    for entry in entries:
        folder = Path(entry.path)
        if entry.is_dir() and folder != skip and not writer_alive(folder):
            yield folder
