"""MIDAS, MIDAS-R and MIDAS-F: microcluster (burst) detection in edge streams.

Method
    Each edge ``(src, dst)`` arriving at tick ``t`` is hashed into count-min
    sketches (CMS) of ``n_rows`` x ``n_buckets`` cells. With ``a`` the edge's
    count in the current tick and ``s`` its count over all ticks so far, the
    score is the chi-squared goodness-of-fit statistic of the papers::

        X^2 = (a - s/t)^2 * t^2 / (s * (t - 1))        (0 when s == 0 or t == 1)

    - ``MIDAS``: current counts are reset when the tick changes.
    - ``MIDASR`` (relational): current counts are multiplied by ``factor`` when
      the tick changes instead of being reset, and the same statistic is also
      computed for the source node and the destination node (node sketches);
      the score is the largest of the three.
    - ``MIDASF`` (filtering): like MIDAS-R, but the total counts exclude the
      current tick and are merged in only at a tick change, and only for cells
      whose last score is below ``threshold``; a cell whose last score reached
      the threshold adds the running mean ``total / (t - 1)`` instead, so an
      attack does not poison the "normal" totals. Its statistic uses the
      totals of earlier ticks: ``(a + s - a*t)^2 / (s * (t - 1))``.

    Each edge is counted and then scored, exactly in the order of the authors'
    per-edge loop (``src/NormalCore.hpp``, ``src/RelationalCore.hpp``,
    ``src/FilteringCore.hpp`` of https://github.com/Stream-AD/MIDAS). The loop is
    compiled with numba, so ``score_edges`` on a whole array returns exactly what
    it returns when called one edge at a time, and the state carries across calls.

    Deliberate departures from the C++ reference: counts are float64 (the
    reference uses float32, whose counts stop being exact above 2^24), and the
    hash is a seeded splitmix64 mix rather than ``rand()``-seeded affine hashing,
    so bucket choices (not semantics) differ.

Parameters
    n_rows: hash functions per sketch (default 2, as the authors' demo).
    n_buckets: buckets per row (default 1024, as the authors' demo). Raise it
        when the stream holds many distinct edges: collisions inflate counts.
    factor (MIDASR, MIDASF): decay of current counts per tick change, in (0, 1).
    threshold (MIDASF): score at or above which a cell's current count is not
        merged into its total (default 1e3, as the authors' demo).
    seed: seed of the hash functions; instances with the same seed and sizes
        give the same scores.

Input (CONVENTIONS.md, edge-stream detectors)
    ``src``, ``dst``, ``t``: int64 arrays of equal length (``hash_ids`` maps
    string ids such as account or track ids to stable int64). ``t`` counts ticks
    (e.g. minutes) from the stream's first edge, starting at 1; it must not
    decrease (the caller clamps late edges to the largest tick so far).

Memory
    Per detector: ``n_rows * n_buckets * 8`` bytes per sketch; MIDAS keeps 2
    sketches (32 KiB at the defaults), MIDAS-R 6 (96 KiB), MIDAS-F 9 (144 KiB).
    Per edge or entity: 0 bytes (constant memory); per call, O(n) for the output.

Example
    >>> import numpy as np
    >>> m = MIDASR(n_rows=2, n_buckets=1024, seed=7)
    >>> src = np.array([1, 1, 2, 1, 1, 1, 1], dtype=np.int64)
    >>> dst = np.array([5, 5, 6, 5, 5, 5, 5], dtype=np.int64)
    >>> t = np.array([1, 2, 2, 3, 3, 3, 3], dtype=np.int64)
    >>> s = m.score_edges(src, dst, t)
    >>> bool(s[-1] > s[1])          # edge (1, 5) bursts in tick 3
    True
    >>> m2 = MIDASR(seed=7)
    >>> one = np.concatenate([m2.score_edges(src[i:i+1], dst[i:i+1], t[i:i+1]) for i in range(7)])
    >>> bool(np.array_equal(one, s))
    True

Sources
    S. Bhatia, B. Hooi, M. Yoon, K. Shin, C. Faloutsos, "MIDAS: Microcluster-Based
    Detector of Anomalies in Edge Streams", AAAI 2020.
    S. Bhatia, R. Liu, B. Hooi, M. Yoon, K. Shin, C. Faloutsos, "Real-time
    Streaming Anomaly Detection in Dynamic Graphs", IEEE TKDE / ACM TKDD 2022
    (MIDAS-F). G. Cormode, S. Muthukrishnan, "An improved data stream summary:
    the count-min sketch and its applications", J. Algorithms 2005.
"""

from __future__ import annotations

from typing import Any, Mapping

import numba as nb
import numpy as np

