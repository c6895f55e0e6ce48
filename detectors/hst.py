"""HalfSpaceTrees: streaming Half-Space Trees with window-based mass profiles.

Method
    An ensemble of ``n_trees`` complete binary trees of depth ``height``. Each
    internal node halves the work range of one randomly chosen feature. Each
    tree's work range is randomly perturbed around the data range: for every
    feature, with ``sq`` drawn uniformly in ``[lo, hi]``, the range is
    ``sq +- 2 * max(sq - lo, hi - sq)`` (Tan et al. 2011, BuildSingleHS-Tree).
    ``[lo, hi]`` comes from ``limits`` when given, otherwise from the
    per-feature minimum and maximum of the first window.

    Every node keeps two masses: ``r`` (reference, the counts of the last
    complete window) and ``l`` (latest, the window being filled). Learning
    adds 1 to ``l`` along the path of the observation in every tree; every
    ``window_size`` observations ``r <- l`` and ``l <- 0``. The score of ``x``
    uses ``r`` only: in each tree it descends until a leaf or a node with
    ``r < size_limit`` and adds ``r * 2^depth``. The anomaly score reported is
    ``1 - sum / (n_trees * window_size * 2^height)``, in [0, 1], higher = more
    anomalous (river's normalisation), and it is 0 until the first window is
    complete.

    Because ``r`` changes only at window ends, scoring is deterministic between
    them: after each window the score of every leaf (the ``r * 2^depth`` of
    the first qualifying node on its path) is tabulated, and scoring walks each
    tree to a leaf without branches. Learning and scoring are compiled loops (numba) over rows and trees,
    so ``learn_many`` leaves exactly the state of a ``learn_one`` loop and
    ``score_many`` equals a ``score_one`` loop. The trees are drawn from
    ``numpy.random.default_rng(seed)`` when the work range is known.

Parameters
    n_trees: number of trees (default 25, Tan et al.).
    height: depth of every tree (default 10; Tan et al. use 15, river 8).
    window_size: observations per mass window (default 250, Tan et al.).
    size_limit: minimum reference mass for a node to be used, in observations
        (default 0.1 * window_size, Tan et al.).
    limits: optional per-feature ``(lo, hi)``: a dict keyed by feature name or
        an array of shape (d, 2), in feature units. Without it the first
        window fixes the range.
    seed: seed of the tree construction.
    feature_names: optional column order for dict input.

Memory
    Per detector: ``2 * n_trees * (2^(height+1) - 1) * 4`` bytes of masses plus
    ``n_trees * 2^height * 16`` bytes of splits (0.8 MiB at the defaults), and
    ``window_size * d * 8`` bytes of buffer before the first window. Per
    event: none.

Example
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = HalfSpaceTrees(window_size=100, seed=1)
    >>> det.learn_many(rng.normal(size=(1000, 3)))
    >>> inlier = det.score_one({"a": 0.0, "b": 0.0, "c": 0.0})
    >>> outlier = det.score_one({"a": 4.0, "b": -4.0, "c": 4.0})
    >>> bool(outlier > inlier)
    True

Source
    S. C. Tan, K. M. Ting, T. F. Liu, "Fast anomaly detection for streaming
    data", IJCAI 2011.
"""

from __future__ import annotations

from typing import Any, Mapping

import numba as nb
import numpy as np

from detectors.base import Detector

__all__ = ["HalfSpaceTrees"]


@nb.njit
def _learn_kernel(X, feat, split, L, R, state, window, height):
    # state = [observations in current window, completed windows]. Rows are taken
    # in runs that end at window boundaries; within a run the increments commute,
    # so the trees are walked tree by tree (cache-friendly), same result as row by row.
    n = X.shape[0]
    T = feat.shape[0]
    cnt = state[0]
    start = 0
    while start < n:
        stop = min(n, start + window - cnt)
        for t in range(T):
            for k in range(start, stop):
                node = 0
                L[t, 0] += 1
                for _ in range(height):
                    node = 2 * node + 1 + np.int64(X[k, feat[t, node]] >= split[t, node])
                    L[t, node] += 1
        cnt += stop - start
        start = stop
        if cnt == window:
            for t in range(T):
                for j in range(L.shape[1]):
                    R[t, j] = L[t, j]
                    L[t, j] = 0
            cnt = 0
            state[1] += 1
    state[0] = cnt


