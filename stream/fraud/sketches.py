"""Vectorised sketches for bounded per-entity memory.

datasketch keeps one Python object per sketch and updates it one value at a
time; the core updates thousands of entities per micro-batch, so these sketches
keep many entities' registers in one numpy array and update them per batch
with compiled loops (numba; each kernel is checked against a plain numpy
reference in ``tests/test_fraud_kernels.py``).

* :func:`stable_hash64`: 64-bit BLAKE2b hash of strings, stable across
  processes (Python's ``hash`` is salted per process, so it cannot be used in
  snapshots).
* :func:`mix64`: SplitMix64 finaliser (Steele et al., 2014) to combine hashes.
* :class:`HLLBank`: HyperLogLog registers (Flajolet et al., 2007) for many
  entities, with the small-range linear-counting correction (Heule et al., 2013).
* :class:`CountMin`: count-min sketch (Cormode & Muthukrishnan, 2005).
* :func:`linear_count`: distinct count from a bitmap (Whang et al., 1990).
"""

from __future__ import annotations

import hashlib

import numba as nb
import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def stable_hash64(values) -> np.ndarray:
    """64-bit hashes of strings (``None`` hashes as the empty string).

    Args:
        values: iterable of n strings.

    Returns:
        uint64 array (n,). Stable across processes and machines (BLAKE2b).
    """
    b2 = hashlib.blake2b
    raw = b"".join([b2(("" if v is None else v).encode(), digest_size=8).digest() for v in values])
    return np.frombuffer(raw, "<u8").astype(np.uint64)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of uint64 array ``x`` (same shape)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, np.uint64).copy()
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hash of the pair (a, b) of uint64 arrays (order matters):
    ``mix64(a * 0x9E3779B97F4A7C15 ^ mix64(b))``, shape of the broadcast."""
    a = np.asarray(a, np.uint64)
    b = np.asarray(b, np.uint64)
    if a.ndim == 1 and a.shape == b.shape:
        out = np.empty(len(a), np.uint64)
        _combine_kernel(np.ascontiguousarray(a), np.ascontiguousarray(b), out)
        return out
    with np.errstate(over="ignore"):
        return mix64(a * np.uint64(0x9E3779B97F4A7C15) ^ mix64(b))


def _clz_rank(w: np.ndarray, bits: int) -> np.ndarray:
    """1 + number of leading zeros of the ``bits``-bit words ``w`` (capped)."""
    w = w.astype(np.uint64)
    # floor(log2(w)) via float64 is exact enough for rank purposes on 58 bits
    nz = w > 0
    lg = np.zeros(w.shape, np.int64)
    lg[nz] = np.floor(np.log2(w[nz].astype(np.float64))).astype(np.int64)
    rank = np.where(nz, bits - lg, bits + 1)
    return np.minimum(rank, 63).astype(np.uint8)


_POW2_NEG = np.power(2.0, -np.arange(256, dtype=np.float64))


@nb.njit(inline="always")
def _mix64_one(z):
    # SplitMix64 finaliser of one uint64 (wrapping arithmetic, as mix64)
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit
def _zero_rows(a, rows):
    for i in range(len(rows)):
        a[rows[i], :] = 0


@nb.njit
def _combine_kernel(a, b, out):
    for i in range(len(a)):
        out[i] = _mix64_one((a[i] * np.uint64(0x9E3779B97F4A7C15)) ^ _mix64_one(b[i]))


@nb.njit
def _hll_add_kernel(reg, slots, hashes, p):
    # reg[slot, idx] = max(reg, rank); rank as _clz_rank (float64 log2, capped at 63)
    m1 = np.uint64((1 << p) - 1)
    bits = 64 - p
    for i in range(len(slots)):
        h = hashes[i]
        j = np.int64(h & m1)
        w = h >> np.uint64(p)
        if w > np.uint64(0):
            r = bits - np.int64(np.floor(np.log2(np.float64(w))))
        else:
            r = bits + 1
        if r > 63:
            r = 63
        s = slots[i]
        if reg[s, j] < r:
            reg[s, j] = np.uint8(r)


@nb.njit
def _hll_estimate_kernel(reg, other, slots, alpha, pow2neg, out):
    # raw HLL estimate of the max-merge of reg (and other, if it has rows) with
    # the small-range linear-counting correction
    m = reg.shape[1]
    both = other.shape[0] > 0
    for i in range(len(slots)):
        s = slots[i]
        z = 0.0
        zeros = 0
        for j in range(m):
            r = reg[s, j]
            if both and other[s, j] > r:
                r = other[s, j]
            z += pow2neg[r]
            if r == 0:
                zeros += 1
        e = alpha * m * m / z
        if e <= 2.5 * m and zeros > 0:
            e = m * np.log(m / zeros)
        out[i] = e


@nb.njit
def _cm_cols(keys, seeds, mask, cols):
    for i in range(len(keys)):
        for d in range(len(seeds)):
            cols[d, i] = np.int64(_mix64_one(keys[i] ^ seeds[d]) & mask)


@nb.njit
def _cm_add_kernel(table, keys, counts, seeds, mask):
    for i in range(len(keys)):
        for d in range(len(seeds)):
            table[d, np.int64(_mix64_one(keys[i] ^ seeds[d]) & mask)] += counts[i]


@nb.njit(inline="always")
def _cm_estimate(table, key, seeds, mask):
    # count-min estimate of one key: the smallest of its counters
    est = np.int64(table[0, np.int64(_mix64_one(key ^ seeds[0]) & mask)])
    for d in range(1, len(seeds)):
        v = np.int64(table[d, np.int64(_mix64_one(key ^ seeds[d]) & mask)])
        if v < est:
            est = v
    return est


@nb.njit
def _cm_query_kernel(table, keys, seeds, mask, out):
    for i in range(len(keys)):
        out[i] = _cm_estimate(table, keys[i], seeds, mask)


@nb.njit
def _cm_query_where_kernel(table, keys, period, p, seeds, mask, out):
    for i in range(len(keys)):
        if period[i] == p:
            out[i] = _cm_estimate(table, keys[i], seeds, mask)


@nb.njit
def _cm_zero_kernel(table, keys, seeds, mask):
    # zero exactly the counters keys were added to (sparse clear)
    for i in range(len(keys)):
        for d in range(len(seeds)):
            table[d, np.int64(_mix64_one(keys[i] ^ seeds[d]) & mask)] = 0


class HLLBank:
    """HyperLogLog registers for many entities in one array.

    Args:
        p: precision; ``m = 2**p`` registers per entity (6 -> 64 B per entity,
            relative standard error 1.04/sqrt(m), about 13 %).

    Attributes:
        reg_: uint8 array (capacity, m).

    Example:
        >>> bank = HLLBank(p=6); bank.resize(2)
        >>> bank.add(np.zeros(500, np.int64), mix64(np.arange(500, dtype=np.uint64)))
        >>> bool(400 < bank.estimate(np.array([0]))[0] < 600)
        True
    """

    def __init__(self, p: int = 6):
        if not 4 <= p <= 12:
            raise ValueError(f"HLL precision p must be in 4..12, got {p}")
        self.p = p
        self.m = 1 << p
        self.reg_ = np.zeros((0, self.m), np.uint8)
        self._alpha = 0.7213 / (1 + 1.079 / self.m) if self.m >= 128 else {16: 0.673, 32: 0.697, 64: 0.709}[self.m]

    def resize(self, capacity: int) -> None:
        """Grow to ``capacity`` entities (new rows empty)."""
        n = self.reg_.shape[0]
        if capacity > n:
            self.reg_ = np.vstack([self.reg_, np.zeros((capacity - n, self.m), np.uint8)])

    def clear(self, slots: np.ndarray) -> None:
        """Empty the registers of ``slots`` (int indices or a boolean mask)."""
        slots = np.asarray(slots)
        if slots.dtype == bool:
            slots = np.flatnonzero(slots)
        if len(slots):
            _zero_rows(self.reg_, slots.astype(np.int64, copy=False))

    def add(self, slots: np.ndarray, hashes: np.ndarray) -> None:
        """Add hashed items (uint64, shape (n,)) to entities ``slots`` (n,)."""
        if len(slots) == 0:
            return
        _hll_add_kernel(self.reg_, np.asarray(slots, np.int64), np.asarray(hashes, np.uint64), self.p)

    def estimate(self, slots: np.ndarray, other: "HLLBank | None" = None) -> np.ndarray:
        """Cardinality estimates (float64, shape (n,)) of ``slots``; with
        ``other``, of the union of both banks' registers (max-merge)."""
        slots = np.asarray(slots, np.int64)
        out = np.empty(len(slots))
        o = other.reg_ if other is not None else self.reg_[:0]
        _hll_estimate_kernel(self.reg_, o, slots, self._alpha, _POW2_NEG, out)
        return out