__all__ = ["MIDAS", "MIDASR", "MIDASF", "hash_ids"]

@nb.njit(inline="always")
def _mix(z):
    # splitmix64 finaliser (Steele, Lea, Flood 2014); uint64 arithmetic wraps.
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(inline="always")
def _bucket(key_a, key_b, salt, n_buckets):
    z = np.uint64(key_a) * np.uint64(0x9E3779B97F4A7C15) + _mix(np.uint64(key_b) ^ salt)
    return np.int64(_mix(z + salt) % np.uint64(n_buckets))


@nb.njit(inline="always")
def _chi2_total(a, s, t):
    # NormalCore / RelationalCore: s includes the current tick.
    if s == 0.0 or t == 1.0:
        return 0.0
    d = (a - s / t) * t
    return d * d / (s * (t - 1.0))


@nb.njit(inline="always")
def _chi2_prev(a, s, t):
    # FilteringCore: s holds earlier ticks only (if t == 1 then s == 0).
    if s == 0.0:
        return 0.0
    d = a + s - a * t
    return d * d / (s * (t - 1.0))


@nb.njit
def _run_normal(src, dst, t, salts, cur, tot, tick, out):
    r, c = cur.shape
    now = tick[0]
    for k in range(src.shape[0]):
        tk = t[k]
        if tk > now:
            for i in range(r):
                for j in range(c):
                    cur[i, j] = 0.0
            now = tk
        a = np.inf
        s = np.inf
        for i in range(r):
            j = _bucket(src[k], dst[k], salts[i], c)
            cur[i, j] += 1.0
            tot[i, j] += 1.0
            if cur[i, j] < a:
                a = cur[i, j]
            if tot[i, j] < s:
                s = tot[i, j]
        out[k] = _chi2_total(a, s, float(tk))
    tick[0] = now


@nb.njit
def _run_relational(src, dst, t, salts, cur, tot, factor, tick, out):
    # cur, tot: (3, r, c) for edge, source, destination sketches.
    _, r, c = cur.shape
    now = tick[0]
    for k in range(src.shape[0]):
        tk = t[k]
        if tk > now:
            for q in range(3):
                for i in range(r):
                    for j in range(c):
                        cur[q, i, j] *= factor
            now = tk
        tf = float(tk)
        best = 0.0
        for q in range(3):
            a = np.inf
            s = np.inf
            for i in range(r):
                if q == 0:
                    j = _bucket(src[k], dst[k], salts[q, i], c)
                elif q == 1:
                    j = _bucket(src[k], 0, salts[q, i], c)
                else:
                    j = _bucket(dst[k], 0, salts[q, i], c)
                cur[q, i, j] += 1.0
                tot[q, i, j] += 1.0
                if cur[q, i, j] < a:
                    a = cur[q, i, j]
                if tot[q, i, j] < s:
                    s = tot[q, i, j]
            v = _chi2_total(a, s, tf)
            if v > best:
                best = v
        out[k] = best
    tick[0] = now


@nb.njit
def _run_filtering(src, dst, t, salts, cur, tot, scr, factor, threshold, tick, recip, out):
    _, r, c = cur.shape
    idx = np.empty(r, dtype=np.int64)
    now = tick[0]
    rec = recip[0]
    for k in range(src.shape[0]):
        tk = t[k]
        if tk > now:
            for q in range(3):
                for i in range(r):
                    for j in range(c):
                        if scr[q, i, j] < threshold:
                            tot[q, i, j] += cur[q, i, j]
                        else:
                            tot[q, i, j] += tot[q, i, j] * rec
                        cur[q, i, j] *= factor
            rec = 1.0 / (tk - 1.0)
            now = tk
        tf = float(tk)
        best = 0.0
        for q in range(3):
            a = np.inf
            s = np.inf
            for i in range(r):
                if q == 0:
                    j = _bucket(src[k], dst[k], salts[q, i], c)
                elif q == 1:
                    j = _bucket(src[k], 0, salts[q, i], c)
                else:
                    j = _bucket(dst[k], 0, salts[q, i], c)
                idx[i] = j
                cur[q, i, j] += 1.0
                if cur[q, i, j] < a:
                    a = cur[q, i, j]
                if tot[q, i, j] < s:
                    s = tot[q, i, j]
            v = _chi2_prev(a, s, tf)
            for i in range(r):
                scr[q, i, idx[i]] = v
            if v > best:
                best = v
        out[k] = best
    tick[0] = now
    recip[0] = rec


