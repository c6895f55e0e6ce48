"""LODA: Lightweight On-line Detector of Anomalies for streams (two alternating histograms).

Method
    ``n_projections`` sparse random projections ``w_i`` (each with
    ``round(sqrt(d))`` non-zero N(0, 1) weights, Pevny 2016) map an observation
    to ``z_i = w_i . x``. Every projection has a one-dimensional equi-width
    histogram of ``n_bins`` bins. For streams LODA keeps two sets of histograms
    (Pevny 2016, section 3.2): the projections of the window being filled are
    stored, and every ``window_size`` observations they become the histograms
    used for scoring, with bin edges from that window's own minimum and maximum.

    The score is the mean negative log-probability over projections::

        score(x) = -(1/k) * sum_i log p_i(z_i),
        p_i = (count_bin + 1) / (window_size + n_bins)

    which is non-negative. A value beyond the histogram's range gets the
    empty-bin probability times ``exp(-distance / bin_width)``, so farther
    outliers keep scoring higher instead of saturating. The score is 0 until
    the first window is complete.

    ``explain_one`` gives, per feature, Welch's t-statistic comparing the
    ``-log p_i`` of projections that use the feature with those that do not
    (Pevny 2016, section 2.3): a large value names a feature that drives the
    anomaly.

    Projection, learning and scoring are compiled loops (numba) over rows, so
    ``learn_many``/``score_many`` are bit-identical to the one-at-a-time loops.
    Projections are drawn from ``numpy.random.default_rng(seed)`` at the first
    learn call.

Parameters
    n_projections: number of random projections k (default 100).
    n_bins: bins per histogram (default 20).
    window_size: observations per histogram window (default 1000).
    seed: seed of the projections.
    feature_names: optional column order for dict input.

Memory
    Per detector: ``8 * n_projections * (window_size + n_bins + 2 * sqrt(d) + 3)``
    bytes (about 0.8 MiB at the defaults, mostly the window of projections).
    Per event: none.

Example
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = LODA(window_size=500, seed=3, feature_names=["a", "b", "c", "d"])
    >>> det.learn_many(rng.normal(size=(1000, 4)))
    >>> inlier = det.score_one({"a": 0.1, "b": 0.0, "c": -0.2, "d": 0.3})
    >>> outlier = det.score_one({"a": 0.1, "b": 9.0, "c": -0.2, "d": 0.3})
    >>> bool(outlier > inlier)
    True
    >>> max(det.explain_one({"a": 0.1, "b": 9.0, "c": -0.2, "d": 0.3}).items(), key=lambda kv: kv[1])[0]
    'b'

Source
    T. Pevny, "Loda: Lightweight on-line detector of anomalies", Machine
    Learning 102(2), 2016.
"""

from __future__ import annotations

from typing import Any, Mapping

import numba as nb
import numpy as np

from detectors.base import Detector

__all__ = ["LODA"]


@nb.njit
def _project(x, idx, w, z):
    k, m = idx.shape
    for i in range(k):
        acc = 0.0
        for j in range(m):
            acc += w[i, j] * x[idx[i, j]]
        z[i] = acc


@nb.njit
def _learn_kernel(X, idx, w, Z, lo, width, logp, state, n_bins):
    # Z: (window, k) projections of the current window; state = [count, windows]
    window, k = Z.shape
    cnt = state[0]
    for r in range(X.shape[0]):
        _project(X[r], idx, w, Z[cnt])
        cnt += 1
        if cnt == window:
            base = np.log(window + n_bins)
            for i in range(k):
                mn = Z[0, i]
                mx = Z[0, i]
                for q in range(window):
                    v = Z[q, i]
                    if v < mn:
                        mn = v
                    if v > mx:
                        mx = v
                span = mx - mn
                floor = 1e-9 * max(1.0, abs(mx))
                if span < floor:
                    span = floor
                lo[i] = mn
                width[i] = span / n_bins
                counts = np.zeros(n_bins)
                for q in range(window):
                    b = int((Z[q, i] - mn) / width[i])
                    if b >= n_bins:
                        b = n_bins - 1
                    if b < 0:
                        b = 0
                    counts[b] += 1.0
                for b in range(n_bins):
                    logp[i, b] = np.log(counts[b] + 1.0) - base
            cnt = 0
            state[1] += 1
    state[0] = cnt


@nb.njit
def _neglogp(x, idx, w, lo, width, logp, n_bins, window, z, out):
    _project(x, idx, w, z)
    k = idx.shape[0]
    empty = -np.log(window + n_bins)
    for i in range(k):
        u = (z[i] - lo[i]) / width[i]
        if u < 0.0:
            out[i] = -(empty - (-u))
        elif u > n_bins:
            out[i] = -(empty - (u - n_bins))
        else:
            b = int(u)
            if b >= n_bins:
                b = n_bins - 1
            out[i] = -logp[i, b]


