"""SlidingWindowIForest: an isolation forest refit periodically on a sliding window.

Method
    The last ``window_size`` learned observations are kept in a ring buffer.
    A new forest is fit on that window (the engine is scikit-learn's
    ``IsolationForest``, or PyOD's ``IForest`` which wraps it) when
    ``warmup`` observations have been learned and then every ``refit_every``
    observations (at ``n_seen % refit_every == 0``). Fit number ``k`` (0, 1,
    ...) uses ``random_state = seed + k``, so the forests are reproducible.

    Between refits the forest is fixed and rows are scored in batches. The
    score is the isolation score of Liu et al. (2008)::

        s(x) = 2 ** (-E[h(x)] / c(max_samples))

    in (0, 1], higher = more anomalous (about 0.5 or less for inliers); it is
    exactly ``-IsolationForest.score_samples(x)`` of the engine's forest. It is
    0 before the first fit. To score fast on one core, the fitted trees are
    flattened into arrays and walked by a compiled loop (numba) that follows
    scikit-learn's rules (float32 features, ``x <= threshold`` goes left, leaf
    value ``depth + c(n_node_samples) - 1``, trees summed in order), so the
    scores agree with the engine to floating-point rounding. The trees are
    laid out as complete heaps of the forest's depth (a leaf above that depth
    is padded with always-left nodes carrying its value), so the walk has a
    fixed number of branch-free steps.

    ``learn_many`` splits the batch at refit points, so it leaves the state of
    a ``learn_one`` loop (same windows, same seeds, same forests).

    Snapshots hold the window, the training window of the current forest and
    the fit counter, never the forest object: ``load_state_dict`` refits the
    forest from the stored training window with the stored seed, which gives
    the same trees (scikit-learn fitting is deterministic given
    ``random_state``).

Parameters
    window_size: observations in the sliding window (default 10,000).
    refit_every: observations between refits (default 50,000). One
        scikit-learn fit of 100 trees costs about 0.25 s on one core here
        whatever the window size (per-tree overhead), so refitting more often
        than every ~50k events keeps batch throughput under 100k events/s.
    warmup: observations before the first fit (default 256).
    n_estimators: trees per forest (default 100, Liu et al.).
    max_samples: sub-sample size per tree (default 256, Liu et al.).
    engine: "sklearn" or "pyod".
    seed: base random_state of the fits.
    feature_names: optional column order for dict input.

Memory
    Per detector: ``2 * window_size * d * 8`` bytes of windows (2.5 MiB for
    d = 16 at the defaults) plus the forest: the engine's trees and the heap
    copy, ``n_estimators * 2^depth * 24`` bytes (0.6 MiB for depth 8). Per
    event: none.

Example
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = SlidingWindowIForest(window_size=1000, refit_every=500, n_estimators=50, seed=0)
    >>> det.learn_many(rng.normal(size=(1500, 2)))
    >>> s = det.score_many(np.array([[0.0, 0.0], [6.0, -6.0]]))
    >>> bool(s[1] > s[0])
    True

Sources
    F. T. Liu, K. M. Ting, Z.-H. Zhou, "Isolation Forest", ICDM 2008;
    scikit-learn ``sklearn.ensemble.IsolationForest`` (Pedregosa et al., JMLR
    2011); PyOD ``pyod.models.iforest.IForest`` (Zhao et al., JMLR 2019).
"""

from __future__ import annotations

from typing import Any, Mapping

import numba as nb
import numpy as np
from detectors.base import Detector

__all__ = ["SlidingWindowIForest"]


