"""DenStream: density-based micro-clusters with decay, for outlier scores and grouping.

Method
    The stream is summarised by micro-clusters, each a weight ``w``, a linear
    sum ``CF1`` and a squared sum ``CF2`` of the points it absorbed, all decayed
    by ``2^(-lambda * dt)`` where ``dt`` counts learned observations. Centre
    ``CF1 / w``; radius ``sqrt(mean_j(CF2_j / w - (CF1_j / w)^2))``.
    Distances and radii are root-mean-square over the ``d`` features, so
    ``eps`` is in feature units whatever ``d`` (Euclidean DenStream with
    ``eps * sqrt(d)``).

    Learning one point (Cao et al. 2006, Merging):

    1. try the nearest potential micro-cluster (p-cluster): merge if its radius
       after merging is at most ``eps``;
    2. else try the nearest outlier micro-cluster (o-cluster) the same way; an
       o-cluster whose weight exceeds ``beta * mu`` is promoted to a p-cluster
       (a new dense group became normal);
    3. else start a new o-cluster.

    Every ``Tp = ceil(log2(beta*mu / (beta*mu - 1)) / lambda)`` observations,
    p-clusters whose weight fell below ``beta * mu`` are deleted, and so are
    o-clusters below ``xi = (2^(-lambda (t - t0 + Tp)) - 1) / (2^(-lambda Tp) - 1)``.
    When ``max_clusters`` are in use, the lightest cluster is evicted.

    Score: the smallest scaled distance ``dist(x, centre) / max(radius,
    min_radius)`` over p-clusters (over all clusters while there is no
    p-cluster yet; 0 before any learning). About 1 or less inside a cluster,
    higher = more anomalous; unitless, so comparable across instances.

    Grouping: ``predict_one``/``predict_many`` return the stable integer id of
    the nearest p-cluster whose centre is within ``eps`` (``-1`` otherwise);
    ids are assigned when a micro-cluster is created and kept on promotion, so
    a lockstep bot group that forms a dense cluster gets one id over time.
    ``clusters()`` lists them.

    Learning is a compiled sequential loop (numba), so ``learn_many`` leaves
    exactly the state of a ``learn_one`` loop; scoring is a compiled loop over
    rows against the state before the batch.

Parameters
    eps: maximum micro-cluster radius, RMS feature units (default 1.0;
        standardise features first).
    decay: lambda, decay rate per learned observation, base 2 (default 1e-3:
        half-life 1,000 observations).
    mu: weight of a core micro-cluster (default 10).
    beta: fraction of ``mu`` a p-cluster needs, with ``beta * mu > 1``
        (default 0.5).
    max_clusters: capacity of micro-clusters (default 1,000).
    min_radius: radius floor in the score, RMS feature units (default 0.1 * eps).
    feature_names: optional column order for dict input.

Memory
    Per detector: ``max_clusters * (2 * d + 6) * 8`` bytes (0.3 MiB for d = 16
    at the defaults). Per event: none. Per grouped entity: none (ids are
    computed on demand).

Example
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = DenStream(eps=1.0)
    >>> det.learn_many(rng.normal(0.0, 0.3, size=(500, 2)))
    >>> bool(det.score_one({"a": 0.0, "b": 0.1}) < det.score_one({"a": 5.0, "b": 5.0}))
    True
    >>> det.learn_many(np.full((40, 2), 8.0) + rng.normal(0, 0.01, size=(40, 2)))   # a dense new group
    >>> ids = det.predict_many(np.full((3, 2), 8.0))
    >>> bool(ids[0] >= 0 and len(set(ids.tolist())) == 1 and ids[0] != det.predict_one({"a": 0.0, "b": 0.0}))
    True

Source
    F. Cao, M. Ester, W. Qian, A. Zhou, "Density-Based Clustering over an
    Evolving Data Stream with Noise", SIAM SDM 2006.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numba as nb
import numpy as np

from detectors.base import Detector

__all__ = ["DenStream"]

_EMPTY, _POTENTIAL, _OUTLIER = 0, 1, 2


@nb.njit(inline="always")
def _trial_radius(x, w, cf1, cf2, f, i):
    d = x.shape[0]
    wn = w[i] * f + 1.0
    acc = 0.0
    for j in range(d):
        a = (cf1[i, j] * f + x[j]) / wn
        v = (cf2[i, j] * f + x[j] * x[j]) / wn - a * a
        if v > 0.0:
            acc += v
    return math.sqrt(acc / d)


@nb.njit(inline="always")
def _dist2(x, w, cf1, i):
    d = x.shape[0]
    acc = 0.0
    for j in range(d):
        c = cf1[i, j] / w[i]
        acc += (x[j] - c) * (x[j] - c)
    return acc / d


@nb.njit
def _learn_kernel(X, w, cf1, cf2, tl, t0, kind, cid, sc, eps, lam, beta_mu, tp):
    # sc = [t, next_id]
    M, d = cf1.shape
    t = sc[0]
    next_id = sc[1]
    for r in range(X.shape[0]):
        x = X[r]
        t += 1
        merged = False
        for want in (_POTENTIAL, _OUTLIER):
            best = -1
            bd = np.inf
            for i in range(M):
                if kind[i] == want:
                    dd = _dist2(x, w, cf1, i)
                    if dd < bd:
                        bd = dd
                        best = i
            if best >= 0:
                f = 2.0 ** (-lam * (t - tl[best]))
                if _trial_radius(x, w, cf1, cf2, f, best) <= eps:
                    w[best] = w[best] * f + 1.0
                    for j in range(d):
                        cf1[best, j] = cf1[best, j] * f + x[j]
                        cf2[best, j] = cf2[best, j] * f + x[j] * x[j]
                    tl[best] = t
                    if want == _OUTLIER and w[best] > beta_mu:
                        kind[best] = _POTENTIAL
                    merged = True
                    break
        if not merged:
            slot = -1
            for i in range(M):
                if kind[i] == _EMPTY:
                    slot = i
                    break
            if slot < 0:  # full: evict the lightest cluster, outlier clusters first
                lw = np.inf
                for pref in (_OUTLIER, _POTENTIAL):
                    for i in range(M):
                        if kind[i] == pref:
                            wi = w[i] * 2.0 ** (-lam * (t - tl[i]))
                            if wi < lw:
                                lw = wi
                                slot = i
                    if slot >= 0:
                        break
            w[slot] = 1.0
            for j in range(d):
                cf1[slot, j] = x[j]
                cf2[slot, j] = x[j] * x[j]
            tl[slot] = t
            t0[slot] = t
            kind[slot] = _OUTLIER
            cid[slot] = next_id
            next_id += 1
        if t % tp == 0:
            denom = 2.0 ** (-lam * tp) - 1.0
            for i in range(M):
                if kind[i] == _EMPTY:
                    continue
                wi = w[i] * 2.0 ** (-lam * (t - tl[i]))
                if kind[i] == _POTENTIAL:
                    if wi < beta_mu:
                        kind[i] = _EMPTY
                else:
                    xi = (2.0 ** (-lam * (t - t0[i] + tp)) - 1.0) / denom
                    if wi < xi:
                        kind[i] = _EMPTY
    sc[0] = t
    sc[1] = next_id


@nb.njit
def _score_kernel(X, centers, radii, ids, eps, out_score, out_id):
    K = centers.shape[0]
    d = X.shape[1]
    for r in range(X.shape[0]):
        best = np.inf
        near = np.inf
        near_id = -1
        for i in range(K):
            acc = 0.0
            for j in range(d):
                diff = X[r, j] - centers[i, j]
                acc += diff * diff
            dist = math.sqrt(acc / d)
            s = dist / radii[i]
            if s < best:
                best = s
            if dist < near:
                near = dist
                near_id = ids[i]
        out_score[r] = best if K > 0 else 0.0
        out_id[r] = near_id if near <= eps else -1


class DenStream(Detector):
    """DenStream micro-clusters (Cao et al. 2006) as an outlier scorer and grouper; see the module docstring.

    Attributes:
        n_seen_: observations learned (the clock of the decay).
        n_potential_, n_outlier_: micro-clusters of each kind.
    """

    def __init__(self, eps: float = 1.0, decay: float = 1e-3, mu: float = 10.0, beta: float = 0.5,
                 max_clusters: int = 1000, min_radius: float | None = None,
                 feature_names: list[str] | None = None):
        super().__init__(feature_names)
        if float(eps) <= 0 or float(decay) <= 0 or int(max_clusters) < 1:
            raise ValueError("eps > 0, decay > 0 and max_clusters >= 1 are required")
        if float(beta) * float(mu) <= 1.0 or not 0 < float(beta) <= 1:
            raise ValueError(f"beta in (0, 1] with beta * mu > 1 is required, got beta={beta}, mu={mu}")
        self.eps = float(eps)
        self.decay = float(decay)
        self.mu = float(mu)
        self.beta = float(beta)
        self.max_clusters = int(max_clusters)
        self.min_radius = 0.1 * self.eps if min_radius is None else float(min_radius)
        if self.min_radius <= 0:
            raise ValueError("min_radius must be > 0")
        self._sc = np.array([0, 0], dtype=np.int64)
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def tp(self) -> int:
        """Pruning period Tp in observations (Cao et al. 2006, Lemma 3.1)."""
        bm = self.beta * self.mu
        return max(1, int(math.ceil(math.log2(bm / (bm - 1.0)) / self.decay)))

    @property
    def n_seen_(self) -> int:
        """Observations learned (the clock of the decay)."""
        return int(self._sc[0])

    @property
    def n_potential_(self) -> int:
        """Live potential (core) micro-clusters."""
        return 0 if self._arrays is None else int((self._arrays["kind"] == _POTENTIAL).sum())

    @property
    def n_outlier_(self) -> int:
        """Live outlier micro-clusters."""
        return 0 if self._arrays is None else int((self._arrays["kind"] == _OUTLIER).sum())

    def _alloc(self, d: int) -> None:
        M = self.max_clusters
        self._arrays = {"w": np.zeros(M), "cf1": np.zeros((M, d)), "cf2": np.zeros((M, d)),
                        "tl": np.zeros(M, dtype=np.int64), "t0": np.zeros(M, dtype=np.int64),
                        "kind": np.zeros(M, dtype=np.int8), "cid": np.full(M, -1, dtype=np.int64)}

    def _ready(self) -> bool:
        return self._arrays is not None and bool((self._arrays["kind"] != _EMPTY).any())

    def _learn(self, X: np.ndarray) -> None:
        if self._arrays is None:
            self._alloc(X.shape[1])
        a = self._arrays
        _learn_kernel(X, a["w"], a["cf1"], a["cf2"], a["tl"], a["t0"], a["kind"], a["cid"], self._sc,
                      self.eps, self.decay, self.beta * self.mu, self.tp)

    def _summary(self, core_only: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = self._arrays
        sel = a["kind"] == _POTENTIAL
        if not core_only and not sel.any():
            sel = a["kind"] != _EMPTY
        w = a["w"][sel][:, None]
        c = a["cf1"][sel] / w
        var = np.maximum(a["cf2"][sel] / w - c * c, 0.0)
        r = np.sqrt(var.mean(axis=1))
        return np.ascontiguousarray(c), np.maximum(r, self.min_radius), a["cid"][sel].copy()

    def _score(self, X: np.ndarray) -> np.ndarray:
        c, r, ids = self._summary(core_only=False)
        out = np.empty(X.shape[0])
        _score_kernel(X, c, r, ids, self.eps, out, np.empty(X.shape[0], dtype=np.int64))
        return out

    # -- grouping -------------------------------------------------------------------
    def predict_many(self, X: Any) -> np.ndarray:
        """Cluster ids, int64 (n,): nearest p-cluster id if its centre is within ``eps``, else -1.

        Raises:
            ValueError: as ``score_many`` (shape, NaN, inf).
        """
        A = self._v.matrix(X, learning=False)
        out = np.full(A.shape[0], -1, dtype=np.int64)
        if not self._ready() or A.shape[0] == 0:
            return out
        c, r, ids = self._summary(core_only=True)
        _score_kernel(A, c, r, ids, self.eps, np.empty(A.shape[0]), out)
        return out

    def predict_one(self, x: Mapping[str, float]) -> int:
        """Stable cluster id of ``x`` (see ``predict_many``), -1 when it belongs to no p-cluster."""
        X = self._v.matrix_from_dict(x, learning=False)
        return int(self.predict_many(X)[0])

    cluster_of = predict_one

    def clusters(self) -> list[dict]:
        """Live micro-clusters: id, kind ("potential"/"outlier"), decayed weight, centre (list), radius."""
        if self._arrays is None:
            return []
        a = self._arrays
        t = self.n_seen_
        out = []
        for i in np.nonzero(a["kind"] != _EMPTY)[0]:
            w = float(a["w"][i])
            c = a["cf1"][i] / w
            rad = float(np.sqrt(np.maximum(a["cf2"][i] / w - c * c, 0).mean()))
            out.append({"id": int(a["cid"][i]), "kind": "potential" if a["kind"][i] == _POTENTIAL else "outlier",
                        "weight": w * 2.0 ** (-self.decay * (t - int(a["tl"][i]))), "center": c.tolist(),
                        "radius": rad})
        return out

    # -- snapshots ----------------------------------------------------------------------
    def _params(self) -> dict:
        return {"eps": self.eps, "decay": self.decay, "mu": self.mu, "beta": self.beta,
                "max_clusters": self.max_clusters, "min_radius": self.min_radius}

    def _get_state(self) -> dict:
        st: dict = {"sc": self._sc.copy()}
        if self._arrays is not None:
            st["arrays"] = {k: v.copy() for k, v in self._arrays.items()}
        return st

    def _set_state(self, s: Mapping[str, Any]) -> None:
        self._sc = np.array(s["sc"], dtype=np.int64)
        if "arrays" in s:
            dt = {"w": np.float64, "cf1": np.float64, "cf2": np.float64, "tl": np.int64, "t0": np.int64,
                  "kind": np.int8, "cid": np.int64}
            self._arrays = {k: np.ascontiguousarray(np.array(s["arrays"][k], dtype=dt[k])) for k in dt}
        else:
            self._arrays = None
