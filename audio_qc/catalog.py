"""Catalog outliers: files whose QC feature vector is far from the catalog.

Every finished QC report contributes a feature vector (:func:`features`) to an
unsupervised density model over the catalog seen so far,
:class:`detectors.gaussian.OnlineGaussian` (streaming mean and covariance,
Mahalanobis score). A file is scored against the catalog *before* it is
learned; once ``min_files`` files are learned, a squared score above the
chi-squared quantile ``1 - tail_probability`` (d degrees of freedom) gives a
``catalog_outlier`` defect (severity ``uncertain``: unusual, not proven
broken), naming the features that contribute most with their actual and
typical (catalog mean) values.

Source: P. C. Mahalanobis (1936); chi-squared tail of the squared distance
under a Gaussian model.
"""

from __future__ import annotations

import math

from scipy.stats import chi2

from detectors.gaussian import OnlineGaussian
from stream.schemas import Defect, QCReport, Severity

#: Feature names, in column order.
FEATURES = (
    "integrated_lufs",
    "loudness_range_lu",
    "true_peak_dbtp",
    "peak_to_loudness_lu",
    "lr_correlation",
    "log10_duration_s",
)


def features(report: QCReport) -> dict[str, float] | None:
    """QC feature vector of a report, or None when QC produced no loudness.

    Units: LUFS, LU, dBTP, LU (true peak minus integrated loudness: the
    peak-to-loudness ratio), correlation in [-1, 1] (1.0 for mono), log10 of
    the duration in seconds.
    """
    m = report.measurements
    if m.integrated_lufs is None or m.true_peak_dbtp is None or not report.duration_s:
        return None
    return {
        "integrated_lufs": float(m.integrated_lufs),
        "loudness_range_lu": float(m.loudness_range_lu or 0.0),
        "true_peak_dbtp": float(m.true_peak_dbtp),
        "peak_to_loudness_lu": float(m.true_peak_dbtp - m.integrated_lufs),
        "lr_correlation": float(m.lr_correlation if m.lr_correlation is not None else 1.0),
        "log10_duration_s": math.log10(max(report.duration_s, 1e-3)),
    }


class CatalogOutlierModel:
    """Streaming catalog model: score each file, then learn it.

    Parameters:
        min_files: files learned before any file is scored (default 30).
        tail_probability: chi-squared tail of a ``catalog_outlier`` (default 1e-4).
        alpha: weight of one file in the running estimates, or None for the
            plain mean/covariance of every file so far (default None).

    Attributes:
        detector_: the :class:`~detectors.gaussian.OnlineGaussian`.
        threshold_: squared-score threshold (chi-squared quantile).

    Example:
        >>> from stream.schemas import QCReport, QCMeasurements
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> model = CatalogOutlierModel(min_files=20)
        >>> def rep(i, lufs, tp):
        ...     m = QCMeasurements(integrated_lufs=lufs, loudness_range_lu=6 + rng.normal(),
        ...                        true_peak_dbtp=tp, lr_correlation=0.6 + 0.1 * rng.normal())
        ...     return QCReport(file_id=str(i), uri="x", qc_version="v", profile="streaming",
        ...                     duration_s=200 + 20 * rng.normal(), measurements=m, outcome="pass")
        >>> hits = [model.update_and_score(rep(i, -14 + rng.normal(), -1 + rng.normal()))
        ...         for i in range(60)]
        >>> model.update_and_score(rep(99, -45.0, -30.0)).code
        'catalog_outlier'
    """

    def __init__(self, min_files: int = 30, tail_probability: float = 1e-4, alpha: float | None = None):
        if min_files < 2:
            raise ValueError(f"min_files must be >= 2, got {min_files}")
        if not 0.0 < tail_probability < 1.0:
            raise ValueError(f"tail_probability must be in (0, 1), got {tail_probability}")
        self.min_files = int(min_files)
        self.tail_probability = float(tail_probability)
        self.alpha = alpha
        self.detector_ = OnlineGaussian(alpha=alpha, ridge=1e-3, min_var=1e-6, feature_names=list(FEATURES))
        self.threshold_ = float(chi2.ppf(1.0 - self.tail_probability, len(FEATURES)))

    @property
    def n_files_(self) -> int:
        """Files learned so far."""
        return int(self.detector_.n_seen_)

    def score(self, report: QCReport) -> float | None:
        """Squared Mahalanobis score of a report against the catalog (no
        learning); None when the report has no features or the catalog holds
        fewer than ``min_files`` files."""
        x = features(report)
        if x is None or self.n_files_ < self.min_files:
            return None
        return float(self.detector_.score_one(x)) ** 2

    def update_and_score(self, report: QCReport) -> Defect | None:
        """Score ``report`` against the catalog, then learn it.

        Returns:
            a ``catalog_outlier`` :class:`~stream.schemas.Defect` or None.
            Reports without loudness (silence, decode errors) are neither
            scored nor learned.
        """
        x = features(report)
        if x is None:
            return None
        defect = None
        s2 = self.score(report)
        if s2 is not None and s2 > self.threshold_:
            contrib = self.detector_.explain_one(x)
            mean = dict(zip(FEATURES, self.detector_.mean_.tolist()))
            top = sorted(contrib, key=lambda k: -contrib[k])[:3]
            why = ", ".join(f"{k} {x[k]:.2f} (typical {mean[k]:.2f})" for k in top)
            defect = Defect(code="catalog_outlier", severity=Severity.uncertain,
                            detail=f"far from the catalog of {self.n_files_} files "
                                   f"(squared distance {s2:.0f} > {self.threshold_:.0f}): {why}")
        self.detector_.learn_one(x)
        return defect

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able via :mod:`detectors.serialize`)."""
        return {"model": "CatalogOutlierModel", "version": 1, "min_files": self.min_files,
                "tail_probability": self.tail_probability, "alpha": self.alpha,
                "detector": self.detector_.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` snapshot.

        Raises:
            ValueError: for a snapshot of another model or version.
        """
        if state.get("model") != "CatalogOutlierModel" or state.get("version") != 1:
            raise ValueError("not a CatalogOutlierModel v1 snapshot")
        self.__init__(int(state["min_files"]), float(state["tail_probability"]), state["alpha"])
        self.detector_.load_state_dict(state["detector"])
