"""SlidingWindowIForest: an isolation forest refit periodically on a sliding window.

Method
    The last ``window_size`` learned observations are kept in a ring buffer.
    A new forest is fit on that window (the engine is scikit-learn's
    ``IsolationForest``, or PyOD's ``IForest`` which wraps it) when
    ``warmup`` observations have been learned and then every ``refit_every``
    observations (at ``n_seen % refit_every == 0``). Fit number ``k`` (0, 1,
    ...) uses ``random_state = seed + k``, so the forests are reproducible.
    With the defaults (``window_size == refit_every``) the windows tile the
    stream: each forest is fit on exactly the events since the previous fit,
    so its sub-samples are drawn uniformly from that whole period (not only
    from its last minutes, which a burst just before the refit could fill).

    Between refits the forest is fixed and rows are scored in batches. The
    score is the isolation score of Liu et al. (2008)::

        s(x) = 2 ** (-E[h(x)] / c(max_samples))

    in (0, 1], higher = more anomalous (about 0.5 or less for inliers); it is
    exactly ``-IsolationForest.score_samples(x)`` of the engine's forest, bit
    for bit. It is 0 before the first fit.

Fast exact scoring
    The fitted trees are copied into complete heaps of the forest's depth (a
    leaf above that depth is padded with always-left nodes carrying its
    value) and walked by a compiled loop (numba) that takes scikit-learn's
    decisions exactly:

    * scikit-learn compares float32 features with float64 thresholds
      (``x <= t`` goes left). Each threshold is rounded toward -inf to the
      largest float32 ``r <= t``; for a float32 ``x``, ``x <= t`` iff
      ``x <= r``. Features and thresholds are then compared as
      order-preserving uint32 keys of their float32 bits (-0.0 mapped to
      +0.0), and a node is one uint64 (threshold key, feature index), one load.
    * Rows go in blocks of 128; each tree is walked level by level for the
      whole block (independent rows overlap in the CPU, the tree stays in L1).
    * The leaf term ``depth + c(n_node_samples) - 1`` is computed with
      scikit-learn's own arrays and operations, and the terms are added tree
      after tree, in scikit-learn's order; no ``fastmath``.

    About 0.6 us per row for 100 trees of depth 8 on one core here, four
    times the previous per-row walk.

    ``learn_many`` splits the batch at refit points, so it leaves the state of
    a ``learn_one`` loop (same windows, same seeds, same forests).

    The window is stored in float32, the dtype the engine converts its input
    to before growing trees, so the forest is the one scikit-learn grows on
    the float64 rows. Values beyond the float32 range (|x| > 3.4e38) are
    refused with ``ValueError`` by ``learn_*`` (the engine would refuse them).

    Snapshots hold the window, the training window of the current forest and
    the fit counter, never the forest object: ``load_state_dict`` refits the
    forest from the stored training window with the stored seed, which gives
    the same trees (scikit-learn fitting is deterministic given
    ``random_state``).

Parameters
    window_size: observations in the sliding window (default 200,000).
    refit_every: observations between refits (default 200,000). One
        scikit-learn fit of 100 trees costs 0.13 to 0.25 s of CPU on one core
        here whatever the window (per-tree Python overhead in scikit-learn:
        about 0.13 s up to a 25,600-row window, where it samples by
        permutation, up to 0.25 s for 200k rows, where it draws each tree's
        256 indices one by one), i.e. ``fit / refit_every`` per event: about
        1.2 us at the default, on top of about 0.6 us of scoring. Refitting
        every 200k events keeps the detector above 10x river's per-event loop
        (``bench/detectors.py``); at 1,000 events/s that is a new forest every
        3.3 minutes. ``window_size=refit_every=10_000`` would need 1.2 MiB but
        spend ~15 us per event on fits.
    warmup: observations before the first fit (default 256).
    n_estimators: trees per forest (default 100, Liu et al.).
    max_samples: sub-sample size per tree (default 256, Liu et al.).
    engine: "sklearn" or "pyod" (PyOD's ``fit`` also scores the whole
        training window, a few times the cost of scikit-learn's fit).
    seed: base random_state of the fits.
    feature_names: optional column order for dict input.

Memory
    Per detector: ``2 * window_size * d * 4`` bytes of float32 windows (the
    ring and the current forest's training window: 24.4 MiB for d = 16 at
    the defaults; 1.2 MiB with ``window_size=10_000``), plus the forest: the
    engine's trees and the heap copy, ``n_estimators * 2^depth * 16`` bytes
    (0.4 MiB for depth 8). Snapshots are about the size of the two windows.
    Per event: none.

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
    Level-by-level batch traversal of tree ensembles: Asadi, Lin, de Vries,
    "Runtime optimizations for tree-based machine learning models", IEEE TKDE
    2014; order-preserving integer keys of IEEE floats as in radix sorts
    (Terdiman 2000, Herf 2001).
"""