class CountMin:
    """Count-min sketch over uint64 keys.

    Args:
        width: counters per row (power of two).
        depth: rows (independent hashes).

    Estimates never undercount; overcount is at most ``e * N / width`` with
    probability ``1 - exp(-depth)`` (N = total count).

    Example:
        >>> cm = CountMin(1024, 2)
        >>> cm.add(np.array([7, 7, 9], np.uint64))
        >>> cm.query(np.array([7], np.uint64)).tolist()
        [2]
    """

    def __init__(self, width: int = 1 << 16, depth: int = 2):
        if width <= 0 or width & (width - 1):
            raise ValueError(f"width must be a positive power of two, got {width}")
        self.width = width
        self.depth = depth
        self.table_ = np.zeros((depth, width), np.int32)
        self._seeds = np.array([0x5DEECE66D * (d + 1) for d in range(depth)], np.uint64)
        self._mask = np.uint64(width - 1)
        # keys added since the last clear (None: unknown, clear the whole table)
        self._added: list[np.ndarray] | None = []
        self._n_added = 0

    def _cols(self, keys: np.ndarray) -> np.ndarray:
        """Counter column of each key in each row, int64 (depth, n)."""
        k = np.ascontiguousarray(keys, np.uint64)
        cols = np.empty((self.depth, len(k)), np.int64)
        _cm_cols(k, self._seeds, self._mask, cols)
        return cols

    def add(self, keys: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add ``counts`` (default 1 each) to ``keys`` (uint64, shape (n,))."""
        if len(keys) == 0:
            return
        k = np.array(keys, np.uint64)  # a copy: kept for the sparse clear
        c = np.ones(len(k), np.int32) if counts is None else np.ascontiguousarray(counts, np.int32)
        _cm_add_kernel(self.table_, k, c, self._seeds, self._mask)
        if self._added is not None:
            self._n_added += len(k)
            if self._n_added > self.width // 4:
                self._added = None  # cheaper to clear every counter
            else:
                self._added.append(k)

    def query(self, keys: np.ndarray) -> np.ndarray:
        """Estimated counts (int64, shape (n,))."""
        out = np.empty(len(keys), np.int64)
        if len(keys):
            _cm_query_kernel(self.table_, np.ascontiguousarray(keys, np.uint64), self._seeds, self._mask, out)
        return out

    def query_where(self, keys: np.ndarray, period: np.ndarray, p: int, out: np.ndarray) -> None:
        """``out[i]`` = estimated count of ``keys[i]`` for every i with
        ``period[i] == p`` (others left as they are): ``out[sel] =
        query(keys[sel])`` without the copies. keys uint64, period int64,
        out int64, all (n,)."""
        if len(keys):
            _cm_query_where_kernel(self.table_, np.ascontiguousarray(keys, np.uint64),
                                   np.ascontiguousarray(period, np.int64), p, self._seeds, self._mask, out)

    def clear(self) -> None:
        """Reset every counter to 0 (only the counters touched since the
        last clear when they are few)."""
        if self._added is None:
            self.table_[:] = 0
        else:
            for k in self._added:
                _cm_zero_kernel(self.table_, k, self._seeds, self._mask)
        self._added = []
        self._n_added = 0

    def nbytes(self) -> int:
        """Bytes held: the counters and the log of keys added since the last
        clear (at most ``width / 4`` keys, for the sparse clear)."""
        return self.table_.nbytes + sum(k.nbytes for k in (self._added or ()))

    def set_table(self, table: np.ndarray) -> None:
        """Replace the counters (int32 (depth, width)), e.g. from a snapshot.

        Raises:
            ValueError: if the shape differs from this sketch's.
        """
        table = np.ascontiguousarray(table, np.int32)
        if table.shape != self.table_.shape:
            raise ValueError(f"count-min table shape {table.shape} != {self.table_.shape}")
        self.table_ = table
        self._added = None


@nb.njit
def bitmap_set(bits, rows, pos):
    """Set bit ``pos[i]`` of bitmap row ``rows[i]`` in place, for every i.

    Args:
        bits: uint64 (m, w): one bitmap of ``64 * w`` bits per row.
        rows: int (n,) rows.
        pos: int or uint (n,) bit positions in ``[0, 64 * w)``.

    Same as ``np.bitwise_or.at(bits, (rows, pos >> 6), 1 << (pos & 63))``.
    """
    for i in range(len(rows)):
        p = np.int64(pos[i])
        bits[rows[i], p >> 6] |= np.uint64(1) << np.uint64(p & 63)


def linear_count(bits: np.ndarray) -> np.ndarray:
    """Distinct-count estimates from bitmaps.

    Args:
        bits: uint64 array (n, w): one bitmap of ``64 * w`` bits per row.

    Returns:
        float64 (n,): ``-m ln(V)`` with V the share of zero bits (Whang et al.,
        1990); saturated bitmaps return ``m ln(m)``.
    """
    m = bits.shape[1] * 64
    ones = np.zeros(bits.shape[0], np.int64)
    for j in range(bits.shape[1]):
        ones += np.bitwise_count(bits[:, j]).astype(np.int64)
    zeros = np.maximum(m - ones, 1)
    return -m * np.log(zeros / m)


class RotatingCountMin:
    """Count-min sketches for ``k`` consecutive periods (days, hours...).

    Each event is counted in the sketch of its period; a sketch is cleared
    when a newer period claims it, so memory stays at ``k`` sketches and counts
    older than ``k`` periods vanish.

    Args:
        width, depth: of each :class:`CountMin`.
        k: periods kept.

    Example:
        >>> r = RotatingCountMin(256, 2, k=2)
        >>> keys = np.array([1, 1, 1], np.uint64)
        >>> r.add(keys, np.array([10, 10, 11]))
        >>> r.query(keys, np.array([10, 10, 11])).tolist()
        [2, 2, 1]
    """

    def __init__(self, width: int = 1 << 18, depth: int = 2, k: int = 2):
        self.k = k
        self.banks = [CountMin(width, depth) for _ in range(k)]
        self.period_ = np.full(k, -1, np.int64)

    def add(self, keys: np.ndarray, period: np.ndarray) -> None:
        """Count ``keys`` (uint64, (n,)) in their ``period`` (int, (n,)).

        Only the newest ``k`` periods of the call (and of the state) are kept,
        so a sparse stream does not clear a sketch per skipped period."""
        period = np.asarray(period, np.int64)
        if len(period) == 0:
            return
        keys = np.asarray(keys)
        pmin, pmax = int(period.min()), int(period.max())
        lo = max(pmax, int(self.period_.max())) - self.k + 1
        # the batch's periods from lo up (at most k; a batch may span more)
        for p in range(max(pmin, lo), pmax + 1):
            sel = None if pmin == pmax else period == p
            if sel is not None and not sel.any():
                continue
            j = p % self.k
            if self.period_[j] < p:
                if self.period_[j] >= 0:
                    self.banks[j].clear()
                self.period_[j] = p
            if self.period_[j] == p:
                self.banks[j].add(keys if sel is None else keys[sel])

    def query(self, keys: np.ndarray, period: np.ndarray) -> np.ndarray:
        """Counts of ``keys`` in their ``period`` (0 for periods no longer kept)."""
        period = np.asarray(period, np.int64)
        keys = np.asarray(keys)
        out = np.zeros(len(keys), np.int64)
        if len(period) == 0:
            return out
        pmin, pmax = int(period.min()), int(period.max())
        if pmin == pmax:
            j = pmin % self.k
            return self.banks[j].query(keys) if self.period_[j] == pmin else out
        # a batch may span more periods than are kept: look for the kept ones
        # (period p lives in sketch p % k)
        for j, p in enumerate(self.period_.tolist()):
            if p % self.k == j and pmin <= p <= pmax:
                self.banks[j].query_where(keys, period, p, out)
        return out

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able). Mostly-empty tables are stored sparsely
        (flat indices and values of the non-zero counters) to keep changelog
        snapshots small."""
        tables = []
        for b in self.banks:
            t = b.table_
            nz = np.flatnonzero(t)
            if len(nz) * 2 < t.size:
                tables.append({"shape": list(t.shape), "idx": nz.astype(np.int64), "val": t.ravel()[nz]})
            else:
                tables.append({"dense": t})
        return {"period": self.period_, "tables": tables}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: if a table's shape differs from this sketch's.
        """
        self.period_ = np.asarray(state["period"], np.int64).copy()
        for b, t in zip(self.banks, state["tables"]):
            if "dense" in t:
                arr = np.asarray(t["dense"], np.int32).copy()
            else:
                arr = np.zeros(tuple(t["shape"]), np.int32)
                arr.ravel()[np.asarray(t["idx"], np.int64)] = np.asarray(t["val"], np.int32)
            b.set_table(arr)
