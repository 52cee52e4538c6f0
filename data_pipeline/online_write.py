"""The compare-and-set writes of materialization, packed as Redis protocol bytes with numpy.

Materialization sends one EVALSHA per chunk of drivers: the script (`write_newer_lua`) writes a driver's
hash only when its event time is newer than the one stored, the rule Feast's own online_write_batch
applies. Building that command value by value in Python (one `struct.pack`, one protocol header per value)
cost more than Redis spent running it. Here every part of the command is built for a whole batch at once:
keys are a fixed-width record (the key's prefix, the little-endian id, its suffix), Float32 values too, and
the event times and Int64 values, which repeat across drivers, are encoded once per distinct value. The
bytes are exactly what redis-py would send for the same arguments (tests/unit/test_materialize_write.py
compares them), and the values are FeastRedisEncoding's, itself checked against Feast's serializers.
"""

from __future__ import annotations

import numpy as np

from mlops_platform.feature_store import FeastRedisEncoding


def write_newer_lua(features: int) -> str:
    """The compare-and-set script for a view with `features` features (HSET arguments spelled out).

    ARGV: the `_ts:<view>` field, the key TTL (0: none), the feature count, the feature fields, then per
    key its event time in microseconds, its encoded Timestamp and its encoded values. Returns keys written.
    """
    pairs = ", ".join(f"ARGV[{3 + f}], ARGV[at + {2 + f}]" for f in range(1, features + 1))
    return """
local function varint(s, pos)
  local value, scale = 0, 1
  while true do
    local byte = string.byte(s, pos)
    pos = pos + 1
    value = value + (byte % 128) * scale
    if byte < 128 then return value, pos end
    scale = scale * 128
  end
end
local function micros(raw)
  if not raw then return 0 end
  local seconds, nanos, pos = 0, 0, 1
  while pos <= #raw do
    local tag = string.byte(raw, pos)
    local value
    value, pos = varint(raw, pos + 1)
    if tag == 8 then seconds = value elseif tag == 16 then nanos = value end
  end
  return seconds * 1000000 + math.floor(nanos / 1000)
end
local ts_field, ttl = ARGV[1], tonumber(ARGV[2])
local base, stride, written = BASE, STRIDE, 0
for k = 1, #KEYS do
  local at = base + (k - 1) * stride
  if tonumber(ARGV[at + 1]) > micros(redis.call('HGET', KEYS[k], ts_field)) then
    redis.call('HSET', KEYS[k], ts_field, ARGV[at + 2], PAIRS)
    if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
    written = written + 1
  end
end
return written
""".replace("BASE", str(3 + features)).replace("STRIDE", str(2 + features)).replace("PAIRS", pairs)


def bulk(value: bytes) -> bytes:
    """One argument in the Redis protocol: $<length>CRLF<bytes>CRLF."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _fixed_width(prefix: bytes, values: np.ndarray, dtype: str, suffix: bytes) -> np.ndarray:
    """Records prefix + value (in `dtype`'s bytes) + suffix, one per value, as a structured array."""
    record = np.dtype([("prefix", np.uint8, (len(prefix),)), ("value", dtype), ("suffix", np.uint8, (len(suffix),))])
    out = np.empty(len(values), dtype=record)
    out["prefix"] = np.frombuffer(prefix, dtype=np.uint8)
    out["value"] = values
    out["suffix"] = np.frombuffer(suffix, dtype=np.uint8)
    return out


class CompareAndSetPacker:
    """Packs EVALSHA calls of the compare-and-set script for one feature view, a batch at a time."""

    def __init__(self, encoding: FeastRedisEncoding, sha: str, ttl_seconds: int) -> None:
        self.encoding = encoding
        self.kinds = list(encoding.kinds.values())
        key_head, key_tail = _key_layout(encoding)
        self._key_prefix = b"$%d\r\n" % (len(key_head) + 8 + len(key_tail)) + key_head
        self._key_suffix = key_tail + b"\r\n"
        float_value = encoding.value("float", 0.0)
        self._float_prefix = b"$%d\r\n" % len(float_value) + float_value[:-4]
        head = [encoding.ts_field, b"%d" % ttl_seconds, b"%d" % len(self.kinds), *encoding.fields.values()]
        self._command = bulk(b"EVALSHA") + bulk(sha.encode())
        self._head = b"".join(bulk(arg) for arg in head)
        self._head_count = len(head)
        self._per_row = 2 + len(self.kinds)

    def keys(self, driver_ids: np.ndarray) -> np.ndarray:
        """One record per driver: its key as a protocol argument (slice it, then .tobytes())."""
        return _fixed_width(self._key_prefix, driver_ids.astype(np.int64), "<i8", self._key_suffix)

    def row_arguments(self, event_us: np.ndarray, columns: list[np.ndarray]) -> list[bytes]:
        """The per-driver arguments in order (event time and Timestamp as one item, then each value)."""
        n = len(event_us)
        grid = np.empty((n, 1 + len(self.kinds)), dtype=object)
        grid[:, 0] = _by_distinct(event_us.astype(np.int64), self._event_arguments)
        for column, (kind, values) in enumerate(zip(self.kinds, columns, strict=True), start=1):
            if kind == "float":
                floats = _fixed_width(self._float_prefix, values.astype(np.float32), "<f4", b"\r\n")
                grid[:, column] = floats.view(f"S{floats.dtype.itemsize}").astype(object)
            else:
                grid[:, column] = _by_distinct(values.astype(np.int64), self._int_argument)
        return grid.ravel().tolist()

    def command(self, keys: np.ndarray, rows: list[bytes]) -> bytes:
        """The whole EVALSHA for `keys` (a slice of keys()) and their `rows` (the matching row_arguments)."""
        count = len(keys)
        arguments = 3 + count + self._head_count + count * self._per_row
        return b"".join((b"*%d\r\n" % arguments, self._command, bulk(b"%d" % count), keys.tobytes(), self._head,
                         *rows))

    @property
    def items_per_row(self) -> int:
        return 1 + len(self.kinds)

    def _event_arguments(self, us: int) -> bytes:
        return bulk(b"%d" % us) + bulk(self.encoding.timestamp(us))

    def _int_argument(self, value: int) -> bytes:
        return bulk(self.encoding.value("int", value))


def _key_layout(encoding: FeastRedisEncoding) -> tuple[bytes, bytes]:
    """The bytes before and after the 8-byte little-endian id in the view's Redis keys."""
    zeros, ones = encoding.key(0), encoding.key(-1)
    start = next(i for i, (a, b) in enumerate(zip(zeros, ones, strict=True)) if a != b)
    head, tail = zeros[:start], zeros[start + 8:]
    for sample in (1001, 2**40 + 3):
        if encoding.key(sample) != head + int(sample).to_bytes(8, "little", signed=True) + tail:
            raise AssertionError("Feast's key is no longer <head><little-endian int64 id><tail>: update the packer")
    return head, tail


def _by_distinct(values: np.ndarray, encode) -> np.ndarray:
    """encode(value) for each value, computed once per distinct value (event times and counts repeat)."""
    distinct, inverse = np.unique(values, return_inverse=True)
    encoded = np.empty(len(distinct), dtype=object)
    encoded[:] = [encode(int(v)) for v in distinct.tolist()]
    return encoded[inverse.reshape(-1)]
