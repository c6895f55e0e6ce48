"""RobustZScore: exponentially weighted robust z-score for univariate metric streams.

Method
    The score of a value ``x`` is its distance from a running level in units of
    a running scale, ``|x - level| / scale``:

    - ``method="median"`` (default): the level is an exponentially weighted
      median tracked by stochastic approximation (``m += alpha * scale *
      sign(x - m)``), and the scale is ``1.4826 * MAD`` where the median
      absolute deviation is tracked multiplicatively (``mad *= exp(+alpha)`` if
      ``|x - m| > mad`` else ``exp(-alpha)``), whose fixed point is the median of
      ``|x - m|``. A spike moves the level by at most ``alpha * scale``.
    - ``method="mean"``: exponentially weighted mean and variance (West 1979
      form) of the value winsorised at ``level +- clip * scale``, so one spike
      has bounded influence.
    - ``period=P`` adds a seasonal profile: one extra level per phase
      ``n % P`` (``n`` = values learned so far; e.g. ``P=1440`` for a
      per-minute series with a daily cycle), updated with ``season_alpha`` on
      the winsorised residual. The score then uses ``level + season[n % P]``.

    The first ``warmup`` values are kept and their exact median and MAD start
    the running estimates; during warm-up the score uses them directly (0 until
    two values are seen). Scores are finite because the scale is floored at
    ``max(min_scale, rel_min_scale * |level|)``: a constant series followed by a
    small change gives a large but finite score, and scores are never clipped,
    so larger deviations always score higher (no saturation at a constant).

    Level shifts score high at their onset and are absorbed as the level and
    scale adapt (about ``1/alpha`` values); spikes stay high because winsorised
    updates barely move the level.

    ``score_many`` scores every row against the state before the batch, which
    for ``period`` means the phase of the next value: call it per tick, or with
    batches short against the period.

Parameters
    alpha: weight of one value in (0, 1); the estimates' memory is about
        ``1/alpha`` values (default 0.02, about 50 values).
    method: "median" (EW median/MAD) or "mean" (EW mean/std).
    warmup: values used for the exact initial median/MAD (>= 2).
    clip: winsorising bound in scale units for the "mean" and seasonal updates.
    period: season length in values, or None.
    season_alpha: weight of one value in its phase's seasonal level (default
        0.2: a phase's memory is about 5 periods).
    min_scale: absolute scale floor, in the unit of the values.
    rel_min_scale: scale floor relative to ``|level|``.
    feature_names: optional single key name for dict input (any key otherwise).

Memory
    Per detector (= per series or entity): ``8 * (warmup + period + 8)`` bytes of
    state (about 144 bytes at the defaults without a period); per event: none.

Example
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = RobustZScore(alpha=0.05)
    >>> det.learn_many(rng.normal(100.0, 5.0, size=(500, 1)))
    >>> normal, spike = det.score_one({"plays": 104.0}), det.score_one({"plays": 160.0})
    >>> bool(spike > 8 * normal)
    True

Sources
    P. J. Rousseeuw, C. Croux, "Alternatives to the median absolute deviation",
    JASA 1993 (MAD, 1.4826 consistency factor); H. Robbins, S. Monro, "A
    stochastic approximation method", 1951 (sign-step median tracking);
    D. H. D. West, "Updating mean and variance estimates", CACM 1979.
"""

from __future__ import annotations

from typing import Any, Mapping

import numba as nb
import numpy as np

from detectors.base import Detector

__all__ = ["RobustZScore"]

_K = 1.4826  # MAD -> standard deviation under normality


@nb.njit
def _learn_kernel(x, median_mode, alpha, season_alpha, clip, min_scale, rel_min_scale, f, seas, n_arr):
    # Values after the warm-up. f = [level, mad, var]; n_arr = [values learned]
    period = seas.shape[0]
    n = n_arr[0]
    for k in range(x.shape[0]):
        v = x[k]
        ph = n % period if period > 0 else 0
        season = seas[ph] if period > 0 else 0.0
        level = f[0]
        floor = max(min_scale, rel_min_scale * abs(level + season))
        if median_mode:
            scale = max(_K * f[1], floor)
        else:
            scale = max(np.sqrt(f[2]), floor)
        r = v - level - season
        rc = min(max(r, -clip * scale), clip * scale)
        if median_mode:
            if r > 0:
                f[0] = level + alpha * scale
            elif r < 0:
                f[0] = level - alpha * scale
            madf = max(f[1], floor / _K)
            if abs(r) > madf:
                f[1] = madf * np.exp(alpha)
            else:
                f[1] = madf * np.exp(-alpha)
        else:
            d = rc
            f[0] = level + alpha * d
            f[2] = (1.0 - alpha) * (f[2] + alpha * d * d)
        if period > 0:
            seas[ph] = season + season_alpha * (rc - (f[0] - level))
        n += 1
    n_arr[0] = n