def hash_ids(values: Any) -> np.ndarray:
    """Map node identifiers (str, bytes or int, e.g. account or track ids) to stable int64 ids.

    The id is the first 8 bytes of BLAKE2b of the UTF-8 text, so it is the same in
    every process and across restarts (unlike Python's ``hash``), as snapshots need.

    Args:
        values: iterable of n identifiers.

    Returns:
        int64 array of shape (n,).

    Raises:
        ValueError: an identifier of another type (or None).

    >>> hash_ids(["acct-1", "acct-1", "acct-2"]).tolist()[0] == hash_ids(["acct-1"]).tolist()[0]
    True

    Source: BLAKE2 (RFC 7693) via ``hashlib.blake2b``.
    """
    import hashlib

    vals = list(values)
    out = np.empty(len(vals), dtype=np.int64)
    cache: dict = {}
    for i, v in enumerate(vals):
        h = cache.get(v)
        if h is None:
            if isinstance(v, bytes):
                b = v
            elif isinstance(v, (str, int, np.integer)) and not isinstance(v, bool):
                b = str(v).encode("utf-8")
            else:
                raise ValueError(f"node id at position {i} must be str, bytes or int, got {type(v).__name__}")
            h = int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little", signed=True)
            cache[v] = h
        out[i] = h
    return out


