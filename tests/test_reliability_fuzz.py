"""Property-based fuzzing of the input decoders (issue 13, "Bad input on every topic").

Each test throws at least 10,000 generated records at one decoder:

* ``plays`` values (PlayEvent-shaped JSON) at :class:`stream.ingest.PlaysDecoder`;
* ``audio.ingested`` values at :func:`stream.ingest.decode_audio_notice`;
* ``plays.by_artist`` values (msgpack column batches) at
  :class:`stream.ingest.ForwardedDecoder`.

Properties checked on every generated micro-batch:

1. no exception escapes the decoder;
2. every record is accounted for exactly once: accepted, dead-lettered or
   counted as a duplicate;
3. every dead letter carries a reason from the fixed set, its original bytes
   and the Kafka headers of CONVENTIONS.md;
4. every accepted record is a valid :class:`~stream.schemas.PlayEvent` (or
   :class:`~stream.schemas.AudioIngested`);
5. records built with exactly one known defect get exactly the reason that
   defect calls for (unknown field -> ``schema_error``, negative ``ms_played``
   -> ``value_out_of_range``, ...), and well-formed records are accepted.

Records are generated in lists (one list = one micro-batch), so a modest
``max_examples`` yields more than 10k records within a few seconds per schema.
"""

from __future__ import annotations

import json
import random
import string
from datetime import UTC, datetime, timedelta

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.serialize import dumps
from stream.batch import OPT_STR_COLUMNS, PlayBatch
from stream.ingest import DeadLetter, Dedupe, ForwardedDecoder, PlaysDecoder, Record, decode_audio_notice
from stream.schemas import MAX_MS_PLAYED, MIN_TS, AudioIngested, DeadLetterReason, PlayEvent

#: The fixed reason set of CONVENTIONS.md, spelled out (not read from the enum under test).
FIXED_REASONS = {"invalid_utf8", "invalid_json", "schema_error", "oversized", "value_out_of_range",
                 "too_late", "ts_in_future", "ts_out_of_range", "uri_rejected"}
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MAX_BYTES = 2048  # a small limit keeps oversized records cheap to generate
RECORDS_PER_SCHEMA = 10_000
FUZZ = settings(max_examples=800, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

_FIELDS = list(PlayEvent.model_fields)
_REQUIRED = ["event_id", "ts", "account_id", "track_id", "artist_id", "ms_played"]

# ---------------------------------------------------------------- strategies
odd_text = st.text(st.characters(), max_size=30)  # lone surrogates included


_TZ = ["Z", "+00:00", "+05:30", "-08:00", "+14:00", "-12:00", ""]
_FMT = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"]
#: code-point ranges for odd but valid text: ASCII, Latin-1, combining marks,
#: RTL scripts, CJK, zero-width and BOM characters, emoji / astral planes.
_CP_RANGES = [(0x20, 0x7E), (0xA0, 0xFF), (0x300, 0x36F), (0x590, 0x6FF), (0x4E00, 0x4E80),
              (0x200B, 0x200F), (0xFEFF, 0xFEFF), (0x1F300, 0x1F64F), (0x10000, 0x1007F), (0x0, 0x1F)]


def _text(r: random.Random, lo: int, hi: int) -> str:
    out = []
    for _ in range(r.randint(lo, hi)):
        a, b = r.choice(_CP_RANGES)
        out.append(chr(r.randint(a, b)))
    return "".join(out)


def _recent_ts(r: random.Random) -> str:
    """A timestamp within the last 30 min before NOW, in assorted ISO spellings."""
    dt = NOW - timedelta(seconds=r.uniform(0, 1800))
    z = r.choice(_TZ)
    off = timedelta(0)
    if z not in ("", "Z", "+00:00"):
        off = timedelta(hours=int(z[1:3]), minutes=int(z[4:6])) * (1 if z[0] == "+" else -1)
    return (dt + off).replace(tzinfo=None).strftime(r.choice(_FMT)) + z


@st.composite
def valid_play(draw) -> dict:
    """A well-formed play (event_id is replaced by a unique one in the test).

    Hypothesis draws one seed; the fields come from a seeded ``random.Random``
    (one draw per record keeps 10k records within seconds)."""
    r = random.Random(draw(st.integers(0, 2**32)))
    d = {"event_id": "x", "ts": _recent_ts(r), "account_id": _text(r, 1, 24), "track_id": _text(r, 1, 24),
         "artist_id": _text(r, 1, 24), "ms_played": r.choice([0, MAX_MS_PLAYED, r.randint(0, MAX_MS_PLAYED)])}
    opt = {
        "track_duration_ms": lambda: r.randint(0, MAX_MS_PLAYED),
        "platform": lambda: _text(r, 0, 20), "device_id": lambda: _text(r, 0, 20),
        "ip": lambda: r.choice(["10.0.0.1", "2001:db8::1", "::1", "203.0.113.7"]),
        "country": lambda: r.choice(["DE", "US", "ZZ", "", None]),
        "reason_start": lambda: r.choice(["trackdone", "fwdbtn", "clickrow", None]),
        "reason_end": lambda: r.choice(["trackdone", "endplay"]),
        "shuffle": lambda: r.choice([True, False, None]), "skipped": lambda: r.choice([True, False, None]),
        "offline": lambda: r.choice([True, False, None]),
    }
    for k, gen in opt.items():
        if r.random() < 0.5:
            d[k] = gen()
    return d


_COLS_ALL = list(PlayBatch.__dataclass_fields__) + ["__nd__", "dtype", "shape", "data"]
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text
any_json = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(odd_text, c, max_size=4),
                        max_leaves=6)
