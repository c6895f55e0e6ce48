"""Adapters from listening-history exports to PlayGuard plays.

Three source formats are read into a columnar :class:`~stream.batch.PlayBatch`
(1.8M real plays fit in a few hundred MB this way, where one pydantic object per
play would take several GB). :func:`to_events` turns a batch into validated
:class:`~stream.schemas.PlayEvent` objects when needed.

* **Spotify basic export** (``user_id, end_time, artist_name, track_name,
  ms_played``): ``end_time`` is UTC with minute resolution and marks the end of
  the play. There is no track id: tracks are keyed on (artist, track name) as
  ``"<artist>::<track>"``, and the artist id is the artist name.
* **Spotify extended export** (``user_id, ts, platform, ms_played,
  conn_country, track_name, artist_name, album_name, spotify_track_uri,
  reason_start, reason_end, shuffle, skipped, offline, incognito_mode``): ``ts``
  is UTC ISO-8601, end of play. ``conn_country`` ``ZZ`` becomes null.
* **Last.fm 1K** TSV (``userid, timestamp, artid, artname, traid, traname``,
  no header): a scrobble's timestamp is the *start* of playback and there is
  no play length. ``ms_played`` is estimated as the gap to the same user's next
  scrobble when that gap is under 10 min, else 180,000 ms (3 min), and ``ts``
  is start + ``ms_played`` (end of play, as PlayGuard defines it). Ids are the
  MusicBrainz ids when present, else names.

Plays with no identity ("Unknown Artist" / "Unknown Track": local files) keep
the literal ids ``Unknown Artist`` / ``Unknown Track`` so that the models can
keep them out of track and artist state (:data:`stream.batch.UNKNOWN_IDS`).

``event_id`` is derived deterministically (:func:`stream.schemas.play_event_id`)
from account, end time, track and ``ms_played``; exact repeats within one file
get an occurrence number, so the same file always yields the same ids.

Sources: the Spotify "Download your data" formats; the Last.fm 1K dataset
(Celma, 2010).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from stream.batch import PlayBatch
from stream.schemas import PlayEvent, play_event_id

UNKNOWN_ARTIST = "Unknown Artist"
UNKNOWN_TRACK = "Unknown Track"
LASTFM_DEFAULT_MS = 180_000
LASTFM_MAX_GAP_MS = 600_000


class DataMissingError(FileNotFoundError):
    """Raised when a real-data file or folder is absent; the message says what
    is needed and where to get it."""


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise DataMissingError(
            f"listening data not found: {path}. Set PLAYGUARD_DATA_DIR (or pass --data-dir) "
            "to a folder holding listening/spotify_basic.csv.gz and listening/spotify_extended.csv.gz "
            "(see ../shared/data/README.md)."
        )
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _intern(cache: dict, s: str) -> str:
    v = cache.get(s)
    if v is None:
        cache[s] = s
        return s
    return v


def _track_key(artist: str, track: str) -> str:
    if not track or track == UNKNOWN_TRACK:
        return UNKNOWN_TRACK
    return f"{artist or UNKNOWN_ARTIST}::{track}"


def _parse_bool(s: str) -> int:
    s = s.strip().lower()
    if s in ("true", "1"):
        return 1
    if s in ("false", "0"):
        return 0
    return -1


def _event_ids(accounts, ts_iso, tracks, ms) -> list[str]:
    """Same ids as :func:`play_event_id` with ``ts`` given as the ISO string,
    inlined for speed (1.7M rows)."""
    seen: dict = {}
    out = []
    sha = hashlib.sha256
    for a, t, k, m in zip(accounts, ts_iso, tracks, ms):
        text = f"play\x00{a}\x00{t}\x00{k}\x00{m}\x00"
        n = seen.get(text, 0)
        seen[text] = n + 1
        if n:
            text += str(n)
        out.append(sha(text.encode("utf-8")).hexdigest()[:32])
    return out


def _batch(accounts, ts, tracks, artists, ms, *, n, extra: dict | None = None) -> PlayBatch:
    ts = np.asarray(ts, np.float64)
    ms = np.asarray(ms, np.int64)
    ts_iso = np.datetime_as_string((ts * 1e3).astype("datetime64[ms]"), unit="ms").tolist()
    none = [None] * n
    cols = dict(
        event_id=_event_ids(accounts, ts_iso, tracks, ms.tolist()),
        ts=ts,
        account_id=accounts,
        track_id=tracks,
        artist_id=artists,
        ms_played=ms,
        track_duration_ms=np.full(n, -1, np.int64),
        platform=none,
        device_id=list(none),
        ip=list(none),
        country=list(none),
        reason_start=list(none),
        reason_end=list(none),
        shuffle=np.full(n, -1, np.int8),
        skipped=np.full(n, -1, np.int8),
        offline=np.full(n, -1, np.int8),
        record_ts=ts.copy(),
    )
    if extra:
        cols.update(extra)
    return PlayBatch(**cols).validate()


def load_spotify_basic(path: Path | str) -> PlayBatch:
    """Read a Spotify basic export (CSV, optionally gzipped) into a batch.

    Args:
        path: CSV with columns ``user_id, end_time, artist_name, track_name,
            ms_played`` (``end_time`` UTC, minute resolution).

    Returns:
        A :class:`PlayBatch` of n plays in file order; ``ts`` in Unix seconds.

    Raises:
        DataMissingError: if the file is absent.
        ValueError: on a missing column or an unparsable row (names the line).
    """
    path = Path(path)
    cache: dict = {}
    accounts, ends, tracks, artists, ms = [], [], [], [], []
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        need = ["user_id", "end_time", "artist_name", "track_name", "ms_played"]
        if not set(need) <= set(header):
            raise ValueError(f"{path}: not a Spotify basic export (need columns {need})")
        iu, ie, ia, it, im = (header.index(c) for c in need)
        tkeys: dict = {}
        for line, row in enumerate(reader, start=2):
            try:
                artist = row[ia] or UNKNOWN_ARTIST
                accounts.append(_intern(cache, row[iu]))
                ends.append(row[ie])
                tk = (artist, row[it])
                track = tkeys.get(tk)
                if track is None:
                    track = tkeys[tk] = _track_key(artist, row[it])
                tracks.append(track)
                artists.append(_intern(cache, artist))
                ms.append(int(row[im]))
            except (IndexError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: bad row: {exc}") from exc
    ts = np.array(ends, dtype="datetime64[m]").astype("datetime64[s]").astype(np.int64).astype(np.float64)
    return _batch(accounts, ts, tracks, artists, ms, n=len(accounts))


def load_spotify_extended(path: Path | str) -> PlayBatch:
    """Read a Spotify extended streaming-history export (CSV, optionally gzipped).

    Keeps ``platform``, ``conn_country`` (as ``country``; ``ZZ`` -> null),
    ``reason_start``, ``reason_end``, ``shuffle``, ``skipped``, ``offline``.
    The track id is ``spotify_track_uri`` when present.

    Raises:
        DataMissingError: if the file is absent.
        ValueError: on a missing column or an unparsable row (names the line).
    """
    path = Path(path)
    cache: dict = {}
    accounts, ends, tracks, artists, ms = [], [], [], [], []
    platform, country, rs, re_, shuffle, skipped, offline = [], [], [], [], [], [], []
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        need = {"user_id", "ts", "ms_played", "track_name", "artist_name", "spotify_track_uri"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: not a Spotify extended export (need columns {sorted(need)})")
        for line, row in enumerate(reader, start=2):
            try:
                artist = row["artist_name"] or UNKNOWN_ARTIST
                uri = row.get("spotify_track_uri") or ""
                accounts.append(_intern(cache, row["user_id"]))
                ends.append(row["ts"].rstrip("Z"))
                tracks.append(_intern(cache, uri if uri else _track_key(artist, row["track_name"])))
                artists.append(_intern(cache, artist))
                ms.append(int(row["ms_played"]))
                platform.append(_intern(cache, row.get("platform") or "") or None)
                c = (row.get("conn_country") or "").strip()
                country.append(None if c in ("", "ZZ") else _intern(cache, c))
                rs.append(_intern(cache, row.get("reason_start") or "") or None)
                re_.append(_intern(cache, row.get("reason_end") or "") or None)
                shuffle.append(_parse_bool(row.get("shuffle") or ""))
                skipped.append(_parse_bool(row.get("skipped") or ""))
                offline.append(_parse_bool(row.get("offline") or ""))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: bad row: {exc}") from exc
    ts = np.array(ends, dtype="datetime64[s]").astype(np.int64).astype(np.float64)
    n = len(accounts)
    return _batch(
        accounts, ts, tracks, artists, ms, n=n,
        extra=dict(
            platform=platform, country=country, reason_start=rs, reason_end=re_,
            shuffle=np.asarray(shuffle, np.int8), skipped=np.asarray(skipped, np.int8),
            offline=np.asarray(offline, np.int8),
        ),
    )


def load_lastfm_1k(path: Path | str) -> PlayBatch:
    """Read the Last.fm 1K TSV format (``userid, timestamp, artid, artname,
    traid, traname``; no header; scrobble timestamp = start of playback).

    ``ms_played`` is estimated (see module docstring); ``ts`` is the end of play.

    Raises:
        DataMissingError: if the file is absent.
        ValueError: on a row with fewer than 6 fields (names the line).
    """
    path = Path(path)
    cache: dict = {}
    rows = []
    with _open_text(path) as fh:
        for line, raw in enumerate(fh, start=1):
            raw = raw.rstrip("\r\n")
            if not raw:
                continue
            parts = raw.split("\t")
            if len(parts) < 6:
                raise ValueError(f"{path}:{line}: expected 6 tab-separated fields, got {len(parts)}")
            user, stamp, artid, artname, traid, traname = parts[:6]
            artist = artid or artname or UNKNOWN_ARTIST
            track = traid or _track_key(artname, traname)
            rows.append((_intern(cache, user), stamp.rstrip("Z"), _intern(cache, track), _intern(cache, artist)))
    if not rows:
        return _batch([], [], [], [], [], n=0)
    start = np.array([r[1] for r in rows], dtype="datetime64[s]").astype(np.int64)
    users = [r[0] for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (users[i], start[i]))
    ms = np.full(len(rows), LASTFM_DEFAULT_MS, np.int64)
    for a, b in zip(order, order[1:]):
        if users[a] == users[b]:
            gap_ms = int(start[b] - start[a]) * 1000
            if 0 < gap_ms < LASTFM_MAX_GAP_MS:
                ms[a] = gap_ms
    ts = start.astype(np.float64) + ms / 1000.0
    return _batch(users, ts, [r[2] for r in rows], [r[3] for r in rows], ms, n=len(rows))


SOURCES = {
    "spotify_basic.csv.gz": load_spotify_basic,
    "spotify_extended.csv.gz": load_spotify_extended,
}


def load_listening(listening_dir: Path | str, max_accounts: int | None = None, seed: int = 0) -> PlayBatch:
    """Read every known export in ``listening_dir`` into one batch.

    Args:
        listening_dir: folder with ``spotify_basic.csv.gz`` and/or
            ``spotify_extended.csv.gz`` (and any ``*.tsv``/``*.tsv.gz`` in
            Last.fm 1K format).
        max_accounts: keep a seeded random subsample of this many accounts
            (for tests); None keeps all.
        seed: subsample seed.

    Raises:
        DataMissingError: if the folder holds no known export.
    """
    d = Path(listening_dir)
    batches = [fn(d / name) for name, fn in SOURCES.items() if (d / name).exists()]
    batches += [load_lastfm_1k(p) for p in sorted(d.glob("*.tsv*"))]
    if not batches:
        raise DataMissingError(
            f"no listening export in {d}: expected spotify_basic.csv.gz or spotify_extended.csv.gz. "
            "Set PLAYGUARD_DATA_DIR or pass --data-dir (see ../shared/data/README.md)."
        )
    batch = PlayBatch.concat(batches)
    if max_accounts is not None:
        accounts = sorted(set(batch.account_id))
        rng = np.random.default_rng(seed)
        keep = set(rng.choice(accounts, size=min(max_accounts, len(accounts)), replace=False).tolist())
        batch = batch.take(np.fromiter((a in keep for a in batch.account_id), bool, len(batch)))
    return batch


def to_events(batch: PlayBatch) -> Iterator[PlayEvent]:
    """Validated :class:`PlayEvent` objects for each row of ``batch``.

    Raises:
        pydantic.ValidationError: on a row that breaks the schema.
    """
    from datetime import UTC, datetime

    for row in batch.to_dicts():
        row.pop("record_ts", None)
        row["ts"] = datetime.fromtimestamp(row["ts"], UTC)
        yield PlayEvent.model_validate(row)