@nb.njit
def _leaf_table(R, height, size_limit, out):
    # out[t, leaf] = r * 2^depth of the first node on the root-to-leaf path with
    # depth == height or r < size_limit: the tree's score of any x reaching that leaf.
    T, n_nodes = R.shape
    n_int = 2 ** height - 1
    val = np.empty(n_nodes)
    done = np.empty(n_nodes, dtype=np.bool_)
    for t in range(T):
        p2 = 1.0
        for k in range(height + 1):
            for node in range(2 ** k - 1, 2 ** (k + 1) - 1):
                parent = (node - 1) // 2
                if k > 0 and done[parent]:
                    val[node] = val[parent]
                    done[node] = True
                elif k == height or R[t, node] < size_limit:
                    val[node] = R[t, node] * p2
                    done[node] = True
                else:
                    done[node] = False
            p2 *= 2.0
        for leaf in range(n_int + 1):
            out[t, leaf] = val[n_int + leaf]


@nb.njit
def _score_kernel(X, feat, split, table, height, norm, out):
    # Fixed-depth, branch-free walks, four trees side by side; each row sums its
    # trees in order 0..T-1.
    n = X.shape[0]
    T = feat.shape[0]
    n_int = feat.shape[1]
    for k in range(n):
        s = 0.0
        t = 0
        while t + 4 <= T:
            a0 = 0
            a1 = 0
            a2 = 0
            a3 = 0
            for _ in range(height):
                a0 = 2 * a0 + 1 + np.int64(X[k, feat[t, a0]] >= split[t, a0])
                a1 = 2 * a1 + 1 + np.int64(X[k, feat[t + 1, a1]] >= split[t + 1, a1])
                a2 = 2 * a2 + 1 + np.int64(X[k, feat[t + 2, a2]] >= split[t + 2, a2])
                a3 = 2 * a3 + 1 + np.int64(X[k, feat[t + 3, a3]] >= split[t + 3, a3])
            s += table[t, a0 - n_int]
            s += table[t + 1, a1 - n_int]
            s += table[t + 2, a2 - n_int]
            s += table[t + 3, a3 - n_int]
            t += 4
        while t < T:
            node = 0
            for _ in range(height):
                node = 2 * node + 1 + np.int64(X[k, feat[t, node]] >= split[t, node])
            s += table[t, node - n_int]
            t += 1
        out[k] = max(0.0, 1.0 - s / norm)