msgpack_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                   | st.text(max_size=10) | st.binary(max_size=10))
any_msgpack = st.recursive(msgpack_scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.sampled_from(_COLS_ALL) | st.text(max_size=5), c, max_size=5),
                           max_leaves=8)
WRONG = {
    "str": st.integers() | st.floats(allow_nan=False) | st.booleans() | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | st.none(),
    "ts": st.booleans() | st.none() | st.lists(st.integers(), max_size=2) | st.sampled_from(
        ["yesterday", "2024-13-45T00:00:00Z", "", "12:00", "2024-02-30T00:00:00Z"]),
    "ms": st.text(string.digits, min_size=1, max_size=6) | st.floats(0.5, 1e6).filter(lambda f: f != int(f))
    | st.booleans() | st.none() | st.lists(st.integers(), max_size=2),
}


@st.composite
def play_spec(draw) -> tuple[str, object]:
    """``(kind, payload)``: a play with one known defect (or none), or free garbage."""
    kind = draw(st.sampled_from(["valid", "valid", "valid", "unknown_field", "missing_field", "wrong_type",
                                 "bad_ms", "future_ts", "old_ts", "late_ts", "oversized", "long_id",
                                 "bad_utf8", "garbage", "random_json", "odd_unicode"]))
    if kind == "garbage":
        return kind, draw(st.binary(max_size=200))
    if kind == "random_json":
        return kind, json.dumps(draw(any_json)).encode()
    d = draw(valid_play())
    if kind == "unknown_field":
        name = draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=12).filter(lambda k: k not in _FIELDS))
        d[name] = draw(json_scalars)
    elif kind == "missing_field":
        del d[draw(st.sampled_from(_REQUIRED[1:]))]  # event_id is re-added by the test
    elif kind == "wrong_type":
        f = draw(st.sampled_from(_REQUIRED[1:]))
        d[f] = draw(WRONG["ts" if f == "ts" else "ms" if f == "ms_played" else "str"])
    elif kind == "bad_ms":
        d["ms_played"] = draw(st.integers(max_value=-1) | st.integers(min_value=MAX_MS_PLAYED + 1))
    elif kind == "future_ts":
        d["ts"] = (NOW + timedelta(seconds=draw(st.floats(301, 1e9)))).isoformat()
    elif kind == "old_ts":
        d["ts"] = draw(st.datetimes(datetime(1, 1, 2), datetime(1999, 12, 31))).isoformat() + "Z"
    elif kind == "late_ts":
        d["ts"] = draw(st.datetimes(datetime(2000, 1, 2), datetime(2026, 6, 1, 9, 59))).isoformat() + "Z"
    elif kind == "long_id":
        d[draw(st.sampled_from(["account_id", "track_id", "artist_id"]))] = "a" * draw(st.integers(513, 1500))
    elif kind == "oversized":
        d["platform"] = "p" * draw(st.integers(MAX_BYTES, MAX_BYTES + 500))
    elif kind == "odd_unicode":
        d["account_id"] = draw(odd_text)
        d["track_id"] = draw(odd_text)
    return kind, d


#: reason that each single-defect kind must get (None: accepted; a set: any of them).
EXPECT = {
    "valid": None, "unknown_field": {"schema_error"}, "missing_field": {"schema_error"},
    "wrong_type": {"schema_error"}, "bad_ms": {"value_out_of_range"}, "future_ts": {"ts_in_future"},
    "old_ts": {"ts_out_of_range"}, "late_ts": {"too_late"}, "oversized": {"oversized"},
    "long_id": {"schema_error"}, "bad_utf8": {"invalid_utf8"},
}


