"""The packed compare-and-set commands are byte for byte what redis-py sends for the value-by-value arguments."""

from __future__ import annotations

import numpy as np
import pytest

from feast_repo.features import FEATURE_VIEW, JOIN_KEY


@pytest.fixture(scope="module")
def encoding():
    from mlops_platform.feature_store import FeastRedisEncoding

    return FeastRedisEncoding("ride_mlops", JOIN_KEY, FEATURE_VIEW,
                              {"conv_rate": "float", "acc_rate": "float", "avg_daily_trips": "int"}, 3)


def reference_command(encoding, sha: str, ttl: int, ids, event_us, columns) -> bytes:
    """The command as redis-py's own serializer packs the arguments FeastRedisEncoding gives, one by one."""
    from redis.connection import Encoder, PythonRespSerializer

    kinds = list(encoding.kinds.values())
    args = [encoding.ts_field, ttl, len(kinds), *encoding.fields.values()]
    for i, us in enumerate(event_us):
        args += [int(us), encoding.timestamp(int(us)),
                 *(encoding.value(kind, values[i]) for kind, values in zip(kinds, columns, strict=True))]
    keys = [encoding.key(int(d)) for d in ids]
    serializer = PythonRespSerializer(10**9, Encoder("utf-8", "strict", False).encode)
    return b"".join(serializer.pack("EVALSHA", sha, len(keys), *keys, *args))


def rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1001, 1001 + 10 * n), n, replace=False).astype(np.int64)
    event_us = 1_559_347_200_000_000 + rng.integers(0, 3, n) * 3_600_000_000 + rng.choice([0, 1, 999_999], n)
    conv = rng.random(n)  # float64, as parsed from PostgreSQL's text: packed as Float32
    acc = np.concatenate([[0.0, 1.0, 0.1], rng.random(n - 3)])
    trips = np.concatenate([[0, 127, 128, 300, 2**40], rng.integers(0, 60, n - 5)])
    return ids, event_us, [conv, acc, trips]


@pytest.mark.parametrize("n,seed", [(5, 1), (37, 2), (500, 3)])
def test_a_packed_command_is_what_redis_py_sends_for_feasts_encoding(encoding, n, seed):
    from data_pipeline.online_write import CompareAndSetPacker

    ids, event_us, columns = rows(n, seed)
    packer = CompareAndSetPacker(encoding, "f" * 40, ttl_seconds=0)
    packed = packer.command(packer.keys(ids), packer.row_arguments(event_us, columns))
    assert packed == reference_command(encoding, "f" * 40, 0, ids, event_us, columns)


def test_a_batch_packs_in_slices_as_it_would_whole(encoding):
    from data_pipeline.online_write import CompareAndSetPacker

    ids, event_us, columns = rows(300, 4)
    packer = CompareAndSetPacker(encoding, "a" * 40, ttl_seconds=3600)
    keys, arguments = packer.keys(ids), packer.row_arguments(event_us, columns)
    per_row = packer.items_per_row
    for begin, end in ((0, 100), (100, 299), (299, 300)):
        packed = packer.command(keys[begin:end], arguments[begin * per_row:end * per_row])
        expected = reference_command(encoding, "a" * 40, 3600, ids[begin:end], event_us[begin:end],
                                     [c[begin:end] for c in columns])
        assert packed == expected, (begin, end)

