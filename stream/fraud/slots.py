"""Id -> slot tables: columnar per-entity state with inactivity expiry.

Each entity type (account, track, artist, IP, device) keeps its state in numpy
columns indexed by a slot number; :class:`SlotTable` maps ids to slots, grows
the columns by doubling, and frees slots whose entity has been inactive for
``ttl_s`` seconds of event time (their rows are zeroed and reused). Memory is
O(1) per active entity: the columns plus one dict entry and the id string.

The scatter kernels (:func:`scatter_max`, :func:`scatter_min`,
:func:`scatter_add`, :func:`scatter_add2`, :func:`scatter_max2`) fold a
batch's values into those columns in place; they compute what
``np.maximum.at`` / ``np.minimum.at`` / ``np.add.at`` compute, with compiled
loops (numba) instead of numpy's slow unbuffered ``ufunc.at``.
"""

from __future__ import annotations

from itertools import repeat

import numba as nb
import numpy as np

from stream.fraud.sketches import _mix64_one, stable_hash64


@nb.njit
def scatter_max(out, idx, vals):
    """``out[idx[i]] = max(out[idx[i]], vals[i])`` for every i, in place
    (``np.maximum.at(out, idx, vals)``; out (m,), idx int (n,), vals (n,))."""
    for i in range(len(idx)):
        j = idx[i]
        if vals[i] > out[j]:
            out[j] = vals[i]


@nb.njit
def scatter_min(out, idx, vals):
    """``np.minimum.at(out, idx, vals)`` in place (shapes as :func:`scatter_max`)."""
    for i in range(len(idx)):
        j = idx[i]
        if vals[i] < out[j]:
            out[j] = vals[i]


@nb.njit
def scatter_add(out, idx, val):
    """``np.add.at(out, idx, val)`` in place with a scalar ``val`` (events in order)."""
    for i in range(len(idx)):
        out[idx[i]] += val


@nb.njit
def scatter_add2(out, rows, cols, val):
    """``np.add.at(out, (rows, cols), val)`` in place, scalar ``val``; out (m, k)."""
    for i in range(len(rows)):
        out[rows[i], cols[i]] += val


@nb.njit
def scatter_max2(out, rows, cols, vals):
    """``np.maximum.at(out, (rows, cols), vals)`` in place; out (m, k), vals (n,)."""
    for i in range(len(rows)):
        if vals[i] > out[rows[i], cols[i]]:
            out[rows[i], cols[i]] = vals[i]


@nb.njit
def decay_add(col, slots, f, inv, w):
    """Decay then add, in place: ``col[slots] = col[slots] * f + sums`` with
    ``sums = np.bincount(inv, w, len(slots)).astype(col.dtype)``.

    Args:
        col: float32 column (capacity,).
        slots: int (m,) distinct rows.
        f: float32 (m,) decay factors.
        inv: int (n,) index of each event's row in ``slots``.
        w: float64 (n,) event weights (summed in event order, like ``bincount``).

    Same rounding as the numpy expression it replaces: the product is
    rounded to float32, the float64 sums are rounded to float32, then added.
    """
    m = len(slots)
    acc = np.zeros(m)
    for i in range(len(inv)):
        acc[inv[i]] += w[i]
    for j in range(m):
        s = slots[j]
        col[s] = col[s] * f[j] + np.float32(acc[j])


@nb.njit
def _group_kernel(keys, first, inv, counts):
    n = len(keys)
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    tkeys = np.empty(size, np.uint64)
    tgid = np.full(size, -1, np.int64)
    g = 0
    for i in range(n):
        k = keys[i]
        h = np.int64(_mix64_one(k) & mask)
        while True:
            gid = tgid[h]
            if gid < 0:
                tgid[h] = g
                tkeys[h] = k
                first[g] = i
                inv[i] = g
                counts[g] = 1
                g += 1
                break
            if tkeys[h] == k:
                inv[i] = gid
                counts[gid] += 1
                break
            h = (h + np.int64(1)) & np.int64(size - 1)
    return g