def _encode(i: int, kind: str, payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    d = dict(payload)
    d["event_id"] = f"ev-{i}"
    if kind == "odd_unicode":  # lone surrogates cannot be UTF-8: escape them as JSON does
        return json.dumps(d, ensure_ascii=True).encode()
    raw = json.dumps(d, ensure_ascii=False).encode("utf-8")
    if kind == "bad_utf8":
        pos = raw.index(b'"account_id": "') + len(b'"account_id": "')
        raw = raw[:pos] + b"\xff\xc3" + raw[pos:]
    return raw


def _check_dead(d: DeadLetter) -> None:
    assert isinstance(d.reason, DeadLetterReason) and d.reason.value in FIXED_REASONS
    h = dict(d.headers())
    assert set(h) == {"reason", "detail", "source_topic", "partition", "offset"}
    assert h["reason"].decode() == d.reason.value
    assert int(h["offset"]) == d.record.offset and int(h["partition"]) == d.record.partition


def _rows_as_events(batch: PlayBatch) -> list[PlayEvent]:
    out = []
    for row in batch.to_dicts():
        row.pop("record_ts")
        row["ts"] = datetime.fromtimestamp(row["ts"], UTC)
        out.append(PlayEvent.model_validate(row))
    return out


# ---------------------------------------------------------------- plays
def test_plays_decoder_fuzz_no_crash_every_rejection_has_a_reason():
    seen = {"records": 0, "accepted": 0, "dead": 0}
    now_s = NOW.timestamp()

    @FUZZ
    @given(st.lists(play_spec(), min_size=10, max_size=24))
    def run(specs):
        dec = PlaysDecoder(max_record_bytes=MAX_BYTES, dedupe=Dedupe(3600, 3, 10_000), clock=lambda: now_s)
        anchor = (b"acc", json.dumps({"event_id": "anchor", "ts": NOW.isoformat(), "account_id": "a",
                                      "track_id": "t", "artist_id": "r", "ms_played": 1000}).encode())
        values = [anchor[1]] + [_encode(i, k, p) for i, (k, p) in enumerate(specs)]
        kinds = ["valid"] + [k for k, _ in specs]
        recs = [Record("plays", 3, 100 + i, b"k", v, now_s) for i, v in enumerate(values)]
        recs.append(Record("plays", 3, 100 + len(recs), b"k", values[0], now_s))  # a duplicate
        recs.append(Record("plays", 3, 100 + len(recs), b"k", None, now_s))  # a tombstone
        kinds += ["duplicate", "tombstone"]

        batch, dead, dups = dec.decode(recs)

        seen["records"] += len(recs)
        assert len(batch) + len(dead) + dups == len(recs)
        assert dups == 1
        by_offset = {d.record.offset: d for d in dead}
        assert len(by_offset) == len(dead)
        for d in dead:
            _check_dead(d)
            assert d.record.value is recs[d.record.offset - 100].value  # original bytes kept
        events = _rows_as_events(batch)
        accepted = {e.event_id for e in events}
        assert len(accepted) == len(events)
        for e in events:
            t = e.ts.timestamp()
            assert MIN_TS.timestamp() <= t <= now_s + dec.max_clock_skew_s
            assert 0 <= e.ms_played <= MAX_MS_PLAYED
        for i, kind in enumerate(kinds):
            off = 100 + i
            if kind == "valid":
                assert off not in by_offset, (kind, values[i], by_offset[off].detail)
                assert (f"ev-{i - 1}" if i else "anchor") in accepted
            elif kind in EXPECT:
                assert off in by_offset, (kind, values[i])
                assert by_offset[off].reason.value in EXPECT[kind], (kind, values[i], by_offset[off].detail)
            elif kind == "tombstone":
                assert by_offset[off].reason.value == "schema_error"
        seen["accepted"] += len(batch)
        seen["dead"] += len(dead)

    run()
    assert seen["records"] >= RECORDS_PER_SCHEMA, seen
    # both outcomes are well represented
    assert seen["accepted"] > 0.2 * seen["records"] and seen["dead"] > 0.3 * seen["records"], seen


# ---------------------------------------------------------------- audio.ingested
@st.composite
def audio_spec(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["valid", "valid", "unknown_field", "missing", "wrong_type", "out_of_range",
                                 "oversized", "bad_utf8", "garbage", "random_json"]))
    if kind == "garbage":
        return kind, draw(st.binary(max_size=200))
    if kind == "random_json":
        return kind, json.dumps(draw(any_json)).encode()
    r = random.Random(draw(st.integers(0, 2**32)))
    d = {"file_id": _text(r, 1, 30), "uri": r.choice(["file:///music/a.flac", "/srv/a.wav", "s3://b/x.mp3",
                                                      "../../etc/passwd", "file:///%00", "/m/" + _text(r, 1, 40)])}
    for k, gen in {"sample_rate_hz": lambda: r.randint(1, 1_536_000), "channels": lambda: r.randint(1, 64),
                   "duration_s": lambda: r.uniform(0, 7 * 24 * 3600), "codec": lambda: r.choice(["flac", "mp3"])}.items():
        if r.random() < 0.5:
            d[k] = gen()
    if kind == "unknown_field":
        d["zz_" + draw(st.text(string.ascii_lowercase, max_size=8))] = draw(json_scalars)
    elif kind == "missing":
        del d[draw(st.sampled_from(["file_id", "uri"]))]
    elif kind == "wrong_type":
        d[draw(st.sampled_from(["file_id", "uri"]))] = draw(WRONG["str"])
    elif kind == "out_of_range":
        k = draw(st.sampled_from(["sample_rate_hz", "channels", "duration_s"]))
        d[k] = draw(st.sampled_from([-1, -0.5, 10**9, 1e12]))
    elif kind == "oversized":
        d["uri"] = "/a/" + "x" * MAX_BYTES
    raw = json.dumps(d, ensure_ascii=False).encode()
    if kind == "bad_utf8":
        raw = raw[:-2] + b"\xc3\x28" + raw[-2:]
    return kind, raw