@nb.njit
def _depth_kernel(X, feat, thr, leafval, depth, out):
    # Complete-heap trees of fixed depth: internal node h has children 2h+1, 2h+2;
    # padded nodes have thr = +inf (always left) and copy their leaf's value.
    # Four trees are walked side by side (independent load chains overlap); the
    # leaf values are still added in tree order, as scikit-learn does.
    n = X.shape[0]
    T = feat.shape[0]
    n_int = feat.shape[1]
    for r in range(n):
        acc = 0.0
        t = 0
        while t + 4 <= T:
            a0 = 0
            a1 = 0
            a2 = 0
            a3 = 0
            for _ in range(depth):
                a0 = 2 * a0 + 1 + np.int64(X[r, feat[t, a0]] > thr[t, a0])
                a1 = 2 * a1 + 1 + np.int64(X[r, feat[t + 1, a1]] > thr[t + 1, a1])
                a2 = 2 * a2 + 1 + np.int64(X[r, feat[t + 2, a2]] > thr[t + 2, a2])
                a3 = 2 * a3 + 1 + np.int64(X[r, feat[t + 3, a3]] > thr[t + 3, a3])
            acc += leafval[t, a0 - n_int]
            acc += leafval[t + 1, a1 - n_int]
            acc += leafval[t + 2, a2 - n_int]
            acc += leafval[t + 3, a3 - n_int]
            t += 4
        while t < T:
            node = 0
            for _ in range(depth):
                node = 2 * node + 1 + np.int64(X[r, feat[t, node]] > thr[t, node])
            acc += leafval[t, node - n_int]
            t += 1
        out[r] = acc


