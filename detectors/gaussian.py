"""OnlineGaussian: streaming mean and covariance with a Mahalanobis-distance score.

Method
    The mean ``mu`` and covariance ``C`` are updated one observation at a time
    with weight ``w = max(alpha, 1/n)`` (``n`` = observations so far)::

        delta = x - mu;   mu += w * delta;   C = (1 - w) * (C + w * delta delta^T)

    With ``alpha=None`` the weight is ``1/n`` and this is exactly Welford's
    algorithm (population covariance); with ``alpha`` it becomes the
    exponentially weighted mean and covariance once ``n > 1/alpha``, so the
    model follows drift with a memory of about ``1/alpha`` observations.

    The score is the Mahalanobis distance ``sqrt(delta^T S^-1 delta)`` with
    ``S = C + diag(ridge * diag(C) + min_var)`` (the ridge keeps ``S``
    invertible for constant or collinear features). It is 0 until two
    observations are learned. Under a Gaussian model the squared score is
    chi-squared with ``d`` degrees of freedom, so scores are comparable across
    instances with the same dimension.

    ``explain_one`` returns ``delta_j * (S^-1 delta)_j`` per feature: the terms
    sum to the squared score; a large positive term marks the feature that
    drives the distance (terms may be negative for correlated features).

    Learning and scoring run as compiled loops (numba) over the rows, so
    ``learn_many``/``score_many`` give bit-identical results to the
    ``learn_one``/``score_one`` loops.

Parameters
    alpha: weight of one observation in (0, 1), or None for Welford (default
        1e-3, memory about 1,000 observations).
    ridge: relative variance added to the diagonal (default 1e-6).
    min_var: absolute variance added to the diagonal, in squared feature units
        (default 1e-9).
    feature_names: optional column order for dict input.

Memory
    Per detector (entity): ``8 * (d*d + d + 2)`` bytes, 2.2 KiB for d = 16; per
    event: none.

Example
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = OnlineGaussian(alpha=None)
    >>> det.learn_many(rng.normal(size=(2000, 2)) @ np.array([[1.0, 0.9], [0.0, 0.4]]))
    >>> on_axis = det.score_one({"a": 1.0, "b": 0.9})     # follows the correlation
    >>> off_axis = det.score_one({"a": 1.0, "b": -0.9})   # breaks it
    >>> bool(off_axis > 3 * on_axis)
    True
    >>> e = det.explain_one({"a": 1.0, "b": -0.9})
    >>> round(sum(e.values()), 6) == round(off_axis ** 2, 6)
    True

Sources
    B. P. Welford, "Note on a method for calculating corrected sums of squares
    and products", Technometrics 1962; P. C. Mahalanobis, "On the generalised
    distance in statistics", 1936; T. Finch, "Incremental calculation of
    weighted mean and variance", 2009 (exponentially weighted covariance).
"""

from __future__ import annotations

from typing import Any, Mapping

import numba as nb
import numpy as np

from detectors.base import Detector

__all__ = ["OnlineGaussian"]


@nb.njit
def _learn_kernel(X, alpha, mu, C, n_arr):
    n, d = X.shape
    cnt = n_arr[0]
    delta = np.empty(d)
    for k in range(n):
        cnt += 1
        w = 1.0 / cnt
        if alpha > w:
            w = alpha
        for j in range(d):
            delta[j] = X[k, j] - mu[j]
            mu[j] += w * delta[j]
        for i in range(d):
            for j in range(d):
                C[i, j] = (1.0 - w) * (C[i, j] + w * delta[i] * delta[j])
    n_arr[0] = cnt


@nb.njit
def _score_kernel(X, mu, P, out, contrib):
    n, d = X.shape
    delta = np.empty(d)
    for k in range(n):
        for j in range(d):
            delta[j] = X[k, j] - mu[j]
        total = 0.0
        for i in range(d):
            acc = 0.0
            for j in range(d):
                acc += P[i, j] * delta[j]
            c = delta[i] * acc
            contrib[i] = c
            total += c
        out[k] = np.sqrt(max(total, 0.0))


class OnlineGaussian(Detector):
    """Streaming Gaussian with a Mahalanobis score; see the module docstring.

    Attributes:
        mean_: (d,) running mean.
        covariance_: (d, d) running covariance (before regularisation).
        n_seen_: observations learned.
    """

    def __init__(self, alpha: float | None = 1e-3, ridge: float = 1e-6, min_var: float = 1e-9,
                 feature_names: list[str] | None = None):
        super().__init__(feature_names)
        if alpha is not None and not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"alpha must be None or in (0, 1), got {alpha}")
        if float(ridge) < 0 or float(min_var) <= 0:
            raise ValueError("ridge must be >= 0 and min_var > 0")
        self.alpha = None if alpha is None else float(alpha)
        self.ridge = float(ridge)
        self.min_var = float(min_var)
        self.mean_: np.ndarray | None = None
        self.covariance_: np.ndarray | None = None
        self._n = np.zeros(1, dtype=np.int64)
        self._P: np.ndarray | None = None

    @property
    def n_seen_(self) -> int:
        """Observations learned."""
        return int(self._n[0])

    def _ready(self) -> bool:
        return self.n_seen_ >= 2

    def _learn(self, X: np.ndarray) -> None:
        if self.mean_ is None:
            d = X.shape[1]
            self.mean_ = np.zeros(d)
            self.covariance_ = np.zeros((d, d))
        _learn_kernel(X, 0.0 if self.alpha is None else self.alpha, self.mean_, self.covariance_, self._n)
        self._P = None

    def _precision(self) -> np.ndarray:
        if self._P is None:
            C = self.covariance_
            S = C + np.diag(self.ridge * np.diag(C) + self.min_var)
            S = 0.5 * (S + S.T)
            try:
                self._P = np.linalg.inv(S)
            except np.linalg.LinAlgError:
                self._P = np.linalg.pinv(S)
        return self._P

    def _score(self, X: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape[0])
        _score_kernel(X, self.mean_, self._precision(), out, np.empty(X.shape[1]))
        return out

    def _explain(self, x: np.ndarray) -> np.ndarray:
        contrib = np.empty(x.shape[0])
        _score_kernel(x.reshape(1, -1), self.mean_, self._precision(), np.empty(1), contrib)
        return contrib

    def _params(self) -> dict:
        return {"alpha": self.alpha, "ridge": self.ridge, "min_var": self.min_var}

    def _get_state(self) -> dict:
        return {"n": self.n_seen_, "mean": None if self.mean_ is None else self.mean_.copy(),
                "cov": None if self.covariance_ is None else self.covariance_.copy()}

    def _set_state(self, s: Mapping[str, Any]) -> None:
        self._n = np.array([int(s["n"])], dtype=np.int64)
        self.mean_ = None if s["mean"] is None else np.array(s["mean"], dtype=np.float64)
        self.covariance_ = None if s["cov"] is None else np.array(s["cov"], dtype=np.float64)
        self._P = None