AUDIO_EXPECT = {"unknown_field": {"schema_error"}, "missing": {"schema_error"}, "wrong_type": {"schema_error"},
                "out_of_range": {"schema_error", "value_out_of_range"}, "oversized": {"oversized"},
                "bad_utf8": {"invalid_utf8"}}


def test_audio_notice_decoder_fuzz():
    count = [0]

    @FUZZ
    @given(st.lists(audio_spec(), min_size=13, max_size=20))
    def run(specs):
        for i, (kind, raw) in enumerate(specs):
            rec = Record("audio.ingested", 0, i, b"f", raw, 0.0)
            out = decode_audio_notice(rec, max_record_bytes=MAX_BYTES)
            count[0] += 1
            if isinstance(out, DeadLetter):
                _check_dead(out)
                assert out.record.value is raw
                assert kind != "valid", (raw, out.detail)
                if kind in AUDIO_EXPECT:
                    assert out.reason.value in AUDIO_EXPECT[kind], (kind, raw, out.detail)
            else:
                assert isinstance(out, AudioIngested)
                assert kind in ("valid", "random_json"), (kind, raw)
                AudioIngested.model_validate(out.model_dump())

    run()
    assert count[0] >= RECORDS_PER_SCHEMA


# ---------------------------------------------------------------- plays.by_artist
_COLS = [f for f in PlayBatch.__dataclass_fields__]


def _good_batch(n: int, seed: int) -> PlayBatch:
    rng = np.random.default_rng(seed)
    rows = [{"event_id": f"f{seed}-{i}", "ts": NOW.timestamp() - float(rng.integers(0, 10**6)),
             "account_id": f"a{rng.integers(5)}", "track_id": f"t{rng.integers(9)}", "artist_id": "r",
             "ms_played": int(rng.integers(0, MAX_MS_PLAYED)), "country": ["DE", None][i % 2],
             "shuffle": [True, False, None][i % 3]} for i in range(n)]
    return PlayBatch.from_dicts(rows)