@nb.njit
def _score_kernel(X, idx, w, lo, width, logp, n_bins, window, out):
    k = idx.shape[0]
    z = np.empty(k)
    nl = np.empty(k)
    for r in range(X.shape[0]):
        _neglogp(X[r], idx, w, lo, width, logp, n_bins, window, z, nl)
        out[r] = nl.sum() / k


class LODA(Detector):
    """Streaming LODA with two alternating histogram sets (Pevny 2016); see the module docstring.

    Attributes:
        proj_index_: (k, m) int64 features used by each projection.
        proj_weight_: (k, m) float64 weights.
        bin_lo_, bin_width_: (k,) histogram origin and bin width of the scoring histograms.
        log_prob_: (k, n_bins) log bin probabilities of the scoring histograms.
        n_windows_: completed windows.
    """

    def __init__(self, n_projections: int = 100, n_bins: int = 20, window_size: int = 1000, seed: int = 0,
                 feature_names: list[str] | None = None):
        super().__init__(feature_names)
        if int(n_projections) < 1 or int(n_bins) < 1 or int(window_size) < 2:
            raise ValueError("n_projections >= 1, n_bins >= 1 and window_size >= 2 are required")
        self.n_projections = int(n_projections)
        self.n_bins = int(n_bins)
        self.window_size = int(window_size)
        self.seed = int(seed)
        self.proj_index_: np.ndarray | None = None
        self.proj_weight_: np.ndarray | None = None
        self._state = np.zeros(2, dtype=np.int64)

    @property
    def n_windows_(self) -> int:
        """Completed histogram windows."""
        return int(self._state[1])

    def _ready(self) -> bool:
        return self.n_windows_ >= 1

    def _init(self, d: int) -> None:
        rng = np.random.default_rng(self.seed)
        k = self.n_projections
        m = max(1, int(round(np.sqrt(d))))
        idx = np.stack([np.sort(rng.choice(d, size=m, replace=False)) for _ in range(k)]).astype(np.int64)
        self.proj_index_ = idx
        self.proj_weight_ = rng.normal(size=(k, m))
        self._Z = np.zeros((self.window_size, k))
        self.bin_lo_ = np.zeros(k)
        self.bin_width_ = np.ones(k)
        self.log_prob_ = np.zeros((k, self.n_bins))

    def _learn(self, X: np.ndarray) -> None:
        if self.proj_index_ is None:
            self._init(X.shape[1])
        _learn_kernel(X, self.proj_index_, self.proj_weight_, self._Z, self.bin_lo_, self.bin_width_,
                      self.log_prob_, self._state, self.n_bins)

    def _score(self, X: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape[0])
        _score_kernel(X, self.proj_index_, self.proj_weight_, self.bin_lo_, self.bin_width_, self.log_prob_,
                      self.n_bins, self.window_size, out)
        return out

    def _explain(self, x: np.ndarray) -> np.ndarray:
        k = self.n_projections
        nl = np.empty(k)
        _neglogp(x, self.proj_index_, self.proj_weight_, self.bin_lo_, self.bin_width_, self.log_prob_,
                 self.n_bins, self.window_size, np.empty(k), nl)
        d = x.shape[0]
        out = np.zeros(d)
        for j in range(d):
            used = np.any(self.proj_index_ == j, axis=1)
            a, b = nl[used], nl[~used]
            if a.size == 0 or b.size == 0:
                continue
            va = a.var(ddof=1) / a.size if a.size > 1 else 0.0
            vb = b.var(ddof=1) / b.size if b.size > 1 else 0.0
            out[j] = (a.mean() - b.mean()) / np.sqrt(va + vb + 1e-12)
        return out

    def _params(self) -> dict:
        return {"n_projections": self.n_projections, "n_bins": self.n_bins, "window_size": self.window_size,
                "seed": self.seed}

    def _get_state(self) -> dict:
        if self.proj_index_ is None:
            return {"state": self._state.copy(), "init": False}
        return {"state": self._state.copy(), "init": True, "index": self.proj_index_, "weight": self.proj_weight_,
                "window": self._Z, "lo": self.bin_lo_, "width": self.bin_width_, "logp": self.log_prob_}

    def _set_state(self, s: Mapping[str, Any]) -> None:
        self._state = np.array(s["state"], dtype=np.int64)
        if not s["init"]:
            self.proj_index_ = self.proj_weight_ = None
            return
        c = np.ascontiguousarray
        self.proj_index_ = c(np.array(s["index"], dtype=np.int64))
        self.proj_weight_ = c(np.array(s["weight"], dtype=np.float64))
        self._Z = c(np.array(s["window"], dtype=np.float64))
        self.bin_lo_ = c(np.array(s["lo"], dtype=np.float64))
        self.bin_width_ = c(np.array(s["width"], dtype=np.float64))
        self.log_prob_ = c(np.array(s["logp"], dtype=np.float64))