class HalfSpaceTrees(Detector):
    """Streaming Half-Space Trees (Tan et al. 2011); see the module docstring.

    Attributes:
        feature_: (n_trees, 2^height - 1) split feature of each internal node.
        threshold_: (n_trees, 2^height - 1) split value of each internal node.
        r_mass_, l_mass_: (n_trees, 2^(height+1) - 1) int32 reference / latest masses.
        n_windows_: completed windows.
    """

    def __init__(self, n_trees: int = 25, height: int = 10, window_size: int = 250,
                 size_limit: float | None = None, limits: Any = None, seed: int = 0,
                 feature_names: list[str] | None = None):
        super().__init__(feature_names)
        if int(n_trees) < 1 or not 1 <= int(height) <= 20 or int(window_size) < 1:
            raise ValueError("n_trees >= 1, 1 <= height <= 20 and window_size >= 1 are required")
        self.n_trees = int(n_trees)
        self.height = int(height)
        self.window_size = int(window_size)
        self.size_limit = 0.1 * self.window_size if size_limit is None else float(size_limit)
        self.limits = limits if limits is None or isinstance(limits, Mapping) else np.asarray(limits, float).tolist()
        self.seed = int(seed)
        self.feature_: np.ndarray | None = None
        self.threshold_: np.ndarray | None = None
        self.r_mass_: np.ndarray | None = None
        self.l_mass_: np.ndarray | None = None
        self._state = np.zeros(2, dtype=np.int64)
        self._buffer: list[np.ndarray] = []
        self._n_buffered = 0

    @property
    def n_windows_(self) -> int:
        """Completed mass windows."""
        return int(self._state[1])

    def _ready(self) -> bool:
        return self.n_windows_ >= 1

    # -- construction ------------------------------------------------------------
    def _limits_array(self, d: int) -> np.ndarray:
        if isinstance(self.limits, Mapping):
            names = self._v.names()
            missing = [n for n in names if n not in self.limits]
            if missing:
                raise ValueError(f"limits lacks features {missing}")
            lim = np.array([self.limits[n] for n in names], dtype=np.float64)
        else:
            lim = np.asarray(self.limits, dtype=np.float64)
        if lim.shape != (d, 2) or not np.isfinite(lim).all() or np.any(lim[:, 1] < lim[:, 0]):
            raise ValueError(f"limits must be finite (lo, hi) pairs with lo <= hi for {d} features, got {lim.shape}")
        return lim

    def _build(self, lo: np.ndarray, hi: np.ndarray) -> None:
        d = lo.shape[0]
        span = np.maximum(hi - lo, 1e-9 * np.maximum(1.0, np.abs(hi)))
        hi = lo + span
        rng = np.random.default_rng(self.seed)
        n_int = 2 ** self.height - 1
        T = self.n_trees
        feat = np.zeros((T, n_int), dtype=np.int64)
        thr = np.zeros((T, n_int), dtype=np.float64)
        for t in range(T):
            sq = rng.uniform(lo, hi)
            half = 2.0 * np.maximum(sq - lo, hi - sq)
            mins = np.tile(sq - half, (n_int, 1))
            maxs = np.tile(sq + half, (n_int, 1))
            qs = rng.integers(0, d, size=n_int)
            for node in range(n_int):
                q = qs[node]
                p = 0.5 * (mins[node, q] + maxs[node, q])
                feat[t, node] = q
                thr[t, node] = p
                for child, is_right in ((2 * node + 1, False), (2 * node + 2, True)):
                    if child < n_int:
                        mins[child] = mins[node]
                        maxs[child] = maxs[node]
                        if is_right:
                            mins[child, q] = p
                        else:
                            maxs[child, q] = p
        self.feature_, self.threshold_ = feat, thr
        self._table_key = None
        n_nodes = 2 ** (self.height + 1) - 1
        self.r_mass_ = np.zeros((T, n_nodes), dtype=np.int32)
        self.l_mass_ = np.zeros((T, n_nodes), dtype=np.int32)

    # -- learning and scoring ----------------------------------------------------
    def _learn(self, X: np.ndarray) -> None:
        if self.feature_ is None:
            d = X.shape[1]
            if self.limits is not None:
                lim = self._limits_array(d)
                self._build(lim[:, 0], lim[:, 1])
            else:
                need = self.window_size - self._n_buffered
                self._buffer.append(X[:need].copy())
                self._n_buffered += min(need, X.shape[0])
                if self._n_buffered < self.window_size:
                    return
                B = np.concatenate(self._buffer)
                self._buffer, self._n_buffered = [], 0
                self._build(B.min(axis=0), B.max(axis=0))
                self._kernel(B)
                X = X[need:]
        if X.shape[0]:
            self._kernel(X)

    def _kernel(self, X: np.ndarray) -> None:
        _learn_kernel(X, self.feature_, self.threshold_, self.l_mass_, self.r_mass_, self._state,
                      self.window_size, self.height)

    def _table(self) -> np.ndarray:
        """Per-leaf tree scores from the reference masses, rebuilt when a window completes."""
        key = self.n_windows_
        if getattr(self, "_table_key", None) != key:
            self._leaf_scores = np.empty((self.n_trees, 2 ** self.height))
            _leaf_table(self.r_mass_, self.height, self.size_limit, self._leaf_scores)
            self._table_key = key
        return self._leaf_scores

    def _score(self, X: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape[0])
        norm = float(self.n_trees * self.window_size * 2 ** self.height)
        _score_kernel(X, self.feature_, self.threshold_, self._table(), self.height, norm, out)
        return out

    # -- snapshots -----------------------------------------------------------------
    def _params(self) -> dict:
        return {"n_trees": self.n_trees, "height": self.height, "window_size": self.window_size,
                "size_limit": self.size_limit, "limits": self.limits, "seed": self.seed}

    def _get_state(self) -> dict:
        buf = np.concatenate(self._buffer) if self._buffer else None
        return {"state": self._state.copy(), "buffer": buf, "feature": self.feature_,
                "threshold": self.threshold_, "r_mass": self.r_mass_, "l_mass": self.l_mass_}

    def _set_state(self, s: Mapping[str, Any]) -> None:
        self._table_key = None
        self._state = np.array(s["state"], dtype=np.int64)
        buf = s["buffer"]
        self._buffer = [] if buf is None else [np.array(buf, dtype=np.float64)]
        self._n_buffered = 0 if buf is None else int(np.asarray(buf).shape[0])
        conv = {"feature": np.int64, "threshold": np.float64, "r_mass": np.int32, "l_mass": np.int32}
        for key, dt in conv.items():
            v = s[key]
            setattr(self, f"{key}_",
                    None if v is None else np.ascontiguousarray(np.array(v, dtype=dt)))
