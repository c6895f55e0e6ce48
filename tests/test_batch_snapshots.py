"""Columnar batches, changelog snapshot chunking, partitioning, partition runtime."""

from __future__ import annotations

import numpy as np
import pytest

from stream.batch import PlayBatch
from stream.config import Settings
from stream.ingest import Record
from stream.rules import RulesAccountModel
from stream.runtime import account_partition_factory, kafka_partition
from stream.snapshots import SnapshotAssembler, encode_snapshot


def rows(n, account="a"):
    return [dict(event_id=f"{account}{i}", ts=1.7e9 + i, account_id=account, track_id=f"t{i % 3}",
                 artist_id=f"x{i % 7}", ms_played=i, country="SE" if i % 2 else None, skipped=bool(i % 2))
            for i in range(n)]


def test_batch_bytes_round_trip_take_concat():
    b = PlayBatch.from_dicts(rows(10))
    back = PlayBatch.from_bytes(b.to_bytes())
    assert back.to_dicts() == b.to_dicts()
    sub = b.take(np.arange(10) % 2 == 0)
    assert sub.event_id == [f"a{i}" for i in range(0, 10, 2)]
    assert len(PlayBatch.concat([sub, sub])) == 10
    with pytest.raises(ValueError):
        PlayBatch.from_bytes(b"\x81\xa1x\x01")


def test_account_score_rides_in_the_bytes_not_in_the_rows():
    """``account_score`` (the account stage's evidence, forwarded to the
    catalog stage) survives to_bytes / take / concat, is left out of
    ``to_dicts`` (not a PlayEvent field), and a record from a worker that
    predates it decodes with zeros."""
    from detectors.serialize import dumps, loads
    from stream.ingest import check_forwarded_batch

    b = PlayBatch.from_dicts(rows(6))
    assert b.account_score.dtype == np.float32 and not b.account_score.any()
    b.account_score = np.arange(6, dtype=np.float32) * 2.5
    back = PlayBatch.from_bytes(b.to_bytes())
    np.testing.assert_array_equal(back.account_score, b.account_score)
    np.testing.assert_array_equal(PlayBatch.concat([b.take([4, 5]), b.take([0])]).account_score, [10.0, 12.5, 0.0])
    assert "account_score" not in b.to_dicts()[0]
    old = loads(b.to_bytes())
    del old["account_score"]
    legacy = check_forwarded_batch(PlayBatch.from_bytes(dumps(old)))
    assert legacy.account_score.tolist() == [0.0] * 6
    for bad in (np.float32("nan"), np.float32(-1.0)):
        b.account_score[2] = bad
        with pytest.raises(ValueError, match="account_score"):
            check_forwarded_batch(PlayBatch.from_bytes(b.to_bytes()))


def test_snapshot_chunks_reassemble_newest_complete():
    state = {"blob": np.arange(100_000, dtype=np.int64), "name": "x"}
    recs = encode_snapshot("account", 3, state, seq=10, chunk_bytes=64 * 1024)
    assert len(recs) > 10 and all(len(v) < 64 * 1024 + 200 for _, v in recs)
    assert recs[0][0] == b"account/3/0"
    newer = encode_snapshot("account", 3, {"blob": np.zeros(3), "name": "y"}, seq=20, chunk_bytes=64 * 1024)
    asm = SnapshotAssembler()
    for k, v in recs + newer[:0]:
        asm.add(k, v)
    seq, got = asm.latest()[("account", 3)]
    assert seq == 10 and np.array_equal(got["blob"], state["blob"])
    asm2 = SnapshotAssembler()
    for k, v in recs[:-1] + newer:  # older snapshot incomplete, newer complete
        asm2.add(k, v)
    assert asm2.latest()[("account", 3)][1]["name"] == "y"
    asm3 = SnapshotAssembler()
    for k, v in recs[:-1]:
        asm3.add(k, v)
    assert ("account", 3) not in asm3.latest()


def test_kafka_partition_matches_the_default_partitioner():
    # aiokafka's DefaultPartitioner is an independent port of Kafka's (murmur2).
    from aiokafka.partitioner import DefaultPartitioner

    part = DefaultPartitioner()
    for key in ("a", "artist-1", "Röyksopp", "Unknown Artist"):
        assert kafka_partition(key, 12) == part(key.encode(), list(range(12)), list(range(12)))
    spread = {kafka_partition(f"artist{i}", 4) for i in range(100)}
    assert spread == {0, 1, 2, 3}


def test_partition_runtime_skips_offsets_covered_by_restored_state():
    import json
    from datetime import UTC, datetime

    s = Settings(partitions=2)
    make = account_partition_factory(s, lambda: RulesAccountModel(track_plays_per_day=5), clock=lambda: 1.8e9)

    def rec(i):
        v = json.dumps(dict(event_id=f"e{i}", ts=datetime.fromtimestamp(1.7e9 + i, UTC).isoformat(),
                            account_id="a", track_id="t", artist_id="x", ms_played=1)).encode()
        return Record("plays", 0, i, b"a", v, 1.8e9)

    rt = make(0)
    out1 = rt.process([rec(i) for i in range(4)])
    assert out1.valid == 4 and not out1.alerts and sum(len(b) for b in out1.forwards.values()) == 4
    snap = rt.state_dict()
    rt2 = make(0)
    rt2.load_state_dict(snap)
    out2 = rt2.process([rec(i) for i in range(8)])  # 0..3 re-delivered after a crash
    assert out2.skipped == 4 and out2.valid == 4
    assert [a.detector for a in out2.alerts] == ["rule_track_day"]  # 6th play, counted once
    assert out2.alerts[0].features["track_plays_per_day"].actual == 6


def test_rules_alert_once_per_account_and_day_with_distinct_ids():
    rows = []
    for track in ("t1", "t2"):
        rows += [dict(event_id=f"{track}-{i}", ts=1.7e9 + i, account_id="a", track_id=track, artist_id="x",
                      ms_played=31_000) for i in range(4)]
    m = RulesAccountModel(track_plays_per_day=3)
    alerts = m.process(PlayBatch.from_dicts(rows))
    assert [a.detector for a in alerts] == ["rule_track_day"]  # t2 crosses too, same account-day
    back = RulesAccountModel(track_plays_per_day=3)
    back.load_state_dict(m.state_dict())
    more = [dict(event_id=f"t3-{i}", ts=1.7e9 + 10 + i, account_id="a", track_id="t3", artist_id="x",
                 ms_played=31_000) for i in range(4)]
    assert back.process(PlayBatch.from_dicts(more)) == []
