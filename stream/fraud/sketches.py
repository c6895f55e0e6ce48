"""Vectorised sketches for bounded per-entity memory.

datasketch keeps one Python object per sketch and updates it one value at a
time; the core updates thousands of entities per micro-batch, so these sketches
keep many entities' registers in one numpy array and update them per batch with
``np.maximum.at`` / ``np.add.at`` / ``np.bitwise_or.at``.

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
    vals = list(values)
    out = np.empty(len(vals), np.uint64)
    for i, v in enumerate(vals):
        out[i] = int.from_bytes(hashlib.blake2b(("" if v is None else v).encode(), digest_size=8).digest(), "little")
    return out


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
    """Hash of the pair (a, b) of uint64 arrays (order matters)."""
    with np.errstate(over="ignore"):
        return mix64(np.asarray(a, np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ mix64(b))


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
        """Empty the registers of ``slots``."""
        self.reg_[slots] = 0

    def add(self, slots: np.ndarray, hashes: np.ndarray) -> None:
        """Add hashed items (uint64, shape (n,)) to entities ``slots`` (n,)."""
        if len(slots) == 0:
            return
        h = np.asarray(hashes, np.uint64)
        idx = (h & np.uint64(self.m - 1)).astype(np.int64)
        w = h >> np.uint64(self.p)
        rank = _clz_rank(w, 64 - self.p)
        np.maximum.at(self.reg_, (np.asarray(slots, np.int64), idx), rank)

    def estimate(self, slots: np.ndarray, other: "HLLBank | None" = None) -> np.ndarray:
        """Cardinality estimates (float64, shape (n,)) of ``slots``; with
        ``other``, of the union of both banks' registers (max-merge)."""
        r = self.reg_[slots]
        if other is not None:
            r = np.maximum(r, other.reg_[slots])
        z = _POW2_NEG[r].sum(axis=1)
        e = self._alpha * self.m * self.m / z
        zeros = np.sum(r == 0, axis=1)
        small = (e <= 2.5 * self.m) & (zeros > 0)
        e[small] = self.m * np.log(self.m / zeros[small])
        return e


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

    def _cols(self, keys: np.ndarray) -> list[np.ndarray]:
        k = np.asarray(keys, np.uint64)
        return [(mix64(k ^ np.uint64(0x5DEECE66D * (d + 1))) & np.uint64(self.width - 1)).astype(np.int64)
                for d in range(self.depth)]

    def add(self, keys: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add ``counts`` (default 1 each) to ``keys`` (uint64, shape (n,))."""
        if len(keys) == 0:
            return
        c = np.ones(len(keys), np.int32) if counts is None else np.asarray(counts, np.int32)
        for d, col in enumerate(self._cols(keys)):
            np.add.at(self.table_[d], col, c)

    def query(self, keys: np.ndarray) -> np.ndarray:
        """Estimated counts (int64, shape (n,))."""
        if len(keys) == 0:
            return np.zeros(0, np.int64)
        cols = self._cols(keys)
        est = self.table_[0][cols[0]].astype(np.int64)
        for d in range(1, self.depth):
            est = np.minimum(est, self.table_[d][cols[d]])
        return est

    def clear(self) -> None:
        """Reset every counter to 0."""
        self.table_[:] = 0


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
        lo = max(int(period.max()), int(self.period_.max())) - self.k + 1
        ps = np.unique(period)
        for p in ps[ps >= lo].tolist():
            j = p % self.k
            if self.period_[j] < p:
                if self.period_[j] >= 0:
                    self.banks[j].clear()
                self.period_[j] = p
            if self.period_[j] == p:
                self.banks[j].add(keys if len(ps) == 1 else keys[period == p])

    def query(self, keys: np.ndarray, period: np.ndarray) -> np.ndarray:
        """Counts of ``keys`` in their ``period`` (0 for periods no longer kept)."""
        period = np.asarray(period, np.int64)
        keys = np.asarray(keys)
        out = np.zeros(len(keys), np.int64)
        ps = np.unique(period)
        for p in ps.tolist():
            j = p % self.k
            if self.period_[j] == p:
                if len(ps) == 1:
                    return self.banks[j].query(keys)
                sel = period == p
                out[sel] = self.banks[j].query(keys[sel])
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
            if arr.shape != b.table_.shape:
                raise ValueError(f"count-min table shape {arr.shape} != {b.table_.shape}")
            b.table_ = arr
