"""Columnar micro-batches of plays: the unit the processing core works on.

A :class:`PlayBatch` holds n plays as parallel columns. It is what
``process(batch)`` takes in the worker, in tests and in ``playguard eval``, and
what the account stage forwards on ``plays.by_artist`` (msgpack columns, one
record per destination partition, CONVENTIONS.md).

Columns (length n):

==================  ============  ==========================================
name                type          meaning
==================  ============  ==========================================
event_id            list[str]     unique event id
ts                  float64       event time, Unix seconds (end of play, UTC)
account_id          list[str]
track_id            list[str]
artist_id           list[str]
ms_played           int64         ms
track_duration_ms   int64         ms, -1 when unknown
platform            list[str|None]
device_id           list[str|None]
ip                  list[str|None]
country             list[str|None] ISO 3166-1 alpha-2
reason_start        list[str|None]
reason_end          list[str|None]
shuffle             int8          1 true, 0 false, -1 unknown
skipped             int8          1 true, 0 false, -1 unknown
offline             int8          1 true, 0 false, -1 unknown
record_ts           float64       Kafka record timestamp of the original
                                  ``plays`` record, Unix seconds
account_score       float32       the account stage's network evidence
                                  (nats: devices, IPs, countries) for the
                                  play's account after the play's
                                  micro-batch; 0 until the account stage
                                  has scored it (not a ``PlayEvent`` field:
                                  forwarded to the catalog stage, which adds
                                  it to its own, never written to files)
==================  ============  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from itertools import chain
from operator import itemgetter
from typing import Iterable, Sequence

import numpy as np

from detectors.serialize import dumps, loads
from stream.schemas import PlayEvent

STR_COLUMNS = ("event_id", "account_id", "track_id", "artist_id")
OPT_STR_COLUMNS = ("platform", "device_id", "ip", "country", "reason_start", "reason_end")
BOOL_COLUMNS = ("shuffle", "skipped", "offline")
#: artist/track ids of plays with no identity (local files); kept out of
#: track and artist state.
UNKNOWN_IDS = frozenset({"Unknown Artist", "Unknown Track", "unknown", ""})


def _tri(v: bool | None) -> int:
    return -1 if v is None else int(v)


@dataclass
class PlayBatch:
    """n plays as columns (see module docstring for every column's type).

    Raises:
        ValueError: from :meth:`validate` if columns differ in length.
    """

    event_id: list[str] = field(default_factory=list)
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    account_id: list[str] = field(default_factory=list)
    track_id: list[str] = field(default_factory=list)
    artist_id: list[str] = field(default_factory=list)
    ms_played: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    track_duration_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    platform: list = field(default_factory=list)
    device_id: list = field(default_factory=list)
    ip: list = field(default_factory=list)
    country: list = field(default_factory=list)
    reason_start: list = field(default_factory=list)
    reason_end: list = field(default_factory=list)
    shuffle: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    offline: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    record_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    account_score: np.ndarray = None  # type: ignore[assignment]  # zeros (n,) when not given

    def __post_init__(self):
        # every constructor but take / concat / from_bytes leaves it out (a
        # forwarded record from an older worker too); one given is checked
        # for length like every column (validate)
        if self.account_score is None:
            self.account_score = np.zeros(len(self.event_id), np.float32)

    def __len__(self) -> int:
        return len(self.event_id)

    def validate(self) -> "PlayBatch":
        """Check that every column has the same length; returns self.

        Raises:
            ValueError: naming the first column whose length differs.
        """
        n = len(self.event_id)
        for f in fields(self):
            if len(getattr(self, f.name)) != n:
                raise ValueError(f"column {f.name} has length {len(getattr(self, f.name))}, expected {n}")
        return self

    @classmethod
    def from_events(
        cls, events: Sequence[PlayEvent], record_ts: Sequence[float] | None = None,
        ts: Sequence[float] | None = None,
    ) -> "PlayBatch":
        """Build a batch from validated :class:`PlayEvent` objects (or any
        objects with the same attribute names, such as the ingest decoder's
        msgspec rows).

        Args:
            events: n events.
            record_ts: n Kafka record timestamps (Unix s); defaults to ``ts``.
            ts: n event times (Unix s) when already parsed; defaults to
                ``e.ts.timestamp()`` of each event.
        """
        if ts is None:
            ts = np.fromiter((e.ts.timestamp() for e in events), np.float64, len(events))
        else:
            ts = np.array(ts, np.float64)
        return cls(
            event_id=[e.event_id for e in events],
            ts=ts,
            account_id=[e.account_id for e in events],
            track_id=[e.track_id for e in events],
            artist_id=[e.artist_id for e in events],
            ms_played=np.fromiter((e.ms_played for e in events), np.int64, len(events)),
            track_duration_ms=np.fromiter(
                (-1 if e.track_duration_ms is None else e.track_duration_ms for e in events),
                np.int64,
                len(events),
            ),
            platform=[e.platform for e in events],
            device_id=[e.device_id for e in events],
            ip=[e.ip for e in events],
            country=[e.country for e in events],
            reason_start=[e.reason_start for e in events],
            reason_end=[e.reason_end for e in events],
            shuffle=np.fromiter((_tri(e.shuffle) for e in events), np.int8, len(events)),
            skipped=np.fromiter((_tri(e.skipped) for e in events), np.int8, len(events)),
            offline=np.fromiter((_tri(e.offline) for e in events), np.int8, len(events)),
            record_ts=ts.copy() if record_ts is None else np.asarray(record_ts, np.float64),
        )

    @classmethod
    def from_dicts(cls, rows: Iterable[dict], record_ts: Sequence[float] | None = None) -> "PlayBatch":
        """Build a batch from plain dicts with the :class:`PlayEvent` fields
        (``ts`` as a datetime or Unix seconds). No schema validation: use
        :class:`PlayEvent` first for untrusted input."""
        rows = list(rows)
        n = len(rows)

        def col(name):
            return [r.get(name) for r in rows]

        def tri(name):
            return np.fromiter((_tri(r.get(name)) for r in rows), np.int8, n)

        ts = np.fromiter(
            (r["ts"] if isinstance(r["ts"], (int, float)) else r["ts"].timestamp() for r in rows),
            np.float64,
            n,
        )
        return cls(
            event_id=col("event_id"),
            ts=ts,
            account_id=col("account_id"),
            track_id=col("track_id"),
            artist_id=col("artist_id"),
            ms_played=np.fromiter((r["ms_played"] for r in rows), np.int64, n),
            track_duration_ms=np.fromiter(
                (-1 if r.get("track_duration_ms") is None else r["track_duration_ms"] for r in rows),
                np.int64,
                n,
            ),
            platform=col("platform"),
            device_id=col("device_id"),
            ip=col("ip"),
            country=col("country"),
            reason_start=col("reason_start"),
            reason_end=col("reason_end"),
            shuffle=tri("shuffle"),
            skipped=tri("skipped"),
            offline=tri("offline"),
            record_ts=ts.copy() if record_ts is None else np.asarray(record_ts, np.float64),
        )

    def take(self, idx: Sequence[int] | np.ndarray) -> "PlayBatch":
        """Rows ``idx`` (int indices or a boolean mask) as a new batch."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        rows = idx.tolist()
        # list columns: operator.itemgetter picks in C (a comprehension over
        # numpy integers cost ~1.5 us per row over the 12 string columns)
        pick = itemgetter(*rows) if len(rows) > 1 else None
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                out[f.name] = v[idx]
            elif pick is not None:
                out[f.name] = list(pick(v))
            else:
                out[f.name] = [v[i] for i in rows]
        return PlayBatch(**out)

    @classmethod
    def concat(cls, batches: Sequence["PlayBatch"]) -> "PlayBatch":
        """Concatenate batches in order."""
        if not batches:
            return cls()
        out = {}
        for f in fields(cls):
            vals = [getattr(b, f.name) for b in batches]
            if isinstance(vals[0], np.ndarray):
                out[f.name] = np.concatenate(vals)
            else:
                out[f.name] = list(chain.from_iterable(vals))
        return cls(**out)

    def to_bytes(self) -> bytes:
        """msgpack of the columns (see :mod:`detectors.serialize`)."""
        return dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "PlayBatch":
        """Inverse of :meth:`to_bytes`.

        Raises:
            ValueError: on malformed bytes or a missing / ragged column.
        """
        d = loads(data)
        try:
            # a record from a worker that predates ``account_score`` has none
            b = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d or f.name != "account_score"})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid batch record: {exc}") from exc
        return b.validate()

    def to_dicts(self) -> list[dict]:
        """Rows as dicts (``ts`` in Unix seconds; tri-state flags as bool/None),
        without ``account_score`` (not a ``PlayEvent`` field)."""
        names = [f.name for f in fields(self) if f.name != "account_score"]
        cols = []
        for name in names:
            v = getattr(self, name)
            if name in BOOL_COLUMNS:
                v = [None if x < 0 else bool(x) for x in v.tolist()]
            elif name == "track_duration_ms":
                v = [None if x < 0 else x for x in v.tolist()]
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            cols.append(v)
        return [dict(zip(names, row)) for row in zip(*cols)]

    def known_identity(self) -> np.ndarray:
        """Boolean mask (n,) of plays whose track and artist have an identity
        (not "Unknown Artist / Unknown Track" local files)."""
        return np.fromiter(
            (a not in UNKNOWN_IDS and t not in UNKNOWN_IDS for a, t in zip(self.artist_id, self.track_id)),
            bool,
            len(self),
        )
