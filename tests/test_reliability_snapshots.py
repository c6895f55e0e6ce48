"""Compressed changelog snapshots (issue 13, "Load"): smaller records for the
embedded broker, older uncompressed snapshots still readable, and bounded,
pickle-free decoding of whatever the topic holds."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import zstandard

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


@pytest.mark.parametrize("codec", ["zstd", "zlib"])
def test_compressed_snapshots_round_trip_and_are_smaller(codec):
    rng = np.random.default_rng(0)
    state = _state(rng)
    plain = encode_snapshot("catalog", 2, state, seq=10, chunk_bytes=64 * 1024)
    packed = encode_snapshot("catalog", 2, state, seq=10, chunk_bytes=64 * 1024, compress_level=1, codec=codec)
    size = lambda recs: sum(len(v) for _, v in recs)  # noqa: E731
    assert size(packed) * 4 < size(plain), (size(packed), size(plain))
    assert all(loads(v)["codec"] == codec for _, v in packed)
    assert all("codec" not in loads(v) for _, v in plain)
    assert [k for k, _ in packed] == [f"catalog/2/{i}".encode() for i in range(len(packed))]
    seq, got = _latest(packed)[("catalog", 2)]
    assert seq == 10 and np.array_equal(got["model"]["cms"], state["model"]["cms"])
    assert got["model"]["ids"] == state["model"]["ids"] and got["next_offset"] == 1234


def test_old_uncompressed_zlib_and_new_zstd_snapshots_mix():
    rng = np.random.default_rng(1)
    old = encode_snapshot("account", 0, _state(rng), seq=5, chunk_bytes=32 * 1024)  # before compression
    mid = encode_snapshot("account", 0, _state(rng), seq=7, chunk_bytes=8 * 1024, compress_level=1, codec="zlib")
    new_state = _state(rng)
    new = encode_snapshot("account", 0, new_state, seq=9, chunk_bytes=4 * 1024, compress_level=1)
    assert loads(new[0][1])["codec"] == "zstd", "zstd is the default codec"
    assert _latest(old + mid)[("account", 0)][0] == 7
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
    big_state = dumps({"x": b"\0" * (8 << 20)})  # a valid state of 8 MiB: only the bound rejects it
    bomb = [(b"catalog/1/0", dumps({"seq": 9, "n": 1, "i": 0, "data": zlib.compress(big_state, 9),
                                     "codec": "zlib"}))]
    # the same for zstd: a corrupt payload, a bomb (8 MiB of zeros in a few hundred bytes), an empty frame
    zcorrupt = [(b"catalog/1/0", dumps({"seq": 10, "n": 1, "i": 0, "data": b"not zstd", "codec": "zstd"}))]
    zbomb_data = zstandard.ZstdCompressor(level=19).compress(big_state)
    zbomb = [(b"catalog/1/0", dumps({"seq": 11, "n": 1, "i": 0, "data": zbomb_data, "codec": "zstd"}))]
    zempty = [(b"catalog/1/0", dumps({"seq": 12, "n": 1, "i": 0, "data": b"", "codec": "zstd"}))]
    assert len(bomb[0][1]) < 20_000 and len(zbomb_data) < 2_000
    got = _latest(good + corrupt + unknown + bomb + zcorrupt + zbomb + zempty, max_state_bytes=4 << 20)
    assert got[("catalog", 1)][0] == 3
    # the bombs are valid states: only the size bound kept them out
    assert _latest(good + bomb, max_state_bytes=16 << 20)[("catalog", 1)][0] == 9
    assert _latest(good + zbomb, max_state_bytes=16 << 20)[("catalog", 1)][0] == 11
    with pytest.raises(ValueError):
        encode_snapshot("catalog", 1, {}, seq=1, compress_level=10, codec="zlib")
    with pytest.raises(ValueError):
        encode_snapshot("catalog", 1, {}, seq=1, compress_level=23)
    with pytest.raises(ValueError):
        encode_snapshot("catalog", 1, {}, seq=1, compress_level=1, codec="lz4")


def test_settings_accept_only_levels_the_codec_has():
    from pydantic import ValidationError

    from stream.config import Settings

    assert Settings(snapshot_codec="zstd", snapshot_compress_level=19).snapshot_compress_level == 19
    for bad in (dict(snapshot_codec="zlib", snapshot_compress_level=12), dict(snapshot_compress_level=23),
                dict(snapshot_compress_level=-1), dict(snapshot_codec="lz4")):
        with pytest.raises(ValidationError):
            Settings(**bad)
