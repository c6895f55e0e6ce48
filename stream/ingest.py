"""Decoding of input records: validation, dead-letter reasons, lateness, dedupe.

Every record read from Kafka passes through here before any model sees it.
Nothing is lost: a record either becomes a valid event, or a
:class:`DeadLetter` carrying its original bytes and one reason from the fixed
set of :class:`~stream.schemas.DeadLetterReason`, or is counted as a duplicate.

Time rules (CONVENTIONS.md, "Time"), checked on ``plays`` only:

* ``ts`` before 2000-01-01: ``ts_out_of_range``;
* ``ts`` after the wall clock plus ``max_clock_skew_s``: ``ts_in_future``;
* ``ts`` before the partition's watermark (largest ``ts`` so far minus
  ``allowed_lateness_s``): ``too_late``.

The watermark uses the stream's own clock, so replayed history is accepted.

Dedupe (:class:`Dedupe`) keeps 64-bit hashes of ``event_id`` in event-time
buckets; memory is bounded by ``dedupe_max_ids`` and the number of buckets.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Callable, Sequence

import msgspec
import numpy as np
import xxhash
from pydantic import ValidationError

from stream.batch import BOOL_COLUMNS, OPT_STR_COLUMNS, STR_COLUMNS, PlayBatch
from stream.schemas import (
    MAX_MS_PLAYED,
    MIN_TS,
    AudioIngested,
    DeadLetterReason,
    PlayEvent,
)

_MIN_TS_S = MIN_TS.timestamp()
#: 9999-12-31T23:59:59Z, the largest time a ``datetime`` (hence a PlayEvent) holds.
_MAX_TS_S = 253402300799.0
_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}
_RANGE_FIELDS = {"ms_played", "track_duration_ms"}


@dataclass
class Record:
    """One raw Kafka record as the decoders see it.

    Attributes:
        topic, partition, offset: its position.
        key, value: raw bytes (``value`` may be None for a tombstone).
        timestamp: record timestamp (CreateTime), Unix seconds.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float


