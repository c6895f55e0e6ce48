"""PlayGuard's framework-free online anomaly detectors (no Kafka or Faust imports here).

The API contract is CONVENTIONS.md, "Detector API"; ``detectors/README.md`` lists
every detector with its method, source, memory and score meaning. Snapshots go
through :mod:`detectors.serialize` (msgpack, never pickle).
"""

from detectors.base import Detector, FeatureValidator
from detectors.calibration import QuantileCalibrator
from detectors.ensemble import ScoreEnsemble
from detectors.gaussian import OnlineGaussian
from detectors.hst import HalfSpaceTrees
from detectors.iforest_window import SlidingWindowIForest
from detectors.loda import LODA
from detectors.microcluster import DenStream
from detectors.midas import MIDAS, MIDASF, MIDASR
from detectors.robust import RobustZScore

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
]