@st.composite
def forwarded_spec(draw) -> tuple[str, bytes, int]:
    """``(kind, bytes, rows)``: a forwarded batch, possibly damaged."""
    n = draw(st.integers(1, 12))
    b = _good_batch(n, draw(st.integers(0, 10**9)))
    kind = draw(st.sampled_from(["valid", "valid", "valid", "repeat", "garbage", "truncated", "random_msgpack",
                                 "drop_column", "ragged", "wrong_column", "bad_values"]))
    cols = {f: getattr(b, f) for f in _COLS}
    if kind == "garbage":
        return kind, draw(st.binary(max_size=300)), 0
    if kind == "random_msgpack":
        return kind, msgpack.packb(draw(any_msgpack), use_bin_type=True), 0
    if kind == "truncated":
        raw = b.to_bytes()
        return kind, raw[: draw(st.integers(0, max(0, len(raw) - 1)))], 0
    if kind == "drop_column":  # every column but account_score (a record from an older worker has none)
        del cols[draw(st.sampled_from([c for c in _COLS if c != "account_score"]))]
    elif kind == "ragged":
        f = draw(st.sampled_from(_COLS))
        cols[f] = cols[f][:-1] if n else (np.zeros(1) if isinstance(cols[f], np.ndarray) else ["x"])
    elif kind == "wrong_column":
        f = draw(st.sampled_from(_COLS))
        v = draw(st.sampled_from([5, "abc", None, {"a": 1}, [1.5] * n, np.zeros(n, np.float32),
                                  np.zeros((n, 2)), [None] * n, [b"x"] * n, np.array(["x"] * n)]))
        harmless = ((f in ("ts", "record_ts", "account_score") and isinstance(v, np.ndarray) and v.ndim == 1
                     and v.dtype.kind == "f")
                    or (f == "account_score" and v is None)  # as from an older worker: zeros
                    or (f in OPT_STR_COLUMNS and isinstance(v, list) and all(x is None for x in v)))
        if harmless:  # a float32 time column or an all-None optional column is still a valid batch
            v = np.zeros((n, 2))
        cols[f] = v
    elif kind == "bad_values":
        f = draw(st.sampled_from(["ts", "ms_played", "shuffle", "event_id", "country", "track_duration_ms",
                                  "account_score"]))
        if n == 0:
            kind = "valid"
        elif f == "ts":
            cols["ts"] = cols["ts"].copy()
            cols["ts"][0] = draw(st.sampled_from([np.nan, np.inf, -1e300, 1e300, 0.0]))
        elif f in ("ms_played", "track_duration_ms"):
            cols[f] = cols[f].copy()
            cols[f][0] = draw(st.sampled_from([-5, MAX_MS_PLAYED + 1, 2**62]))
        elif f == "shuffle":
            cols["shuffle"] = cols["shuffle"].copy()
            cols["shuffle"][0] = 7
        elif f == "event_id":
            cols["event_id"] = [""] + cols["event_id"][1:]
        elif f == "country":
            cols["country"] = ["germany"] + cols["country"][1:]
        elif f == "account_score":
            cols[f] = cols[f].copy()
            cols[f][0] = draw(st.sampled_from([np.nan, np.inf, -1.0]))
    try:
        raw = dumps(cols)
    except TypeError:  # unserialisable mutation: send the good batch instead
        kind, raw = "valid", b.to_bytes()
    if kind == "repeat":
        return kind, raw, n
    return kind, raw, n if kind == "valid" else -1


def test_forwarded_decoder_fuzz():
    count = {"records": 0, "rows": 0}

    @FUZZ
    @given(st.lists(forwarded_spec(), min_size=13, max_size=20))
    def run(specs):
        dec = ForwardedDecoder(max_record_bytes=64 * 1024, dedupe=Dedupe(3600, 1000, 100_000))
        recs = [Record("plays.by_artist", 1, i, None, raw, 0.0) for i, (_, raw, _) in enumerate(specs)]
        # re-send the first valid batch: a crash replay on the account stage
        firsts = [i for i, (k, _, n) in enumerate(specs) if k == "valid" and n > 0]
        if firsts:
            recs.append(Record("plays.by_artist", 1, len(recs), None, specs[firsts[0]][1], 0.0))
        batch, dead, dups = dec.decode(recs)
        count["records"] += len(recs)
        dead_offsets = {d.record.offset for d in dead}
        for d in dead:
            _check_dead(d)
            assert d.reason.value in {"schema_error", "oversized"}
        for i, (kind, raw, n) in enumerate(specs):
            if kind in ("valid", "repeat"):
                assert i not in dead_offsets, (kind, raw)
            elif kind in ("drop_column", "ragged", "wrong_column", "bad_values"):
                assert i in dead_offsets, (kind, raw)
        if firsts:
            assert len(recs) - 1 not in dead_offsets
            assert dups >= specs[firsts[0]][2]
        events = _rows_as_events(batch)  # every accepted row is a valid PlayEvent
        assert len({e.event_id for e in events}) == len(events)
        assert batch.ts.dtype == np.float64 and batch.ms_played.dtype == np.int64
        assert batch.shuffle.dtype == np.int8 and np.all(np.isfinite(batch.record_ts))
        count["rows"] += len(batch)

    run()
    assert count["records"] >= RECORDS_PER_SCHEMA and count["rows"] > 1000, count
