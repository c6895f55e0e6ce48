"""PlayGuard's framework-free online anomaly detectors (no Kafka or Faust imports here).

The API contract is CONVENTIONS.md, "Detector API"; ``detectors/README.md`` lists
every detector with its method, source, memory and score meaning. Snapshots go
through :mod:`detectors.serialize` (msgpack, never pickle).
"""

from importlib import import_module
from typing import Any

# Exports are imported lazily (PEP 562), so ``import detectors.serialize`` stays light
# (no numba or scikit-learn import) for modules that only need the serialiser.
_EXPORTS = {
    "Detector": "detectors.base",
    "FeatureValidator": "detectors.base",
    "QuantileCalibrator": "detectors.calibration",
    "ScoreEnsemble": "detectors.ensemble",
    "OnlineGaussian": "detectors.gaussian",
    "HalfSpaceTrees": "detectors.hst",
    "SlidingWindowIForest": "detectors.iforest_window",
    "LODA": "detectors.loda",
    "DenStream": "detectors.microcluster",
    "MIDAS": "detectors.midas",
    "MIDASR": "detectors.midas",
    "MIDASF": "detectors.midas",
    "RobustZScore": "detectors.robust",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detectors' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = [
    "Detector",
    "FeatureValidator",
    "QuantileCalibrator",
    "ScoreEnsemble",
    "OnlineGaussian",
    "HalfSpaceTrees",
    "SlidingWindowIForest",
    "LODA",
    "DenStream",
    "MIDAS",
    "MIDASR",
    "MIDASF",
    "RobustZScore",
    "warm_up",
]


def warm_up() -> float:
    """Compile every numba kernel now (first calls otherwise pay it); returns the seconds spent.

    Kernels are compiled per process and not cached on disk (numba's cache uses pickle).
    A stream worker can call this at start-up, before consuming.
    """
    import time

    import numpy as np

    from detectors.calibration import QuantileCalibrator
    from detectors.gaussian import OnlineGaussian
    from detectors.hst import HalfSpaceTrees
    from detectors.iforest_window import SlidingWindowIForest
    from detectors.loda import LODA
    from detectors.microcluster import DenStream
    from detectors.midas import MIDAS, MIDASF, MIDASR
    from detectors.robust import RobustZScore

    t0 = time.perf_counter()
    X = np.random.default_rng(0).normal(size=(64, 2))
    for det in (HalfSpaceTrees(n_trees=1, height=2, window_size=8), LODA(n_projections=2, window_size=8),
                OnlineGaussian(), DenStream(), RobustZScore(period=4),
                SlidingWindowIForest(window_size=32, refit_every=32, warmup=16, n_estimators=4)):
        Z = X[:, :1] if det.univariate else X
        det.learn_many(Z)
        det.score_many(Z)
    e = np.arange(1, 9, dtype=np.int64)
    for m in (MIDAS(n_buckets=8), MIDASR(n_buckets=8), MIDASF(n_buckets=8)):
        m.score_edges(e, e, e)
    cal = QuantileCalibrator(buffer_size=8)
    cal.learn_many(X[:, 0])
    cal.tail_probability(X[:2, 0])
    return time.perf_counter() - t0
