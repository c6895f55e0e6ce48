"""QuantileCalibrator: streaming tail probabilities of raw scores, and thresholds from an alert budget.

Method
    A merging t-digest (Dunning & Ertl 2019) summarises the distribution of a
    detector's raw scores on clean traffic: centroids ``(mean, weight)``
    merged under the ``k1`` scale function ``k(q) = delta / (2 pi) *
    asin(2q - 1)``, which keeps centroids small (often single values) in both
    tails. Incoming scores are buffered and merged in when ``buffer_size`` of
    them have arrived; queries merge the buffer into a temporary digest
    without changing the state, so ``learn_many`` equals a ``learn_one`` loop
    exactly.

    ``tail_probability(s)`` estimates ``P(S >= s)`` under clean traffic by
    linear interpolation of the digest's CDF between the exact minimum and
    maximum. At the maximum it is ``0.5 / n``; above it the tail is
    extrapolated exponentially through the 99th percentile and the maximum,
    so scores beyond anything seen keep getting smaller (never zero)
    probabilities and stay ordered. ``transform(s) = -log10(tail_probability(s))``
    is a calibrated score (0 for typical scores, 3 for a one-in-a-thousand
    score), comparable across detectors: that is what ``ScoreEnsemble``
    combines.

    Threshold from a false-positive budget: with ``b`` alerts allowed per
    1,000 entities per day on clean traffic and ``m`` scores per entity per
    day, the allowed tail probability per score is ``p = b / (1000 * m)`` and
    the threshold is the score whose tail probability is ``p``
    (``set_budget``). The digest must have been fed scores of clean traffic.

Parameters
    delta: compression (default 1000: about delta / 2 to delta centroids; at
        1M normal scores the tail probability is within 10% down to 1e-4).
    buffer_size: scores buffered before a merge (default 5,000).

Memory
    Per calibrator: about ``delta * 16 + buffer_size * 8`` bytes (56 KiB at the
    defaults); per event: none.

Example
    >>> import numpy as np
    >>> cal = QuantileCalibrator()
    >>> cal.learn_many(np.random.default_rng(0).exponential(1.0, size=100_000))
    >>> p = cal.tail_probability(np.array([1.0, 4.6]))
    >>> bool(abs(p[0] - np.exp(-1.0)) < 0.01 and abs(p[1] - 0.01) < 0.002)
    True
    >>> thr = cal.set_budget(alerts_per_1000_entities_per_day=1.0, scores_per_entity_per_day=1.0)
    >>> bool(abs(thr - np.log(1000.0)) < 0.3)
    True

Sources
    T. Dunning, O. Ertl, "Computing extremely accurate quantiles using
    t-digests", arXiv:1902.04023, 2019.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numba as nb
import numpy as np

__all__ = ["QuantileCalibrator"]


@nb.njit
def _merge(means, weights, delta):
    # means sorted ascending; returns compressed (means, weights)
    n = means.shape[0]
    out_m = np.empty(n)
    out_w = np.empty(n)
    total = weights.sum()
    if n == 0:
        return out_m[:0], out_w[:0]
    k_scale = delta / (2.0 * math.pi)

    def k_inv(k):  # inverse of the k1 scale function, clamped at q = 1
        if k >= delta / 4.0:
            return 1.0
        return (math.sin(k / k_scale) + 1.0) / 2.0

    q0 = 0.0
    qlim = k_inv(k_scale * math.asin(2.0 * q0 - 1.0) + 1.0)
    cm = means[0]
    cw = weights[0]
    m = 0
    for i in range(1, n):
        q = q0 + (cw + weights[i]) / total
        if q <= qlim:
            nw = cw + weights[i]
            cm = cm + (means[i] - cm) * weights[i] / nw
            cw = nw
        else:
            out_m[m] = cm
            out_w[m] = cw
            m += 1
            q0 += cw / total
            qlim = k_inv(k_scale * math.asin(min(1.0, 2.0 * q0 - 1.0)) + 1.0)
            cm = means[i]
            cw = weights[i]
    out_m[m] = cm
    out_w[m] = cw
    m += 1
    return out_m[:m].copy(), out_w[:m].copy()


def _as_scores(s: Any) -> np.ndarray:
    try:
        a = np.asarray(s, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores are not numeric: {exc}") from exc
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"wrong shape: expected scores of shape (n,), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("scores contain NaN or inf")
    return a


class QuantileCalibrator:
    """Streaming quantile estimator (merging t-digest) mapping raw scores to tail probabilities.

    See the module docstring for the method and sources.

    Attributes:
        n_seen_: scores learned.
        min_, max_: exact extreme scores seen.
        threshold_: raw-score threshold set by ``set_budget`` (None before).
        target_tail_probability_: the tail probability of that threshold.
    """

    def __init__(self, delta: float = 1000.0, buffer_size: int = 5000):
        if float(delta) < 10 or int(buffer_size) < 1:
            raise ValueError("delta >= 10 and buffer_size >= 1 are required")
        self.delta = float(delta)
        self.buffer_size = int(buffer_size)
        self._means = np.zeros(0)
        self._weights = np.zeros(0)
        self._buf = np.zeros(self.buffer_size)
        self._nbuf = 0
        self.n_seen_ = 0
        self.min_ = math.inf
        self.max_ = -math.inf
        self.threshold_: float | None = None
        self.target_tail_probability_: float | None = None
        self._cache = None

    # -- learning ------------------------------------------------------------------------
    def learn_one(self, score: float) -> None:
        """Add one raw score (finite float)."""
        self.learn_many(np.array([score], dtype=np.float64) if np.isscalar(score) else score)

    def learn_many(self, scores: Any) -> None:
        """Add raw scores, shape (n,); same state as a ``learn_one`` loop.

        Raises:
            ValueError: NaN, inf, non-numeric or not 1-D.
        """
        a = _as_scores(scores)
        if a.size == 0:
            return
        self.min_ = min(self.min_, float(a.min()))
        self.max_ = max(self.max_, float(a.max()))
        self.n_seen_ += int(a.size)
        i = 0
        while i < a.size:
            take = min(a.size - i, self.buffer_size - self._nbuf)
            self._buf[self._nbuf:self._nbuf + take] = a[i:i + take]
            self._nbuf += take
            i += take
            if self._nbuf == self.buffer_size:
                self._means, self._weights = self._merged()
                self._nbuf = 0
        self._cache = None

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        m = np.concatenate([self._means, self._buf[:self._nbuf]])
        w = np.concatenate([self._weights, np.ones(self._nbuf)])
        order = np.argsort(m, kind="stable")
        return _merge(m[order], w[order], self.delta)

    def _digest(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Interpolation knots (xs, cumulative weight) and the exponential tail scale."""
        if self._cache is None:
            m, w = self._merged() if self._nbuf else (self._means, self._weights)
            n = float(w.sum())
            cum = np.cumsum(w) - w / 2.0
            xs = np.concatenate([[self.min_], m, [self.max_]])
            cs = np.concatenate([[0.0], cum, [n - 0.5]])
            xs = np.maximum.accumulate(xs)
            q99 = float(np.interp(0.99 * n, cs, xs)) if n > 0 else self.max_
            ratio = math.log(max(0.02 * n, 2.0))
            scale = max(self.max_ - q99, 1e-12 * max(1.0, abs(self.max_))) / ratio
            self._cache = (xs, cs, scale)
        return self._cache

    # -- queries -------------------------------------------------------------------------
    def tail_probability(self, scores: Any) -> np.ndarray | float:
        """Estimated P(S >= s) for each raw score; float for a scalar, else float64 (n,), in (0, 1].

        Raises:
            ValueError: before any score is learned, or on NaN/inf input.
        """
        scalar = np.isscalar(scores)
        a = _as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
        if self.n_seen_ == 0:
            raise ValueError("calibrator has learned no scores yet")
        xs, cs, scale = self._digest()
        n = float(self.n_seen_)
        p = 1.0 - np.interp(a, xs, cs) / n
        above = a > self.max_
        if above.any():
            p[above] = (0.5 / n) * np.exp(-(a[above] - self.max_) / scale)
        p = np.clip(p, 1e-300, 1.0)
        return float(p[0]) if scalar else p

    def transform(self, scores: Any) -> np.ndarray | float:
        """Calibrated scores ``-log10(tail_probability)``: >= 0, comparable across detectors."""
        p = self.tail_probability(scores)
        return -np.log10(p) if not np.isscalar(p) else -math.log10(p)

    def quantile(self, q: float) -> float:
        """Raw score at cumulative probability q in [0, 1] (inverse of the digest CDF)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        return self.threshold_for(1.0 - q) if q < 1.0 else self.max_

    def threshold_for(self, tail_probability: float) -> float:
        """Raw score whose estimated tail probability is ``tail_probability`` (in (0, 1]).

        Raises:
            ValueError: before any score is learned, or p outside (0, 1].
        """
        p = float(tail_probability)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"tail probability must be in (0, 1], got {p}")
        if self.n_seen_ == 0:
            raise ValueError("calibrator has learned no scores yet")
        xs, cs, scale = self._digest()
        n = float(self.n_seen_)
        if p < 0.5 / n:
            return float(self.max_ + scale * math.log((0.5 / n) / p))
        return float(np.interp((1.0 - p) * n, cs, xs))

    def set_budget(self, alerts_per_1000_entities_per_day: float, scores_per_entity_per_day: float = 1.0) -> float:
        """Set ``threshold_`` from a false-positive budget on clean traffic; returns the threshold.

        Args:
            alerts_per_1000_entities_per_day: allowed false alerts per 1,000 entities per day.
            scores_per_entity_per_day: scores (e.g. windows) per entity per day.

        Raises:
            ValueError: non-positive arguments, a budget above one alert per score, or no data.
        """
        b, m = float(alerts_per_1000_entities_per_day), float(scores_per_entity_per_day)
        if not (b > 0 and m > 0):
            raise ValueError("budget and scores per entity per day must be > 0")
        p = b / (1000.0 * m)
        if p > 1.0:
            raise ValueError(f"budget allows more than one alert per score (p={p})")
        self.target_tail_probability_ = p
        self.threshold_ = self.threshold_for(p)
        return self.threshold_

    def is_alert(self, scores: Any) -> np.ndarray:
        """Boolean (n,): raw score >= ``threshold_``.

        Raises:
            ValueError: when no budget was set.
        """
        if self.threshold_ is None:
            raise ValueError("no threshold: call set_budget first")
        return _as_scores(np.atleast_1d(scores)) >= self.threshold_

    # -- snapshots ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Snapshot of plain values and arrays."""
        return {"detector": "QuantileCalibrator", "version": 1,
                "params": {"delta": self.delta, "buffer_size": self.buffer_size},
                "means": self._means.copy(), "weights": self._weights.copy(), "buffer": self._buf[:self._nbuf].copy(),
                "n_seen": self.n_seen_, "min": None if self.n_seen_ == 0 else self.min_,
                "max": None if self.n_seen_ == 0 else self.max_, "threshold": self.threshold_,
                "target": self.target_tail_probability_}

    def load_state_dict(self, s: Mapping) -> None:
        """Restore a snapshot made by ``state_dict``.

        Raises:
            ValueError: a snapshot of something else.
        """
        if s.get("detector") != "QuantileCalibrator":
            raise ValueError(f"snapshot is of {s.get('detector')!r}, not 'QuantileCalibrator'")
        self.__init__(**s["params"])
        self._means = np.array(s["means"], dtype=np.float64)
        self._weights = np.array(s["weights"], dtype=np.float64)
        b = np.array(s["buffer"], dtype=np.float64)
        self._buf[:b.size] = b
        self._nbuf = int(b.size)
        self.n_seen_ = int(s["n_seen"])
        self.min_ = math.inf if s["min"] is None else float(s["min"])
        self.max_ = -math.inf if s["max"] is None else float(s["max"])
        self.threshold_ = None if s["threshold"] is None else float(s["threshold"])
        self.target_tail_probability_ = None if s["target"] is None else float(s["target"])
