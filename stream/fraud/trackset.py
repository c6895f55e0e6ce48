"""Groups of accounts holding the same set of items today: new tracks
(playlist stuffing, the catalog stage) or IPs (a phone farm behind a few
IPs, the account stage).

A stuffed playlist spreads a few target tracks over many bot accounts, each
playing each target only a couple of times, so no bot is a heavy listener and
no (track, 10-min) cell is crowded. What they share is the *set*: every bot
that loops the playlist holds the same few new tracks today, while organic
listeners of a release pick different subsets of an album, and listeners of a
single viral track hold a one-track set.

Per account and UTC day this module keeps a bottom-k MinHash sketch of the
distinct *new* tracks it played (Broder 1997, "On the resemblance and
containment of documents"; the bottom-k variant of Cohen & Kaplan 2007): the
``k`` smallest 64-bit track hashes. Two accounts whose new-track sets hold at
most ``k`` tracks have the same sketch exactly when the sets are equal; larger
sets share a sketch with probability growing with their Jaccard similarity.
The whole sketch is one LSH band (Indyk & Motwani 1998): its hash is the
account's *set key*. Distinct accounts per set key over the last 12-24 h
(the current and the previous 12-h block, ``BLOCK_S``) are counted in
rotating count-min sketches with an (account, key, block) admission sketch,
as the lockstep cells of :mod:`stream.fraud.features_catalog`, causally: a
play sees the accounts that reached its key before it (earlier batches and
earlier plays of its own batch), never later ones. An account holding the
key in both blocks counts once (inclusion-exclusion: a third sketch counts
the accounts that arrived in a block already holding the key in the previous
one). Before session 6 the count was per UTC day, so a ring whose run
straddled midnight was split into two smaller groups (the same defect the
account stage's identity counts had until session 5).

Sketches still restart at 00:00 UTC (an account's *set of the day*): a bot
that keeps looping its playlist holds the same key again within one loop.

Memory: ``k`` uint64 + one int32 day per account (36 B at ``k = 4``) and two
fixed-size count-min pairs; no per-event Python state (one compiled pass over
the batch's new-track plays in time order).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from stream.fraud.sketches import RotatingCountMin, _mix64_one, combine
from stream.fraud.slots import group_index

DAY = 86400.0
#: block of the group counts; a count covers the current and previous block
BLOCK_S = 43200.0


@nb.njit
def _bottomk_kernel(order, acc, day, th, sig, sday, keys, min_distinct):
    """Fold plays (in ``order``) into per-account bottom-k sketches, in place.

    acc int64 (n,) account rows of ``sig``; day int64 (n,); th uint64 (n,)
    non-zero track hashes; sig uint64 (m, k) ascending, 0 = empty; sday int32
    (m,) day of each sketch. Writes ``keys[i]`` (uint64): the hash of the
    account's sketch after play i when it holds ``min_distinct``+ tracks,
    else 0. Plays of a day older than the account's sketch get key 0.
    """
    k = sig.shape[1]
    for ii in range(len(order)):
        i = order[ii]
        a = acc[i]
        d = day[i]
        if d > sday[a]:
            for j in range(k):
                sig[a, j] = 0
            sday[a] = d
        elif d < sday[a]:
            keys[i] = 0
            continue
        h = th[i]
        # insert h into the ascending bottom-k list (0 = empty, at the end)
        present = False
        for j in range(k):
            if sig[a, j] == h:
                present = True
                break
        if not present:
            pos = -1
            for j in range(k):
                if sig[a, j] == 0 or h < sig[a, j]:
                    pos = j
                    break
            if pos >= 0:
                for j in range(k - 1, pos, -1):
                    sig[a, j] = sig[a, j - 1]
                sig[a, pos] = h
        nd = 0
        key = np.uint64(0x9E3779B97F4A7C15)
        for j in range(k):
            if sig[a, j] == 0:
                break
            nd += 1
            key = _mix64_one(key ^ sig[a, j])
        keys[i] = key if nd >= min_distinct else np.uint64(0)


@nb.njit
def _keys_kernel(sig, min_distinct, out):
    for a in range(sig.shape[0]):
        nd = 0
        key = np.uint64(0x9E3779B97F4A7C15)
        for j in range(sig.shape[1]):
            if sig[a, j] == 0:
                break
            nd += 1
            key = _mix64_one(key ^ sig[a, j])
        out[a] = key if nd >= min_distinct else np.uint64(0)


def set_keys(sig: np.ndarray, min_distinct: int) -> np.ndarray:
    """Set key of each sketch row (uint64 (m,); 0 under ``min_distinct``
    tracks), the key :meth:`SetGroups.update` gives after a play.

    Args:
        sig: uint64 (m, k) bottom-k sketches (ascending, 0 = empty).
    """
    out = np.zeros(sig.shape[0], np.uint64)
    _keys_kernel(np.ascontiguousarray(sig, np.uint64), min_distinct, out)
    return out


def _arrivals_before(cells: np.ndarray, ts: np.ndarray, arrivals: np.ndarray) -> np.ndarray:
    """Per play (n,): the batch's new (cell, account) arrivals (indices
    ``arrivals``) that reached the play's cell at or before its time (an
    arrival counts for its own play). Same as the lockstep cells' rule in
    :mod:`stream.fraud.features_catalog`."""
    from stream.fraud.features_catalog import _arrivals_before as f
    return f(cells, ts, arrivals)


class SetGroups:
    """Distinct accounts per item set (new tracks, IPs) over the last 12-24 h
    (see module docstring; the text speaks of tracks, any item hash works).

    Args:
        k: tracks per bottom-k sketch (sets of up to ``k`` tracks compare
            exactly; larger ones by MinHash).
        min_distinct: distinct new tracks before an account's set has a key
            (a one-track set is every listener of a viral hit).
        width: count-min width (power of two).

    Raises:
        ValueError: on ``k < 2`` or ``min_distinct`` outside ``[1, k]``.
    """

    def __init__(self, k: int = 4, min_distinct: int = 2, width: int = 1 << 16):
        if k < 2:
            raise ValueError(f"k must be >= 2, got {k}")
        if not 1 <= min_distinct <= k:
            raise ValueError(f"min_distinct must be in [1, {k}], got {min_distinct}")
        self.k = k
        self.min_distinct = min_distinct
        self.width = width
        # three blocks kept so a batch that straddles a block boundary still
        # sees the block before its older plays' block
        self.count = RotatingCountMin(width, 2, k=3)
        self.admit = RotatingCountMin(width * 2, 2, k=3)
        # arrivals in a block of accounts that held the key in the block before
        self.both = RotatingCountMin(width, 2, k=2)

    def update(self, sig: np.ndarray, sday: np.ndarray, acc: np.ndarray, acc_hash: np.ndarray, ts: np.ndarray,
               track_hash: np.ndarray, counted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold a batch's new-track plays in; group size seen by each play.

        Args:
            sig: uint64 (m, k) account sketches (updated in place).
            sday: int32 (m,) their days (updated in place).
            acc: int64 (n,) account rows; acc_hash: uint64 (n,) account hashes.
            ts: float64 (n,) event times (Unix s); track_hash: uint64 (n,).
            counted: bool (n,): plays that may join a group (the account's
                set still grows from every play given; only these arrive).

        Returns:
            ``(keys, size)``: uint64 (n,) set key after each play (0: none) and
            int64 (n,) distinct accounts that held that key in the play's
            12-h block or the previous one, up to the play (itself included;
            0 where the key is 0 or the play is not counted).

        Raises:
            ValueError: if ``sig`` has not ``k`` columns.
        """
        if sig.ndim != 2 or sig.shape[1] != self.k:
            raise ValueError(f"sig must have shape (m, {self.k}), got {sig.shape}")
        n = len(ts)
        keys = np.zeros(n, np.uint64)
        size = np.zeros(n, np.int64)
        if n == 0:
            return keys, size
        day = (ts // DAY).astype(np.int64)
        th = np.asarray(track_hash, np.uint64) | np.uint64(1)  # 0 marks an empty sketch slot
        order = np.argsort(ts, kind="stable")
        _bottomk_kernel(order, np.asarray(acc, np.int64), day, th, sig, sday, keys, self.min_distinct)
        sel = np.flatnonzero((keys != 0) & counted)
        if len(sel) == 0:
            return keys, size
        sel = sel[np.argsort(ts[sel], kind="stable")]  # arrivals: each pair's earliest play
        b = (ts[sel] // BLOCK_S).astype(np.int64)
        ks = keys[sel]
        ahs = np.asarray(acc_hash, np.uint64)[sel]
        cell = combine(ks, b.astype(np.uint64))
        pcell = combine(ks, (b - 1).astype(np.uint64))
        pair = combine(cell, ahs)
        seen = self.admit.query(pair, b)
        self.admit.add(pair, b)
        first = group_index(pair)[0]
        new = first[seen[first] == 0]
        # held the key in the previous block (also earlier in this batch):
        # already counted there
        held = self.admit.query(combine(pcell[new], ahs[new]), b[new] - 1) > 0
        now = self.count.query(cell, b) - self.both.query(cell, b)
        self.count.add(cell[new], b[new])
        self.both.add(cell[new[held]], b[new[held]])
        # the previous block, with this batch's arrivals in it (all earlier)
        prev = self.count.query(pcell, b - 1)
        size[sel] = np.maximum(now, 0) + _arrivals_before(cell, ts[sel], new[~held]) + prev
        return keys, size

    def nbytes(self) -> int:
        """Bytes of the two count-min pairs."""
        return sum(b.nbytes() for r in (self.count, self.admit, self.both) for b in r.banks)

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able)."""
        return {"count": self.count.state_dict(), "admit": self.admit.state_dict(),
                "both": self.both.state_dict(), "block_s": BLOCK_S}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`. A snapshot from before session 6
        (per-day counts, no ``block_s``) holds counts of other periods and
        keys: the groups restart empty."""
        if state.get("block_s") != BLOCK_S:
            self.__init__(self.k, self.min_distinct, self.width)
            return
        self.count.load_state_dict(state["count"])
        self.admit.load_state_dict(state["admit"])
        self.both.load_state_dict(state["both"])