def _as_int64(name: str, a: Any) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except Exception as exc:  # pragma: no cover - defensive
        raise ValueError(f"{name} is not an array: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"wrong shape: {name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or inf")
        if not np.array_equal(arr, np.floor(arr)):
            raise ValueError(f"{name} must hold integers")
    elif arr.dtype.kind not in "iub":
        if arr.size:
            raise ValueError(f"{name} must be an int64 array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


class MIDAS:
    """MIDAS (Bhatia et al., AAAI 2020): per-edge chi-squared burst score from count-min sketches.

    See the module docstring for the method, parameters, memory and sources.

    Parameters:
        n_rows: hash functions per sketch (>= 1).
        n_buckets: buckets per hash function (>= 1).
        seed: hash seed.

    Attributes:
        tick_: the current tick (1 before the first edge).
        n_edges_: edges scored so far.
    """

    _n_sketch = 1

    def __init__(self, n_rows: int = 2, n_buckets: int = 1024, seed: int = 0):
        if int(n_rows) < 1 or int(n_buckets) < 1:
            raise ValueError(f"n_rows and n_buckets must be >= 1, got {n_rows}, {n_buckets}")
        self.n_rows = int(n_rows)
        self.n_buckets = int(n_buckets)
        self.seed = int(seed)
        self._reset()

    def _reset(self) -> None:
        rng = np.random.default_rng(self.seed)
        shape = (3, self.n_rows) if self._n_sketch == 3 else (self.n_rows,)
        self._salts = rng.integers(0, 2**63 - 1, size=shape, dtype=np.int64).astype(np.uint64)
        sk = (3, self.n_rows, self.n_buckets) if self._n_sketch == 3 else (self.n_rows, self.n_buckets)
        self.current_ = np.zeros(sk, dtype=np.float64)
        self.total_ = np.zeros(sk, dtype=np.float64)
        self._tick = np.ones(1, dtype=np.int64)
        self.n_edges_ = 0

    @property
    def tick_(self) -> int:
        """Current tick (1 before the first edge)."""
        return int(self._tick[0])

    def _check(self, src: Any, dst: Any, t: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = _as_int64("src", src)
        d = _as_int64("dst", dst)
        tt = _as_int64("t", t)
        if not (s.shape[0] == d.shape[0] == tt.shape[0]):
            raise ValueError(f"src, dst and t must have equal length, got {s.shape[0]}, {d.shape[0]}, {tt.shape[0]}")
        if tt.size:
            if tt.min() < 1:
                raise ValueError("t counts ticks from 1; got a tick < 1")
            if tt[0] < self._tick[0]:
                raise ValueError(f"t decreased: tick {int(tt[0])} after tick {int(self._tick[0])}; clamp late edges")
            if tt.size > 1 and np.any(np.diff(tt) < 0):
                raise ValueError("t must be non-decreasing; clamp late edges to the largest tick so far")
        return s, d, tt

    def score_edges(self, src: Any, dst: Any, t: Any) -> np.ndarray:
        """Count then score each edge in order; returns float64 scores of shape (n,).

        Args:
            src: int64 (n,) source node ids (e.g. account ids mapped to ints).
            dst: int64 (n,) destination node ids.
            t: int64 (n,) ticks from 1, non-decreasing, not below the current tick.

        Raises:
            ValueError: unequal lengths, non-integer values, t < 1 or decreasing t.
        """
        s, d, tt = self._check(src, dst, t)
        out = np.empty(s.shape[0], dtype=np.float64)
        if s.shape[0]:
            self._run(s, d, tt, out)
            self.n_edges_ += int(s.shape[0])
        return out

    def _run(self, s, d, tt, out) -> None:
        _run_normal(s, d, tt, self._salts, self.current_, self.total_, self._tick, out)

    # -- snapshots -------------------------------------------------------------
    def _params(self) -> dict:
        return {"n_rows": self.n_rows, "n_buckets": self.n_buckets, "seed": self.seed}

    def state_dict(self) -> dict:
        """Snapshot with parameters, sketches, score memory and tick (plain values and arrays)."""
        """Snapshot with parameters, sketches, current tick (plain values and arrays)."""
        st = {"detector": type(self).__name__, "version": 1, "params": self._params(),
              "tick": int(self._tick[0]), "n_edges": self.n_edges_,
              "current": self.current_.copy(), "total": self.total_.copy()}
        return st

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a snapshot of the same class.

        Raises:
            ValueError: snapshot of another class, or sketch shapes that do not match.
        """
        if state.get("detector") != type(self).__name__:
            raise ValueError(f"snapshot is of {state.get('detector')!r}, not {type(self).__name__!r}")
        for k, v in state["params"].items():
            setattr(self, k, v)
        self._reset()
        for name, attr in (("current", "current_"), ("total", "total_")):
            arr = np.asarray(state[name], dtype=np.float64)
            if arr.shape != getattr(self, attr).shape:
                raise ValueError(f"snapshot {name} has shape {arr.shape}, expected {getattr(self, attr).shape}")
            setattr(self, attr, np.ascontiguousarray(arr).copy())
        self._tick[0] = int(state["tick"])
        self.n_edges_ = int(state["n_edges"])
        self._load_extra(state)

    def _load_extra(self, state: Mapping) -> None:
        pass


class MIDASR(MIDAS):
    """MIDAS-R (Bhatia et al., AAAI 2020): decayed current counts plus source/destination node scores.

    Parameters:
        n_rows, n_buckets, seed: as :class:`MIDAS`.
        factor: multiplier of the current counts at each tick change, in (0, 1).

    Sketch arrays ``current_`` and ``total_`` have shape (3, n_rows, n_buckets):
    edge, source node, destination node.
    """

    _n_sketch = 3

    def __init__(self, n_rows: int = 2, n_buckets: int = 1024, factor: float = 0.5, seed: int = 0):
        if not 0.0 < float(factor) < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.factor = float(factor)
        super().__init__(n_rows=n_rows, n_buckets=n_buckets, seed=seed)

    def _params(self) -> dict:
        return {**super()._params(), "factor": self.factor}

    def _run(self, s, d, tt, out) -> None:
        _run_relational(s, d, tt, self._salts, self.current_, self.total_, self.factor, self._tick, out)


class MIDASF(MIDAS):
    """MIDAS-F (Bhatia et al., TKDD 2022): MIDAS-R whose totals filter out anomalous counts.

    Parameters:
        n_rows, n_buckets, seed: as :class:`MIDAS`.
        factor: multiplier of the current counts at each tick change, in (0, 1).
        threshold: score at or above which a cell's current count is replaced by
            the running mean ``total / (t - 1)`` when merged into its total.
    """

    _n_sketch = 3

    def __init__(self, n_rows: int = 2, n_buckets: int = 1024, factor: float = 0.5,
                 threshold: float = 1e3, seed: int = 0):
        if not 0.0 < float(factor) < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if not np.isfinite(threshold) or float(threshold) <= 0:
            raise ValueError(f"threshold must be a positive finite number, got {threshold}")
        self.factor = float(factor)
        self.threshold = float(threshold)
        super().__init__(n_rows=n_rows, n_buckets=n_buckets, seed=seed)

    def _reset(self) -> None:
        super()._reset()
        self.score_ = np.zeros_like(self.current_)
        self._recip = np.zeros(1, dtype=np.float64)

    def _params(self) -> dict:
        return {**super()._params(), "factor": self.factor, "threshold": self.threshold}

    def _run(self, s, d, tt, out) -> None:
        _run_filtering(s, d, tt, self._salts, self.current_, self.total_, self.score_, self.factor,
                       self.threshold, self._tick, self._recip, out)

    def state_dict(self) -> dict:
        st = super().state_dict()
        st["score"] = self.score_.copy()
        st["recip"] = float(self._recip[0])
        return st

    def _load_extra(self, state: Mapping) -> None:
        arr = np.asarray(state["score"], dtype=np.float64)
        if arr.shape != self.current_.shape:
            raise ValueError(f"snapshot score has shape {arr.shape}, expected {self.current_.shape}")
        self.score_ = np.ascontiguousarray(arr).copy()
        self._recip[0] = float(state["recip"])