def _to_heap(tree, leaf_values: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay a fitted sklearn tree out as a complete heap of the given depth (shapes (2^D-1,), (2^D-1,), (2^D,))."""
    tr = tree.tree_
    n_int = 2 ** depth - 1
    feat = np.zeros(n_int, dtype=np.int64)
    thr = np.full(n_int, np.inf)
    leaves = np.zeros(2 ** depth)
    left, right = tr.children_left, tr.children_right
    stack = [(0, 0, 0)]  # (sklearn node, heap index, depth)
    while stack:
        node, h, k = stack.pop()
        if left[node] == -1:
            # leaf at depth k: every heap leaf below h gets its value
            first = h
            for _ in range(depth - k):
                first = 2 * first + 1
            width = 2 ** (depth - k)
            leaves[first - n_int:first - n_int + width] = leaf_values[node]
            continue
        feat[h] = tr.feature[node]
        thr[h] = tr.threshold[node]
        stack.append((left[node], 2 * h + 1, k + 1))
        stack.append((right[node], 2 * h + 2, k + 1))
    return feat, thr, leaves


class SlidingWindowIForest(Detector):
    """Isolation forest refit every ``refit_every`` events on a sliding window; see the module docstring.

    Attributes:
        model_: the engine's fitted estimator (sklearn ``IsolationForest`` or PyOD ``IForest``), or None.
        n_seen_: observations learned.
        n_fits_: forests fitted so far.
        train_window_: (m, d) rows the current forest was fit on.
    """

    def __init__(self, window_size: int = 10_000, refit_every: int = 50_000, warmup: int = 256,
                 n_estimators: int = 100, max_samples: int = 256, engine: str = "sklearn", seed: int = 0,
                 feature_names: list[str] | None = None):
        super().__init__(feature_names)
        if engine not in ("sklearn", "pyod"):
            raise ValueError(f"engine must be 'sklearn' or 'pyod', got {engine!r}")
        if min(int(window_size), int(refit_every), int(warmup), int(n_estimators), int(max_samples)) < 1:
            raise ValueError("window_size, refit_every, warmup, n_estimators and max_samples must be >= 1")
        if int(warmup) < 2:
            raise ValueError("warmup must be >= 2")
        self.window_size = int(window_size)
        self.refit_every = int(refit_every)
        self.warmup = int(warmup)
        self.n_estimators = int(n_estimators)
        self.max_samples = int(max_samples)
        self.engine = engine
        self.seed = int(seed)
        self.model_ = None
        self.n_seen_ = 0
        self.n_fits_ = 0
        self.train_window_: np.ndarray | None = None
        self._ring: np.ndarray | None = None

    def _ready(self) -> bool:
        return self.model_ is not None

    # -- engine ----------------------------------------------------------------------
    def _make_engine(self, seed: int):
        if self.engine == "sklearn":
            from sklearn.ensemble import IsolationForest  # imported lazily: sklearn takes ~2 s to import

            return IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                   random_state=seed, n_jobs=1)
        from pyod.models.iforest import IForest

        return IForest(n_estimators=self.n_estimators, max_samples=self.max_samples, random_state=seed, n_jobs=1)

    def _fit(self, W: np.ndarray, seed: int) -> None:
        import warnings

        from sklearn.ensemble._iforest import _average_path_length

        model = self._make_engine(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # max_samples > n_samples is clipped by sklearn
            model.fit(W)
        forest = model if self.engine == "sklearn" else model.detector_
        depth = max(1, max(t.tree_.max_depth for t in forest.estimators_))
        parts = [_to_heap(tree, dpl + apl - 1.0, depth) for tree, dpl, apl in
                 zip(forest.estimators_, forest._decision_path_lengths, forest._average_path_length_per_tree)]
        self._forest = (np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]),
                        np.stack([p[2] for p in parts]), depth)
        self._denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])
        self.model_ = model
        self.train_window_ = W

    def _window(self) -> np.ndarray:
        m = min(self.n_seen_, self.window_size)
        start = (self.n_seen_ - m) % self.window_size
        idx = (start + np.arange(m)) % self.window_size
        return self._ring[idx].copy()

    # -- learning / scoring ------------------------------------------------------------
    def _next_fit_at(self) -> int:
        n = self.n_seen_
        nxt = (n // self.refit_every + 1) * self.refit_every
        return self.warmup if n < self.warmup else nxt

    def _learn(self, X: np.ndarray) -> None:
        if self._ring is None:
            self._ring = np.zeros((self.window_size, X.shape[1]))
        i = 0
        n = X.shape[0]
        while i < n:
            take = min(n - i, self._next_fit_at() - self.n_seen_)
            rows = X[i:i + take]
            pos = (self.n_seen_ + np.arange(take)) % self.window_size
            if take > self.window_size:  # only the last window_size rows survive
                rows, pos = rows[-self.window_size:], pos[-self.window_size:]
            self._ring[pos] = rows
            self.n_seen_ += take
            i += take
            if self.n_seen_ == self._fit_point():
                self._fit(self._window(), self.seed + self.n_fits_)
                self.n_fits_ += 1

    def _fit_point(self) -> int:
        n = self.n_seen_
        return n if (n == self.warmup or (n > self.warmup and n % self.refit_every == 0)) else -1

    def _score(self, X: np.ndarray) -> np.ndarray:
        feat, thr, val, depth = self._forest
        Xf = np.ascontiguousarray(X.astype(np.float32))
        depths = np.zeros(X.shape[0])
        _depth_kernel(Xf, feat, thr, val, depth, depths)
        den = self._denominator
        return 2 ** (-np.divide(depths, den, out=np.ones_like(depths), where=den != 0))

    # -- snapshots -------------------------------------------------------------------------
    def _params(self) -> dict:
        return {"window_size": self.window_size, "refit_every": self.refit_every, "warmup": self.warmup,
                "n_estimators": self.n_estimators, "max_samples": self.max_samples, "engine": self.engine,
                "seed": self.seed}

    def _get_state(self) -> dict:
        return {"n_seen": self.n_seen_, "n_fits": self.n_fits_,
                "ring": None if self._ring is None else self._ring.copy(),
                "train_window": None if self.train_window_ is None else self.train_window_.copy()}

    def _set_state(self, s: Mapping[str, Any]) -> None:
        self.n_seen_ = int(s["n_seen"])
        self.n_fits_ = int(s["n_fits"])
        self._ring = None if s["ring"] is None else np.array(s["ring"], dtype=np.float64)
        self.model_ = None
        self.train_window_ = None
        if s["train_window"] is not None:
            self._fit(np.array(s["train_window"], dtype=np.float64), self.seed + self.n_fits_ - 1)
