"""Replay of real listening histories into ``plays`` (CONVENTIONS.md, "Replay").

:func:`plan_replay` maps the histories onto one common time window that ends
when the replay starts:

* each account's history is cut into consecutive ``window_days``-long pieces,
  counted back from its newest play; the newest piece is replayed by default,
  and ``all_pieces`` replays every piece as its own account ``<account>#<k>``;
* each piece is shifted by whole days so that its newest play lands in the
  last day before the start: each user's hour of day and own timing are kept,
  and every event time lies in the past;
* ``loop=N`` sends N passes; pass k covers
  ``[start - (N-k+1)·L, start - (N-k)·L)`` and every ``event_id`` gets the
  suffix ``:p<k>``, so no pass is dropped as a duplicate and the same event in
  the same pass always has the same id.

:func:`produce_plays` sends the planned plays in event-time order, keyed by
``account_id``, ``speedup`` times faster than real time (0: as fast as
possible). Each record's timestamp is its send time (CreateTime).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import msgspec
import numpy as np
from aiokafka import AIOKafkaProducer

from stream.batch import BOOL_COLUMNS, OPT_STR_COLUMNS, PlayBatch
from stream.config import Settings

DAY_S = 86400.0


def plan_replay(
    batch: PlayBatch,
    start: float,
    window_days: int = 365,
    all_pieces: bool = False,
    loop: int = 1,
) -> PlayBatch:
    """Shift histories onto the window ending at ``start`` (see module docstring).

    Args:
        batch: plays of any number of accounts, in any order.
        start: replay start, Unix seconds; every planned ``ts`` is before it.
        window_days: L, the piece length in whole days (> 0).
        all_pieces: replay every piece as its own account ``<account>#<k>``.
        loop: number of passes N (>= 1).

    Returns:
        The planned plays, sorted by event time, with rewritten ``ts``,
        ``event_id`` (``:p<k>`` suffix) and, with ``all_pieces``, ``account_id``.

    Raises:
        ValueError: if ``window_days`` < 1 or ``loop`` < 1.
    """
    if window_days < 1:
        raise ValueError("window_days must be at least 1")
    if loop < 1:
        raise ValueError("loop must be at least 1")
    n = len(batch)
    if n == 0:
        return PlayBatch()
    L = window_days * DAY_S
    accounts = np.asarray(batch.account_id, dtype=object)
    uniq, acc_idx = np.unique(accounts, return_inverse=True)
    last = np.full(len(uniq), -np.inf)
    np.maximum.at(last, acc_idx, batch.ts)
    piece = np.floor((last[acc_idx] - batch.ts) / L).astype(np.int64)
    keep = np.ones(n, bool) if all_pieces else piece == 0
    idx = np.flatnonzero(keep)
    piece_k = piece[idx]
    # newest play of each (account, piece)
    key = acc_idx[idx].astype(np.int64) * (int(piece_k.max()) + 1 if len(piece_k) else 1) + piece_k
    ukey, kinv = np.unique(key, return_inverse=True)
    pend = np.full(len(ukey), -np.inf)
    np.maximum.at(pend, kinv, batch.ts[idx])
    shift = np.floor((start - pend) / DAY_S) * DAY_S
    base_ts = batch.ts[idx] + shift[kinv]
    base = batch.take(idx)
    if all_pieces:
        base.account_id = [f"{a}#{k}" for a, k in zip(base.account_id, piece_k.tolist())]
    passes = []
    for k in range(1, loop + 1):
        b = PlayBatch(**{f: getattr(base, f) for f in base.__dataclass_fields__})
        b.ts = base_ts - (loop - k) * window_days * DAY_S
        b.record_ts = b.ts.copy()
        b.event_id = [f"{e}:p{k}" for e in base.event_id]
        passes.append(b)
    out = PlayBatch.concat(passes)
    order = np.argsort(out.ts, kind="stable")
    return out.take(order)


def _iso(ts: np.ndarray) -> list[str]:
    return [s + "Z" for s in np.datetime_as_string((ts * 1e3).astype("datetime64[ms]"), unit="ms").tolist()]


def encode_rows(batch: PlayBatch) -> list[bytes]:
    """JSON ``PlayEvent`` values for each row (None fields omitted).

    Returns:
        n UTF-8 JSON documents, one per play.
    """
    enc = msgspec.json.Encoder()
    ts = _iso(batch.ts)
    ms = batch.ms_played.tolist()
    dur = batch.track_duration_ms.tolist()
    opt = {c: getattr(batch, c) for c in OPT_STR_COLUMNS}
    flags = {c: getattr(batch, c).tolist() for c in BOOL_COLUMNS}
    out = []
    for i in range(len(batch)):
        d = {
            "event_id": batch.event_id[i],
            "ts": ts[i],
            "account_id": batch.account_id[i],
            "track_id": batch.track_id[i],
            "artist_id": batch.artist_id[i],
            "ms_played": ms[i],
        }
        if dur[i] >= 0:
            d["track_duration_ms"] = dur[i]
        for c, col in opt.items():
            v = col[i]
            if v is not None:
                d[c] = v
        for c, col in flags.items():
            if col[i] >= 0:
                d[c] = bool(col[i])
        out.append(enc.encode(d))
    return out


async def produce_plays(
    settings: Settings,
    batch: PlayBatch,
    speedup: float = 0.0,
    progress: Callable[[int], None] | None = None,
    chunk: int = 5000,
) -> int:
    """Send planned plays to ``plays`` in event-time order.

    Args:
        settings: bootstrap servers, security and topic names.
        batch: plays sorted by ``ts``.
        speedup: event-time seconds per wall second; 0 sends as fast as possible.
        progress: called with the number of plays sent after each chunk.
        chunk: plays encoded and sent per step.

    Returns:
        Plays sent.

    Raises:
        aiokafka.errors.KafkaError: if the broker cannot be reached.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=10,
        max_batch_size=512 * 1024,
        acks=1,
        **settings.kafka_client_kwargs(),
    )
    await producer.start()
    sent = 0
    try:
        t0 = time.monotonic()
        ts0 = float(batch.ts[0]) if len(batch) else 0.0
        topic = settings.topics.plays
        for lo in range(0, len(batch), chunk):
            part = batch.take(np.arange(lo, min(lo + chunk, len(batch))))
            values = encode_rows(part)
            ts = part.ts.tolist()
            futs = []
            for i, v in enumerate(values):
                if speedup > 0:
                    due = t0 + (ts[i] - ts0) / speedup
                    wait = due - time.monotonic()
                    if wait > 0.002:
                        await asyncio.sleep(wait)
                futs.append(await producer.send(topic, v, key=part.account_id[i].encode()))
            await asyncio.gather(*futs)
            sent += len(values)
            if progress:
                progress(sent)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
