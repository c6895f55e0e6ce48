"""Compressed changelog snapshots (issue 13, "Load"): smaller records for the
embedded broker, older uncompressed snapshots still readable, and bounded,
pickle-free decoding of whatever the topic holds."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from detectors.serialize import dumps, loads
from stream.snapshots import SnapshotAssembler, encode_snapshot


def _state(rng: np.random.Generator) -> dict:
    # shaped like a catalog state: mostly-zero count-min tables, ids, offsets
    table = np.zeros((4, 65536), np.int32)
    table[rng.integers(0, 4, 5000), rng.integers(0, 65536, 5000)] = rng.integers(1, 50, 5000)
    return {"model": {"cms": table, "ids": [f"track-{i}" for i in range(2000)]}, "next_offset": 1234}


def _latest(records, **kw):
    asm = SnapshotAssembler(**kw)
    for k, v in records:
        asm.add(k, v)
    return asm.latest()


def test_compressed_snapshots_round_trip_and_are_smaller():
    rng = np.random.default_rng(0)
    state = _state(rng)
    plain = encode_snapshot("catalog", 2, state, seq=10, chunk_bytes=64 * 1024)
    packed = encode_snapshot("catalog", 2, state, seq=10, chunk_bytes=64 * 1024, compress_level=1)
    size = lambda recs: sum(len(v) for _, v in recs)  # noqa: E731
    assert size(packed) * 4 < size(plain), (size(packed), size(plain))
    assert all(loads(v)["codec"] == "zlib" for _, v in packed)
    assert all("codec" not in loads(v) for _, v in plain)
    assert [k for k, _ in packed] == [f"catalog/2/{i}".encode() for i in range(len(packed))]
    seq, got = _latest(packed)[("catalog", 2)]
    assert seq == 10 and np.array_equal(got["model"]["cms"], state["model"]["cms"])
    assert got["model"]["ids"] == state["model"]["ids"] and got["next_offset"] == 1234


def test_old_uncompressed_and_new_compressed_snapshots_mix():
    rng = np.random.default_rng(1)
    old = encode_snapshot("account", 0, _state(rng), seq=5, chunk_bytes=32 * 1024)  # before compression
    new_state = _state(rng)
    new = encode_snapshot("account", 0, new_state, seq=9, chunk_bytes=4 * 1024, compress_level=1)
    assert len(new) > 2
    seq, got = _latest(old + new)[("account", 0)]
    assert seq == 9 and np.array_equal(got["model"]["cms"], new_state["model"]["cms"])
    # the newer (compressed) snapshot incomplete: the older plain one is used
    assert _latest(old + new[:-1])[("account", 0)][0] == 5
    assert _latest(new[1:] + old)[("account", 0)][0] == 5


def test_bad_compressed_snapshots_are_skipped_not_loaded():
    rng = np.random.default_rng(2)
    good = encode_snapshot("catalog", 1, _state(rng), seq=3, chunk_bytes=1 << 20)
    # a newer snapshot whose payload is not zlib, one with an unknown codec, and a bomb
    corrupt = [(b"catalog/1/0", dumps({"seq": 7, "n": 1, "i": 0, "data": b"not zlib", "codec": "zlib"}))]
    unknown = [(b"catalog/1/0", dumps({"seq": 8, "n": 1, "i": 0, "data": dumps({"x": 1}), "codec": "rot13"}))]
    bomb = [(b"catalog/1/0", dumps({"seq": 9, "n": 1, "i": 0, "data": zlib.compress(b"\0" * (8 << 20), 9),
                                     "codec": "zlib"}))]
    assert len(bomb[0][1]) < 20_000
    got = _latest(good + corrupt + unknown + bomb, max_state_bytes=4 << 20)
    assert got[("catalog", 1)][0] == 3
    with pytest.raises(ValueError):
        encode_snapshot("catalog", 1, {}, seq=1, compress_level=10)