@dataclass
class DeadLetter:
    """A rejected record with its reason (fixed set) and free-text detail."""

    record: Record
    reason: DeadLetterReason
    detail: str

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers: ``reason``, ``detail``, ``source_topic``,
        ``partition``, ``offset`` (CONVENTIONS.md)."""
        r = self.record
        return [
            ("reason", self.reason.value.encode()),
            ("detail", self.detail.encode("utf-8", "replace")[:1024]),
            ("source_topic", r.topic.encode()),
            ("partition", str(r.partition).encode()),
            ("offset", str(r.offset).encode()),
        ]


def _iso(ts: float) -> str:
    """ISO 8601 UTC spelling of Unix seconds ``ts`` (dead-letter details)."""
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return repr(ts)


log = logging.getLogger("playguard.ingest")

#: Name of the event-id hash, stored with the dedupe memory in snapshots.
HASH_NAME = "xxh3_64"


def _hash64(event_id: str) -> int:
    """64-bit XXH3 of the UTF-8 ``event_id`` (xxhash library; 8x cheaper
    than the BLAKE2b it replaced, which took 5-9% of a stage's CPU)."""
    return xxhash.xxh3_64_intdigest(event_id.encode("utf-8"))


class Dedupe:
    """Bounded memory of seen ``event_id``s, bucketed by event time.

    Args:
        bucket_s: bucket width, seconds of event time.
        buckets: buckets kept (the newest ones); older buckets are dropped.
        max_ids: cap on ids held in total; past it the oldest bucket is
            dropped, and a single bucket that alone exceeds it is forgotten
            (``overflows_`` counts these), so memory never exceeds
            ``max_ids`` ids. Size the buckets so that one holds fewer than
            ``max_ids`` ids at the partition's peak rate (the defaults,
            60 s and 2M ids, allow 33k plays/s per partition).

    Memory: 8 bytes of hash per id in a Python set (about 60 B with overhead).
    A 64-bit hash collision would drop one genuine event in about 2^64 / n^2:
    negligible at these sizes.

    Example:
        >>> d = Dedupe(bucket_s=3600, buckets=2)
        >>> d.seen("e1", 10.0), d.seen("e1", 10.0), d.seen("e2", 10.0)
        (False, True, False)
    """

    def __init__(self, bucket_s: int = 3600, buckets: int = 3, max_ids: int = 2_000_000):
        self.bucket_s = bucket_s
        self.buckets = buckets
        self.max_ids = max_ids
        self.sets_: OrderedDict[int, set[int]] = OrderedDict()
        self.size_ = 0
        self.overflows_ = 0

    def contains(self, event_id: str, ts: float) -> bool:
        """True if ``event_id`` (with event time ``ts``, Unix s) was recorded."""
        return self.contains_hash(_hash64(event_id), ts)

    def contains_hash(self, h: int, ts: float) -> bool:
        """:meth:`contains` for a precomputed ``_hash64(event_id)``."""
        s = self.sets_.get(int(ts // self.bucket_s))
        return s is not None and h in s

    def seen(self, event_id: str, ts: float) -> bool:
        """True if ``event_id`` was seen (then nothing changes); else record it.

        Args:
            event_id: the event id.
            ts: its event time, Unix seconds.
        """
        h = _hash64(event_id)
        if self.contains_hash(h, ts):
            return True
        self.add_hash(h, ts)
        return False

    def add(self, event_id: str, ts: float) -> None:
        """Record ``event_id`` with event time ``ts`` (Unix s)."""
        self.add_hash(_hash64(event_id), ts)

    def add_hash(self, h: int, ts: float) -> None:
        """:meth:`add` for a precomputed ``_hash64(event_id)``."""
        b = int(ts // self.bucket_s)
        s = self.sets_.get(b)
        if s is None:
            s = self.sets_[b] = set()
            if len(self.sets_) > 1 and b < next(reversed(self.sets_)):
                self.sets_ = OrderedDict(sorted(self.sets_.items()))
        if h not in s:
            s.add(h)
            self.size_ += 1
        while len(self.sets_) > self.buckets or (self.size_ > self.max_ids and len(self.sets_) > 1):
            _, old = self.sets_.popitem(last=False)
            self.size_ -= len(old)
        if self.size_ > self.max_ids:
            # one bucket alone holds more than max_ids (live traffic puts
            # every event of a partition in the current bucket): forget it
            # rather than grow without bound
            self.sets_ = OrderedDict([(b, {h})])
            self.size_ = 1
            self.overflows_ += 1

    def state_dict(self) -> dict:
        """Buckets as uint64 arrays, and the hash's name."""
        return {
            "hash": HASH_NAME,
            "buckets": [[b, np.fromiter(s, np.uint64, len(s))] for b, s in self.sets_.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`. A memory written with another
        hash (snapshots before ``hash`` was stored used BLAKE2b) cannot
        match new ids: it is dropped, with a warning (until the buckets it
        spanned pass, a record re-read after the restore can count twice)."""
        if state.get("hash") != HASH_NAME:
            log.warning("dedupe memory written with hash %r, not %r: not restored",
                        state.get("hash", "blake2b"), HASH_NAME)
            self.sets_, self.size_ = OrderedDict(), 0
            return
        self.sets_ = OrderedDict((int(b), set(a.tolist())) for b, a in state["buckets"])
        self.size_ = sum(len(s) for s in self.sets_.values())


class _PlayWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The common, canonical spelling of a :class:`PlayEvent` (the fast path).

    Same fields and limits as :class:`PlayEvent` (msgspec counts string
    lengths in code points, as pydantic does), but stricter: ``ts`` must be an RFC 3339
    string with a time zone (parsed by msgspec in C; a naive time or a
    number goes to pydantic, which reads it as UTC), flags must be JSON booleans,
    integers JSON integers. A record this rejects is not dead-lettered on that
    ground: it is decoded again by :class:`PlayEvent` (pydantic), which
    accepts the looser spellings and gives the dead-letter reason.
    Instances are not tracked by the garbage collector (``gc=False``: they
    hold only strings, numbers and a datetime, so they cannot form cycles).
    """

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    ts: Annotated[datetime, msgspec.Meta(tz=True)]
    account_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    track_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    artist_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    ms_played: Annotated[int, msgspec.Meta(ge=0, le=MAX_MS_PLAYED)]
    track_duration_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_MS_PLAYED)] | None = None
    platform: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    device_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    ip: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    country: str | None = None
    reason_start: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    reason_end: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    shuffle: bool | None = None
    skipped: bool | None = None
    offline: bool | None = None


#: Until 2026-11-22 ``ts`` was a string matched by a regular expression and
#: parsed by ``datetime.fromisoformat``: 4.6 of the 8.8 us per play of
#: decoding (the regex alone 4.2 us); msgspec's own RFC 3339 parser takes 0.3.
_WIRE_DECODER = msgspec.json.Decoder(_PlayWire)


def _fast_play(value: bytes) -> tuple[_PlayWire, float] | None:
    """``(wire record, ts in Unix s)`` when ``value`` is a well-formed play in
    the canonical spelling, else None (then :class:`PlayEvent` decides)."""
    try:
        w = _WIRE_DECODER.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    ts = w.ts.timestamp()
    c = w.country
    if c is not None:
        if c == "ZZ" or c == "":
            w.country = None
        elif not (len(c) == 2 and c.isascii() and c.isalpha() and c.isupper()):
            return None
    return w, ts


def _wire_batch(rows: list, ts: list[float], record_ts: list[float]) -> PlayBatch:
    """Columnar :class:`PlayBatch` of decoded plays (``_PlayWire`` or
    :class:`PlayEvent`, both with the same attribute names; ``ts`` in Unix s)."""
    return PlayBatch.from_events(rows, record_ts=record_ts, ts=ts)


def _classify_validation(exc: ValidationError, value: bytes) -> tuple[DeadLetterReason, str]:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as ue:
            return DeadLetterReason.invalid_utf8, f"invalid UTF-8 at byte {ue.start}"
        return DeadLetterReason.invalid_json, first.get("msg", "invalid JSON")[:300]
    for e in errors:
        loc = e.get("loc") or ()
        if loc and loc[0] in _RANGE_FIELDS and e["type"] in _RANGE_ERRORS:
            return DeadLetterReason.value_out_of_range, f"{loc[0]}: {e['msg']}"
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc') or ()) or '<root>'}: {e['msg']}" for e in errors[:5]
    )
    return DeadLetterReason.schema_error, detail[:1000]


class PlaysDecoder:
    """Decodes ``plays`` records of one partition into a :class:`PlayBatch`.

    Holds the partition's watermark and dedupe memory (both part of the
    partition's snapshot).

    Args:
        max_record_bytes: larger values are ``oversized``.
        allowed_lateness_s: lateness allowed behind the watermark, seconds.
        max_clock_skew_s: tolerance for future timestamps, seconds.
        dedupe: the partition's :class:`Dedupe`.
        clock: wall clock, Unix seconds (injectable for tests).
    """

    def __init__(
        self,
        max_record_bytes: int = 64 * 1024,
        allowed_lateness_s: float = 3600.0,
        max_clock_skew_s: float = 300.0,
        dedupe: Dedupe | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.max_record_bytes = max_record_bytes
        self.allowed_lateness_s = allowed_lateness_s
        self.max_clock_skew_s = max_clock_skew_s
        self.dedupe = dedupe or Dedupe()
        self.clock = clock
        self.max_ts_: float | None = None

    @property
    def watermark(self) -> float | None:
        """Largest ``ts`` so far minus the allowed lateness (Unix s), or None."""
        return None if self.max_ts_ is None else self.max_ts_ - self.allowed_lateness_s

    def decode(self, records: Sequence[Record]) -> tuple[PlayBatch, list[DeadLetter], int]:
        """Decode records in offset order.

        Returns:
            ``(batch, dead_letters, duplicates)``: the valid, new plays as a
            batch (``record_ts`` from each record's timestamp), the rejected
            records, and the number of duplicate ``event_id``s dropped.
        """
        rows: list = []
        tss: list[float] = []
        rts: list[float] = []
        dead: list[DeadLetter] = []
        dups = 0
        now = self.clock()
        for rec in records:
            v = rec.value
            if v is None:
                dead.append(DeadLetter(rec, DeadLetterReason.schema_error, "empty value (tombstone)"))
                continue
            if len(v) > self.max_record_bytes:
                dead.append(DeadLetter(rec, DeadLetterReason.oversized,
                                       f"{len(v)} bytes > limit {self.max_record_bytes}"))
                continue
            fast = _fast_play(v)
            if fast is not None:
                ev, ts = fast
            else:
                try:
                    ev = PlayEvent.model_validate_json(v)
                except ValidationError as exc:
                    reason, detail = _classify_validation(exc, v)
                    dead.append(DeadLetter(rec, reason, detail))
                    continue
                ts = ev.ts.timestamp()
            h = _hash64(ev.event_id)
            if self.dedupe.contains_hash(h, ts):
                dups += 1
                continue
            if ts < _MIN_TS_S:
                dead.append(DeadLetter(rec, DeadLetterReason.ts_out_of_range, f"ts {_iso(ts)} before 2000-01-01"))
                continue
            if ts > now + self.max_clock_skew_s:
                dead.append(DeadLetter(rec, DeadLetterReason.ts_in_future,
                                       f"ts {_iso(ts)} is {ts - now:.0f} s ahead of the wall clock"))
                continue
            wm = self.watermark
            if wm is not None and ts < wm:
                dead.append(DeadLetter(rec, DeadLetterReason.too_late,
                                       f"ts {_iso(ts)} is {wm - ts:.0f} s behind the partition watermark"))
                continue
            self.dedupe.add_hash(h, ts)
            if self.max_ts_ is None or ts > self.max_ts_:
                self.max_ts_ = ts
            rows.append(ev)
            tss.append(ts)
            rts.append(rec.timestamp)
        return _wire_batch(rows, tss, rts), dead, dups

    def state_dict(self) -> dict:
        """Watermark and dedupe memory."""
        return {"max_ts": self.max_ts_, "dedupe": self.dedupe.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.max_ts_ = state["max_ts"]
        self.dedupe.load_state_dict(state["dedupe"])


#: Field length limits of :class:`PlayEvent`, applied to forwarded columns.
_STR_LIMITS = {"event_id": 256, "account_id": 256, "track_id": 512, "artist_id": 512}
_OPT_LIMITS = {"platform": 256, "device_id": 256, "ip": 64, "reason_start": 64, "reason_end": 64}


def _int_column(b: PlayBatch, name: str, dtype, lo: int, hi: int) -> None:
    v = getattr(b, name)
    if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype.kind not in "iu":
        raise ValueError(f"column {name}: expected a 1-D integer array")
    if len(v) and (int(v.min()) < lo or int(v.max()) > hi):
        raise ValueError(f"column {name}: values outside [{lo}, {hi}]")
    setattr(b, name, v.astype(dtype, copy=False))


def check_forwarded_batch(b: PlayBatch) -> PlayBatch:
    """Validate a :class:`PlayBatch` decoded from ``plays.by_artist`` bytes.

    A forwarded batch comes from our own account stage, but the topic is
    writable by any producer with access, so every column is checked against
    the :class:`PlayEvent` constraints before a model sees it: string columns
    hold non-empty ``str`` within the schema's lengths, optional ones ``str`` or
    None, ``country`` is ISO 3166-1 alpha-2 or None, ``ts`` and ``record_ts``
    are finite Unix seconds (``ts`` from 2000-01-01 to year 9999),
    ``account_score`` is finite and >= 0 (nats), ``ms_played``
    and ``track_duration_ms`` lie in [0, 24 h] ms (-1: unknown duration), and
    the tri-state flags are int8 in {-1, 0, 1}. Integer columns are cast to
    their canonical dtypes.

    Args:
        b: the decoded batch (n rows, columns as in :mod:`stream.batch`).

    Returns:
        ``b`` itself, with canonical dtypes.

    Raises:
        ValueError: naming the first column that breaks a rule.
    """
    n = len(b)
    # whole-column checks in C (map, set, min, max) rather than one Python
    # test per row: these checks took 6% of the catalog stage's CPU
    for name in STR_COLUMNS:
        col, lim = getattr(b, name), _STR_LIMITS[name]
        if not isinstance(col, list) or (col and (set(map(type, col)) != {str} or min(map(len, col)) < 1
                                                   or max(map(len, col)) > lim)):
            raise ValueError(f"column {name}: expected non-empty strings of at most {lim} characters")
    for name in OPT_STR_COLUMNS:
        col = getattr(b, name)
        if not isinstance(col, list):
            raise ValueError(f"column {name}: expected a list")
        if not set(map(type, col)) <= {str, type(None)}:
            bad = True
        elif name == "country":
            bad = any(x is not None and not (len(x) == 2 and x.isascii() and x.isalpha() and x.isupper())
                      for x in set(col))
        else:
            bad = max(map(len, filter(None, col)), default=0) > _OPT_LIMITS[name]
        if bad:
            raise ValueError(f"column {name}: expected strings within the schema's limits or None")
    for name in ("ts", "record_ts"):
        v = getattr(b, name)
        if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype.kind not in "fiu":
            raise ValueError(f"column {name}: expected a 1-D numeric array")
        v = v.astype(np.float64, copy=False)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"column {name}: non-finite time")
        setattr(b, name, v)
    if n and (b.ts.min() < _MIN_TS_S or b.ts.max() > _MAX_TS_S):
        raise ValueError("column ts: time outside 2000-01-01 .. 9999-12-31")
    v = b.account_score
    if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype.kind not in "fiu":
        raise ValueError("column account_score: expected a 1-D numeric array")
    v = v.astype(np.float32, copy=False)
    if n and not (np.all(np.isfinite(v)) and v.min() >= 0):
        raise ValueError("column account_score: expected finite evidence >= 0 nats")
    b.account_score = v
    _int_column(b, "ms_played", np.int64, 0, MAX_MS_PLAYED)
    _int_column(b, "track_duration_ms", np.int64, -1, MAX_MS_PLAYED)
    for name in BOOL_COLUMNS:
        _int_column(b, name, np.int8, -1, 1)
    return b.validate()


class ForwardedDecoder:
    """Decodes ``plays.by_artist`` records (msgpack column batches) of one
    partition, dropping repeated ``event_id``s (a re-processed account-stage
    batch after a crash is forwarded again). No lateness check: records from
    several partitions interleave on internal topics (CONVENTIONS.md)."""

    def __init__(self, max_record_bytes: int = 16 * 1024 * 1024, dedupe: Dedupe | None = None):
        self.max_record_bytes = max_record_bytes
        self.dedupe = dedupe or Dedupe()

    def decode(self, records: Sequence[Record]) -> tuple[PlayBatch, list[DeadLetter], int]:
        """Returns ``(batch, dead_letters, duplicates)`` as :meth:`PlaysDecoder.decode`."""
        parts: list[PlayBatch] = []
        dead: list[DeadLetter] = []
        dups = 0
        for rec in records:
            if rec.value is None or len(rec.value) > self.max_record_bytes:
                dead.append(DeadLetter(rec, DeadLetterReason.oversized if rec.value else DeadLetterReason.schema_error,
                                       "forwarded batch missing or too large"))
                continue
            try:
                b = check_forwarded_batch(PlayBatch.from_bytes(rec.value))
            except (ValueError, TypeError, AttributeError) as exc:
                dead.append(DeadLetter(rec, DeadLetterReason.schema_error, str(exc)[:500]))
                continue
            keep = np.fromiter(
                (not self.dedupe.seen(e, t) for e, t in zip(b.event_id, b.ts.tolist())), bool, len(b)
            )
            dups += int((~keep).sum())
            parts.append(b if keep.all() else b.take(keep))
        return PlayBatch.concat(parts), dead, dups

    def state_dict(self) -> dict:
        """Dedupe memory."""
        return {"dedupe": self.dedupe.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.dedupe.load_state_dict(state["dedupe"])


def decode_audio_notice(rec: Record, max_record_bytes: int = 64 * 1024) -> AudioIngested | DeadLetter:
    """Decode one ``audio.ingested`` record into :class:`AudioIngested`, or a
    :class:`DeadLetter` (``oversized``, ``invalid_utf8``, ``invalid_json``,
    ``schema_error``)."""
    v = rec.value
    if v is None:
        return DeadLetter(rec, DeadLetterReason.schema_error, "empty value (tombstone)")
    if len(v) > max_record_bytes:
        return DeadLetter(rec, DeadLetterReason.oversized, f"{len(v)} bytes > limit {max_record_bytes}")
    try:
        return AudioIngested.model_validate_json(v)
    except ValidationError as exc:
        reason, detail = _classify_validation(exc, v)
        return DeadLetter(rec, reason, detail)