from __future__ import annotations

from typing import Any, Mapping

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from detectors.base import Detector

__all__ = ["SlidingWindowIForest"]

_SIGN = np.uint32(0x80000000)
_LOW32 = np.uint64(0xFFFFFFFF)
_F32_MAX = float(np.finfo(np.float32).max)


def _keys_of_float32(a: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of a float32 array (same shape): ``a <= b`` iff ``key(a) <= key(b)``.

    -0.0 is first turned into +0.0 (they compare equal as floats); NaN is not allowed.
    """
    b = (np.asarray(a, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(b >= _SIGN, ~b, b | _SIGN).astype(np.uint32)


def _threshold_keys(t: np.ndarray) -> np.ndarray:
    """Keys (uint32) of float64 thresholds rounded toward -inf to float32, shape of ``t``.

    For a float32 ``x`` and a float64 ``t``, ``x <= t`` iff ``x <= r`` where ``r`` is the
    largest float32 ``<= t``; so comparing keys of float32 inputs with these keys takes
    exactly scikit-learn's decisions (float32 X against float64 thresholds).
    """
    with np.errstate(over="ignore"):
        r = t.astype(np.float32)
    over = r.astype(np.float64) > t
    r[over] = np.nextafter(r[over], np.float32(-np.inf))
    return _keys_of_float32(r)


@intrinsic
def _f32_bits(typingctx, x):
    """The IEEE-754 bits of a float32 as a uint32 (an LLVM bitcast; compiles in ~0.1 s)."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@nb.njit(boundscheck=False)
def _path_sums(X, nodes, leaves, depth, out):
    # out[r] = sum over trees t, in order, of leaves[t, leaf reached by row r]: scikit-learn's
    # "depths" (path length + c(n_node_samples) - 1 per tree, added tree after tree).
    # Rows go in blocks of 128: the block is turned into float32 keys (see _keys_of_float32),
    # then each tree is walked level by level for all rows of the block (independent rows
    # overlap in the CPU; the tree stays in L1), two levels per pass.
    n, d = X.shape
    T = nodes.shape[0]
    n_int = np.uint64(nodes.shape[1])
    one = np.uint64(1)
    two = np.uint64(2)
    sh = np.uint64(32)
    B = 128
    node = np.empty(B, np.uint64)
    Kb = np.empty((B, d), np.uint32)
    for s in range(0, n, B):
        e = min(n, s + B)
        m = e - s
        for r in range(m):
            out[s + r] = 0.0
            for j in range(d):
                b = _f32_bits(np.float32(X[s + r, j]) + np.float32(0.0))  # -0.0 -> +0.0
                Kb[r, j] = ~b if b >= _SIGN else b | _SIGN
        for t in range(T):
            nd = nodes[t]
            lv = leaves[t]
            v = nd[0]
            f = v & _LOW32
            k0 = v >> sh
            for r in range(m):
                node[r] = one + np.uint64(np.uint64(Kb[r, f]) > k0)
            lev = 1
            while lev + 2 <= depth:
                for r in range(m):
                    h = node[r]
                    v = nd[h]
                    h = two * h + one + np.uint64(np.uint64(Kb[r, v & _LOW32]) > (v >> sh))
                    v = nd[h]
                    node[r] = two * h + one + np.uint64(np.uint64(Kb[r, v & _LOW32]) > (v >> sh))
                lev += 2
            while lev < depth:
                for r in range(m):
                    h = node[r]
                    v = nd[h]
                    node[r] = two * h + one + np.uint64(np.uint64(Kb[r, v & _LOW32]) > (v >> sh))
                lev += 1
            for r in range(m):
                out[s + r] += lv[node[r] - n_int]


def _heap_forest(forest) -> tuple[np.ndarray, np.ndarray, int]:
    """Complete-heap copy of a fitted sklearn IsolationForest, all trees at once (numpy).

    Returns nodes (T, 2^D - 1) uint64, leaves (T, 2^D) float64 and the depth D. Heap node
    ``h`` has children ``2h+1`` (``x <= threshold``) and ``2h+2``; ``nodes[t, h]`` is
    ``key(threshold) << 32 | feature``. A leaf at depth ``k < D`` becomes an always-left
    chain (key of +inf) and gives its value to the ``2^(D-k)`` heap leaves below it.
    """
    trees = [t.tree_ for t in forest.estimators_]
    T = len(trees)
    D = max(1, max(tr.max_depth for tr in trees))
    n_int = 2 ** D - 1
    counts = np.array([tr.node_count for tr in trees])
    off = np.concatenate([[0], np.cumsum(counts)[:-1]])
    tree_id = np.repeat(np.arange(T), counts)
    left = np.concatenate([tr.children_left for tr in trees]).astype(np.int64)
    right = np.concatenate([tr.children_right for tr in trees]).astype(np.int64)
    internal = left != -1
    left[internal] += off[tree_id[internal]]
    right[internal] += off[tree_id[internal]]
    # the per-node term scikit-learn adds (_compute_score_samples), same arrays and operations
    leafval = np.concatenate([dpl + apl - 1.0 for dpl, apl in
                              zip(forest._decision_path_lengths, forest._average_path_length_per_tree)])
    heap = np.zeros(left.size, np.int64)
    level = np.zeros(left.size, np.int64)
    frontier = off
    for k in range(D):
        par = frontier[internal[frontier]]
        heap[left[par]] = 2 * heap[par] + 1
        heap[right[par]] = 2 * heap[par] + 2
        level[left[par]] = level[right[par]] = k + 1
        frontier = np.concatenate([left[par], right[par]])
    always_left = np.uint64(_keys_of_float32(np.array([np.inf], np.float32))[0]) << np.uint64(32)
    nodes = np.full((T, n_int), always_left, dtype=np.uint64)
    i = np.flatnonzero(internal)
    thr = np.concatenate([tr.threshold for tr in trees])[i]
    feat = np.concatenate([tr.feature for tr in trees])[i]
    nodes[tree_id[i], heap[i]] = (_threshold_keys(thr).astype(np.uint64) << np.uint64(32)) | feat.astype(np.uint64)
    leaves = np.zeros((T, 2 ** D))
    j = np.flatnonzero(~internal)
    width = 2 ** (D - level[j])
    first = (heap[j] + 1) * width - 1 - n_int  # leftmost heap leaf below the leaf
    within = np.arange(width.sum()) - np.repeat(np.cumsum(width) - width, width)
    leaves[np.repeat(tree_id[j], width), np.repeat(first, width) + within] = np.repeat(leafval[j], width)
    return nodes, leaves, D

class SlidingWindowIForest(Detector):
    """Isolation forest refit every ``refit_every`` events on a sliding window; see the module docstring.

    Attributes:
        model_: the engine's fitted estimator (sklearn ``IsolationForest`` or PyOD ``IForest``), or None.
        n_seen_: observations learned.
        n_fits_: forests fitted so far.
        train_window_: (m, d) float32 rows the current forest was fit on (the engine's tree dtype).
    """

    def __init__(self, window_size: int = 200_000, refit_every: int = 200_000, warmup: int = 256,
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
        self._forest = _heap_forest(forest)
        self._denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])
        self.model_ = model
        self.train_window_ = W

    def _window(self) -> np.ndarray:
        m = min(self.n_seen_, self.window_size)
        start = (self.n_seen_ - m) % self.window_size
        if start + m <= self.window_size:
            return self._ring[start:start + m].copy()
        return np.concatenate([self._ring[start:], self._ring[:start + m - self.window_size]])

    # -- learning / scoring ------------------------------------------------------------
    def _next_fit_at(self) -> int:
        n = self.n_seen_
        nxt = (n // self.refit_every + 1) * self.refit_every
        return self.warmup if n < self.warmup else nxt

    def _learn(self, X: np.ndarray) -> None:
        if X.size and np.abs(X).max() > _F32_MAX:
            i, j = np.unravel_index(int(np.argmax(np.abs(X))), X.shape)
            raise ValueError(f"value {X[i, j]!r} at row {i}, column {j} is beyond the float32 range of the "
                             "engine's trees (|x| <= 3.4e38)")
        if self._ring is None:
            self._ring = np.zeros((self.window_size, X.shape[1]), dtype=np.float32)
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
        nodes, leaves, depth = self._forest
        depths = np.zeros(X.shape[0])
        _path_sums(X, nodes, leaves, depth, depths)
        den = self._denominator  # the rest is scikit-learn's _compute_score_samples, operation for operation
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
        self._ring = None if s["ring"] is None else np.array(s["ring"], dtype=np.float32)
        self.model_ = None
        self.train_window_ = None
        if s["train_window"] is not None:
            self._fit(np.array(s["train_window"], dtype=np.float32), self.seed + self.n_fits_ - 1)