class RobustZScore(Detector):
    """Exponentially weighted robust z-score (univariate); see the module docstring.

    Attributes:
        level_: running median (or mean) without the seasonal part.
        scale_: running scale (1.4826 * MAD, or the std), before flooring.
        season_: seasonal levels, shape (period,), or None.
        n_seen_: values learned.
    """

    univariate = True

    def __init__(self, alpha: float = 0.02, method: str = "median", warmup: int = 10, clip: float = 3.0,
                 period: int | None = None, season_alpha: float = 0.2, min_scale: float = 1e-9,
                 rel_min_scale: float = 1e-3, feature_names: list[str] | None = None):
        super().__init__(feature_names)
        if not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if method not in ("median", "mean"):
            raise ValueError(f"method must be 'median' or 'mean', got {method!r}")
        if int(warmup) < 2:
            raise ValueError(f"warmup must be >= 2, got {warmup}")
        if period is not None and int(period) < 2:
            raise ValueError(f"period must be None or >= 2, got {period}")
        if not 0.0 < float(season_alpha) < 1.0:
            raise ValueError(f"season_alpha must be in (0, 1), got {season_alpha}")
        if float(clip) <= 0 or float(min_scale) <= 0 or float(rel_min_scale) < 0:
            raise ValueError("clip and min_scale must be > 0, rel_min_scale >= 0")
        self.alpha = float(alpha)
        self.method = method
        self.warmup = int(warmup)
        self.clip = float(clip)
        self.period = None if period is None else int(period)
        self.season_alpha = float(season_alpha)
        self.min_scale = float(min_scale)
        self.rel_min_scale = float(rel_min_scale)
        self._init_state()

    def _init_state(self) -> None:
        self._f = np.zeros(3, dtype=np.float64)
        self._buf = np.zeros(self.warmup, dtype=np.float64)
        self._seas = np.zeros(self.period or 0, dtype=np.float64)
        self._n = np.zeros(1, dtype=np.int64)

    @property
    def n_seen_(self) -> int:
        """Values learned."""
        return int(self._n[0])

    @property
    def level_(self) -> float:
        """Running median (or mean) without the seasonal part, in the unit of the values."""
        return float(self._f[0])

    @property
    def scale_(self) -> float:
        """Running scale (1.4826 * MAD or std) before flooring, in the unit of the values."""
        return float(_K * self._f[1] if self.method == "median" else np.sqrt(self._f[2]))

    @property
    def season_(self) -> np.ndarray | None:
        """Seasonal levels, shape (period,), or None."""
        return self._seas.copy() if self.period else None

    def _ready(self) -> bool:
        return self.n_seen_ >= 2

    def _learn(self, X: np.ndarray) -> None:
        x = np.ascontiguousarray(X[:, 0])
        n = self.n_seen_
        if n < self.warmup:  # exact median and MAD of the first values start the running estimates
            k = min(self.warmup - n, x.size)
            self._buf[n:n + k] = x[:k]
            self._n[0] = n + k
            if n + k == self.warmup:
                med = float(np.median(self._buf))
                mad = float(np.median(np.abs(self._buf - med)))
                self._f[:] = (med, mad, (_K * mad) ** 2)
            x = x[k:]
        if x.size:
            _learn_kernel(x, self.method == "median", self.alpha, self.season_alpha, self.clip, self.min_scale,
                          self.rel_min_scale, self._f, self._seas, self._n)

    def _level_scale(self) -> tuple[float, float]:
        n = self.n_seen_
        if n < self.warmup:
            b = self._buf[:n]
            level = float(np.median(b))
            scale = _K * float(np.median(np.abs(b - level)))
        else:
            level = float(self._f[0]) + (float(self._seas[n % self.period]) if self.period else 0.0)
            scale = self.scale_
        floor = max(self.min_scale, self.rel_min_scale * abs(level))
        return level, max(scale, floor)

    def _score(self, X: np.ndarray) -> np.ndarray:
        level, scale = self._level_scale()
        return np.abs(X[:, 0] - level) / scale

    def _explain(self, x: np.ndarray) -> np.ndarray:
        return self._score(x.reshape(1, -1))

    def _params(self) -> dict:
        return {"alpha": self.alpha, "method": self.method, "warmup": self.warmup, "clip": self.clip,
                "period": self.period, "season_alpha": self.season_alpha, "min_scale": self.min_scale,
                "rel_min_scale": self.rel_min_scale}

    def _get_state(self) -> dict:
        return {"f": self._f.copy(), "buf": self._buf.copy(), "season": self._seas.copy(), "n": self.n_seen_}

    def _set_state(self, s: Mapping[str, Any]) -> None:
        self._init_state()
        self._f[:] = np.asarray(s["f"], dtype=np.float64)
        self._buf[:] = np.asarray(s["buf"], dtype=np.float64)
        self._seas[:] = np.asarray(s["season"], dtype=np.float64)
        self._n[0] = int(s["n"])