def group_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of equal keys in order of first appearance (hash table, O(n)).

    Args:
        keys: int64 or uint64 (n,).

    Returns:
        ``(first, inv, counts)``: index of each group's first event (g,),
        group of each event int64 (n,), events per group (g,). The same
        groups as ``np.unique(keys, return_index=True, return_inverse=True,
        return_counts=True)`` without sorting (groups in first-appearance
        order, not key order).
    """
    k = np.ascontiguousarray(keys).view(np.uint64) if np.asarray(keys).dtype.itemsize == 8 \
        else np.asarray(keys, np.int64).view(np.uint64)
    n = len(k)
    first = np.empty(n, np.int64)
    inv = np.empty(n, np.int64)
    counts = np.empty(n, np.int64)
    g = _group_kernel(k, first, inv, counts)
    return first[:g], inv, counts[:g]


class SlotTable:
    """Columns of per-entity state, one row per active entity.

    Args:
        columns: name -> (dtype, trailing shape) of each state column.
        ttl_s: event-time inactivity (s) after which an entity is dropped.

    Attributes:
        index_: id -> slot.
        ids_: slot -> id (``None`` for a free slot).
        cols_: name -> array of shape (capacity, *trailing).
        last_seen_: float64 (capacity,) newest event time per slot (Unix s).
        hash_: uint64 (capacity,) stable hash of each id.

    Example:
        >>> t = SlotTable({"n": ("f4", ())}, ttl_s=10)
        >>> t.lookup(["a", "b", "a"]).tolist()
        [0, 1, 0]
    """

    def __init__(self, columns: dict[str, tuple[str, tuple]], ttl_s: float):
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.spec = columns
        self.ttl_s = float(ttl_s)
        self.index_: dict[str, int] = {}
        self.ids_: list[str | None] = []
        self.free_: list[int] = []
        self.cols_ = {k: np.zeros((0, *shape), dt) for k, (dt, shape) in columns.items()}
        self.last_seen_ = np.zeros(0, np.float64)
        self.hash_ = np.zeros(0, np.uint64)
        self.live_ = np.zeros(0, bool)
        self.last_expired_ = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.index_)

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return len(self.ids_)

    def _grow(self, need: int) -> None:
        cap = max(64, self.capacity)
        while cap < need:
            cap *= 2
        extra = cap - self.capacity
        for k, a in self.cols_.items():
            self.cols_[k] = np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)])
        self.last_seen_ = np.concatenate([self.last_seen_, np.zeros(extra)])
        self.hash_ = np.concatenate([self.hash_, np.zeros(extra, np.uint64)])
        self.live_ = np.concatenate([self.live_, np.zeros(extra, bool)])
        self.free_.extend(range(cap - 1, self.capacity - 1, -1))
        self.ids_.extend([None] * extra)

    def lookup(self, ids: list[str]) -> np.ndarray:
        """Slots (int64, shape (n,)) of ``ids``, allocating new entities.

        One C-level dict probe per id (``map(dict.get)``); new ids are hashed
        and given slots together.
        """
        return self.admit(ids, self.find(ids))

    def find(self, ids: list[str]) -> np.ndarray:
        """Slots (int64, shape (n,)) of ``ids``, -1 for an id the table does
        not hold (nothing is allocated)."""
        n = len(ids)
        return np.fromiter(map(self.index_.get, ids, repeat(-1, n)), np.int64, n)

    def admit(self, ids: list[str], slots: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Complete :meth:`find` results, allocating new entities.

        Args:
            ids: n ids.
            slots: int64 (m,) :meth:`find` result of ``ids[rows]`` (of every
                id when ``rows`` is None); its -1 entries are filled in place.
            rows: int (m,) indices into ``ids``, or None.

        Returns:
            ``slots``: the same as :meth:`lookup` of ``ids[rows]`` (new ids
            get slots in order of first appearance).
        """
        miss = np.flatnonzero(slots < 0)
        if len(miss):
            at = miss.tolist() if rows is None else rows[miss].tolist()
            missing = list(map(ids.__getitem__, at))
            first = dict.fromkeys(missing)  # new ids in order of first appearance
            k = len(first)
            if k > len(self.free_):
                self._grow(len(self.index_) + k)
            got = self.free_[-k:][::-1]  # the order free_.pop() would give
            del self.free_[-k:]
            placed = dict(zip(first, got))
            self.index_.update(placed)
            ids_ = self.ids_
            for i, sl in placed.items():
                ids_[sl] = i
            self.hash_[got] = stable_hash64(first)
            self.live_[got] = True
            # slots of the misses from the batch's own small dict (the index
            # is large and scattered in memory)
            slots[miss] = np.fromiter(map(placed.__getitem__, missing), np.int64, len(miss))
        return slots

    def touch(self, slots: np.ndarray, ts: np.ndarray) -> None:
        """Record activity: ``last_seen_[slot] = max(last_seen_, ts)``."""
        scatter_max(self.last_seen_, np.asarray(slots, np.int64), np.asarray(ts, np.float64))

    def expire(self, now: float) -> int:
        """Drop entities inactive since ``now - ttl_s``; returns how many
        (their slots are left in ``last_expired_``)."""
        dead = np.flatnonzero(self.live_ & (self.last_seen_ < now - self.ttl_s))
        dl = dead.tolist()
        ids = self.ids_
        if 2 * len(dl) <= len(self.index_):
            index = self.index_
            for i in map(ids.__getitem__, dl):
                del index[i]
        for s in dl:
            ids[s] = None
        self.free_.extend(dl)
        for a in self.cols_.values():
            a[dead] = 0
        self.last_seen_[dead] = 0
        self.live_[dead] = False
        if 2 * len(dl) > len(self.index_):
            # most entities die (e.g. a replay far faster than real time):
            # indexing the survivors costs less than deleting the dead ids
            keep = np.flatnonzero(self.live_).tolist()
            self.index_ = dict(zip(map(ids.__getitem__, keep), keep))
        self.last_expired_ = dead
        return len(dead)

    def nbytes(self) -> int:
        """Approximate bytes held (columns, dict entries, id strings)."""
        b = (sum(a.nbytes for a in self.cols_.values()) + self.last_seen_.nbytes + self.hash_.nbytes
             + self.live_.nbytes)
        b += 8 * self.capacity + 100 * len(self.index_)  # list slots, dict entries
        b += sum(len(i) + 49 for i in self.index_)
        return b

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able)."""
        return {
            "ids": list(self.ids_),
            "cols": dict(self.cols_),
            "last_seen": self.last_seen_,
            "hash": self.hash_,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        A column absent from ``state`` (a snapshot taken before the column
        was added) starts at zero.

        Raises:
            ValueError: if a column has the wrong length.
        """
        ids = list(state["ids"])
        n = len(ids)
        for k, (dtype, shape) in self.spec.items():
            if k not in state["cols"]:
                self.cols_[k] = np.zeros((n, *shape), dtype)
                continue
            a = np.asarray(state["cols"][k])
            if a.shape[0] != n:
                raise ValueError(f"state column {k} has {a.shape[0]} rows, expected {n}")
            self.cols_[k] = a.copy()
        self.ids_ = ids
        self.last_seen_ = np.asarray(state["last_seen"], np.float64).copy()
        self.hash_ = np.asarray(state["hash"], np.uint64).copy()
        self.index_ = {i: s for s, i in enumerate(ids) if i is not None}
        self.live_ = np.fromiter((i is not None for i in ids), bool, n)
        self.free_ = [s for s in range(n - 1, -1, -1) if ids[s] is None]
