"""Decoding: every bad record gets exactly one reason; lateness, skew, dedupe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.ingest import Dedupe, ForwardedDecoder, PlaysDecoder, Record, decode_audio_notice
from stream.batch import PlayBatch
from stream.schemas import DeadLetterReason as R

NOW = 1_790_000_000.0  # fixed wall clock


def rec(value, offset=0):
    return Record("plays", 0, offset, b"k", value, NOW)


def play(event_id="e1", ts=NOW - 100, **kw):
    from datetime import UTC, datetime

    d = dict(event_id=event_id, ts=datetime.fromtimestamp(ts, UTC).isoformat(), account_id="a",
             track_id="t", artist_id="x", ms_played=31_000)
    d.update(kw)
    return json.dumps(d).encode()


@pytest.mark.parametrize("value,reason", [
    (b"\xff\xfe{", R.invalid_utf8),
    (b"{\"a\": ", R.invalid_json),
    (b"[1, 2]", R.schema_error),
    (play(extra_field=1), R.schema_error),
    (play(ms_played="31"), R.schema_error),
    (json.dumps({"event_id": "x"}).encode(), R.schema_error),
    (play(ms_played=-5), R.value_out_of_range),
    (play(ms_played=25 * 3600 * 1000), R.value_out_of_range),
    (play(ts=NOW + 3600), R.ts_in_future),
    (play(ts=900_000_000.0), R.ts_out_of_range),
    (b" " * 70_000, R.oversized),
])
def test_each_bad_record_gets_its_reason(value, reason):
    d = PlaysDecoder(clock=lambda: NOW)
    batch, dead, dups = d.decode([rec(value)])
    assert len(batch) == 0 and dups == 0
    assert [x.reason for x in dead] == [reason]
    assert dead[0].record.value == value
    hdr = dict(dead[0].headers())
    assert hdr["reason"] == reason.value.encode() and hdr["source_topic"] == b"plays"


def test_watermark_lateness_is_per_stream_clock_not_wall_clock():
    d = PlaysDecoder(allowed_lateness_s=3600, clock=lambda: NOW)
    old = NOW - 5 * 365 * 86400  # replayed history, years old: accepted
    batch, dead, _ = d.decode([rec(play("a", old)), rec(play("b", old + 7200), 1),
                               rec(play("c", old + 7200 - 3599), 2), rec(play("d", old + 7200 - 3601), 3)])
    assert batch.event_id == ["a", "b", "c"]
    assert [x.reason for x in dead] == [R.too_late]
    assert d.watermark == pytest.approx(old + 7200 - 3600)


def test_duplicates_are_dropped_and_counted_not_dead_lettered():
    d = PlaysDecoder(clock=lambda: NOW)
    b1, _, dups1 = d.decode([rec(play("e1")), rec(play("e1"), 1), rec(play("e2"), 2)])
    b2, dead, dups2 = d.decode([rec(play("e2"), 3)])
    assert b1.event_id == ["e1", "e2"] and dups1 == 1 and dups2 == 1 and not dead and len(b2) == 0


def test_rejected_event_is_not_remembered_by_dedupe():
    d = PlaysDecoder(clock=lambda: NOW)
    _, dead, _ = d.decode([rec(play("e1", NOW + 3600))])
    assert dead[0].reason is R.ts_in_future
    assert not d.dedupe.contains("e1", NOW + 3600)


def test_dedupe_memory_is_bounded_and_round_trips():
    dd = Dedupe(bucket_s=10, buckets=2, max_ids=1000)
    for i in range(50):
        dd.seen(f"id{i}", float(i))  # 5 buckets of 10 ids
    assert len(dd.sets_) == 2 and dd.size_ == 20
    assert dd.seen("id49", 49.0) and not dd.seen("id0", 0.0)
    capped = Dedupe(bucket_s=10, buckets=100, max_ids=25)
    for i in range(100):
        capped.seen(f"x{i}", float(i))
    assert capped.size_ <= 25 + 10
    from detectors.serialize import dumps, loads

    back = Dedupe(bucket_s=10, buckets=2)
    back.load_state_dict(loads(dumps(dd.state_dict())))
    assert back.contains("id45", 45.0) and back.size_ == dd.size_


def test_forwarded_decoder_drops_repeated_batches():
    rows = [dict(event_id=f"e{i}", ts=NOW - i, account_id="a", track_id="t", artist_id="x", ms_played=1)
            for i in range(5)]
    value = PlayBatch.from_dicts(rows).to_bytes()
    fd = ForwardedDecoder()
    b1, dead1, d1 = fd.decode([Record("f", 0, 0, None, value, NOW)])
    b2, dead2, d2 = fd.decode([Record("f", 0, 1, None, value, NOW), Record("f", 0, 2, None, b"\x01junk", NOW)])
    assert len(b1) == 5 and d1 == 0 and len(b2) == 0 and d2 == 5
    assert [x.reason for x in dead2] == [R.schema_error]


def test_audio_notice_decoding():
    ok = decode_audio_notice(rec(json.dumps({"file_id": "f1", "uri": "file:///x.ogg", "channels": 2}).encode()))
    assert ok.file_id == "f1" and ok.channels == 2
    assert decode_audio_notice(rec(b"nope")).reason is R.invalid_json
    assert decode_audio_notice(rec(json.dumps({"file_id": "f1"}).encode())).reason is R.schema_error
    assert decode_audio_notice(rec(json.dumps({"file_id": "f", "uri": "u", "channels": 0}).encode())).reason is R.schema_error


@pytest.mark.parametrize("ts_text", [
    "2026-09-21T10:00:00Z", "2026-09-21T10:00:00.123Z", "2026-09-21T10:00:00.123456+00:00",
    "2026-09-21T12:30:00+02:30", "2026-09-21T10:00:00", "2026-09-21 10:00:00Z", "1790000000",
])
def test_fast_path_and_pydantic_agree_on_every_time_spelling(ts_text, monkeypatch):
    """The msgspec fast path parses RFC 3339 times with a zone; anything else
    (a naive time, a number) is decided by pydantic. Both give the same
    instant, and a record pydantic would reject is never accepted."""
    from stream.schemas import PlayEvent

    raw = json.loads(play())
    raw["ts"] = json.loads(ts_text) if ts_text.isdigit() else ts_text
    value = json.dumps(raw).encode()
    try:
        expect = PlayEvent.model_validate_json(value).ts.timestamp()
    except Exception:  # noqa: BLE001 - pydantic rejects: so must the decoder
        expect = None
    calls = []
    orig = PlayEvent.model_validate_json
    monkeypatch.setattr(PlayEvent, "model_validate_json", classmethod(
        lambda cls, v: calls.append(v) or orig(v)))
    batch, dead, _ = PlaysDecoder(clock=lambda: 1_800_000_000.0).decode([rec(value)])
    if expect is None:
        assert len(batch) == 0 and len(dead) == 1
    else:
        assert len(batch) == 1 and batch.ts[0] == pytest.approx(expect, abs=1e-6)
    zoned = ts_text.endswith("Z") or ts_text[-6] in "+-"
    if zoned and "T" in ts_text:
        assert calls == [], "an RFC 3339 time with a zone takes the fast path"


def test_dedupe_stays_bounded_when_every_event_is_in_one_bucket():
    """Live traffic puts every play of a partition in the current time
    bucket, which the oldest-bucket rule cannot trim: the cap still holds
    (the overflowing bucket is forgotten and counted)."""
    dd = Dedupe(bucket_s=60, buckets=180, max_ids=100)
    peak = 0
    for i in range(1000):
        assert not dd.seen(f"live{i}", NOW + i * 0.01)  # 10 s of event time, one bucket
        peak = max(peak, dd.size_)
    assert peak <= 100 and dd.size_ == sum(len(s) for s in dd.sets_.values())
    assert dd.overflows_ == 9
    assert dd.seen("live999", NOW + 9.99), "the newest id is kept after an overflow"


def test_default_dedupe_buckets_hold_a_live_partition_at_33k_plays_per_second():
    from stream.config import Settings

    s = Settings()
    assert s.dedupe_max_ids / s.dedupe_bucket_s >= 33_000
    assert s.dedupe_bucket_s * s.dedupe_buckets >= s.allowed_lateness_s


def test_dedupe_memory_of_another_hash_is_not_restored():
    """Snapshots written before the hash was named used BLAKE2b: their ids
    cannot match the new hash, so the memory is dropped rather than kept
    as dead weight under the cap."""
    from detectors.serialize import dumps, loads

    dd = Dedupe()
    dd.seen("e1", NOW)
    state = loads(dumps(dd.state_dict()))
    assert state["hash"] == "xxh3_64"
    back = Dedupe()
    back.load_state_dict(state)
    assert back.contains("e1", NOW)
    old = {"buckets": state["buckets"]}  # the format before the hash was stored
    back.load_state_dict(old)
    assert back.size_ == 0 and not back.contains("e1", NOW)
