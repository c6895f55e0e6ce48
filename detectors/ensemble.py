"""ScoreEnsemble: combine calibrated member scores (max or mean) and keep which member fired.

Method
    Each member has a :class:`~detectors.calibration.QuantileCalibrator`
    fed with that member's raw scores on clean traffic. A raw score ``s`` of
    member ``m`` becomes the calibrated score ``c_m = -log10 P_m(S >= s)``
    (0 for a typical score, 3 for a one-in-a-thousand score), so members with
    different raw scales become comparable. The ensemble score is
    ``max_m c_m`` (``combine="max"``, default) or ``mean_m c_m``
    (``combine="mean"``); ``reasons_many`` reports, per row, the member with
    the largest calibrated score and every member's raw score, tail
    probability and calibrated score. A member whose calibrator has seen no
    scores contributes 0 (no evidence).

    Members are either detectors that take the same input X (the ensemble
    then implements the detector API: ``learn_many`` teaches the members,
    ``score_many`` scores through them), or names only, for scores computed
    elsewhere (e.g. MIDAS edge scores): ``combine_scores`` and ``learn_scores``
    then take a dict ``{name: raw scores (n,)}``.

    Calibration is explicit: ``calibrate_many(X)`` feeds the members' scores
    of clean rows to the calibrators, and ``learn_scores(raw)`` feeds scores
    already computed by the caller (e.g. the stream's own ``score_many``
    output), at no extra scoring cost.

Parameters
    members: dict name -> detector, or a list of names for score-only
        members (default: HalfSpaceTrees, LODA and OnlineGaussian).
    combine: "max" or "mean".
    delta, buffer_size: the calibrators' parameters.

Memory
    The members' memory plus one calibrator (about 56 KiB) per member.

Example
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ens = ScoreEnsemble(members=["rate", "burst"])
    >>> ens.learn_scores({"rate": rng.normal(size=5000), "burst": rng.exponential(size=5000)})
    >>> combined, reasons = ens.combine_scores({"rate": np.array([0.0, 0.1]), "burst": np.array([0.5, 9.0])},
    ...                                        with_reasons=True)
    >>> bool(combined[1] > combined[0]), reasons[1]["fired"]
    (True, 'burst')

Source
    C. C. Aggarwal, S. Sathe, "Theoretical foundations and algorithms for
    outlier ensembles", SIGKDD Explorations 2015 (maximum and averaging of
    normalised scores); the calibration is described in
    :mod:`detectors.calibration`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from detectors.calibration import QuantileCalibrator

__all__ = ["ScoreEnsemble"]


def _registry() -> dict[str, type]:
    from detectors.gaussian import OnlineGaussian
    from detectors.hst import HalfSpaceTrees
    from detectors.iforest_window import SlidingWindowIForest
    from detectors.loda import LODA
    from detectors.microcluster import DenStream
    from detectors.robust import RobustZScore

    return {c.__name__: c for c in (OnlineGaussian, HalfSpaceTrees, SlidingWindowIForest, LODA, DenStream,
                                    RobustZScore)}


class ScoreEnsemble:
    """Max/mean of calibrated member scores with the reasons of the member that fired.

    See the module docstring for the method, parameters and memory.

    Attributes:
        members: dict name -> detector (None for score-only members).
        calibrators: dict name -> QuantileCalibrator.
    """

    def __init__(self, members: Mapping[str, Any] | list[str] | None = None, combine: str = "max",
                 delta: float = 1000.0, buffer_size: int = 5000):
        if combine not in ("max", "mean"):
            raise ValueError(f"combine must be 'max' or 'mean', got {combine!r}")
        if members is None:
            reg = _registry()
            members = {"hst": reg["HalfSpaceTrees"](), "loda": reg["LODA"](), "gaussian": reg["OnlineGaussian"]()}
        if isinstance(members, Mapping):
            self.members: dict[str, Any] = dict(members)
        else:
            self.members = {str(n): None for n in members}
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        self.combine = combine
        self.delta = float(delta)
        self.buffer_size = int(buffer_size)
        self.calibrators = {n: QuantileCalibrator(delta=self.delta, buffer_size=self.buffer_size)
                            for n in self.members}

    @property
    def names(self) -> list[str]:
        """Member names, in combination order."""
        return list(self.members)

    def _detectors(self) -> dict[str, Any]:
        missing = [n for n, d in self.members.items() if d is None]
        if missing:
            raise ValueError(f"members {missing} are score-only: use combine_scores / learn_scores")
        return self.members

    def _check_raw(self, raw: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        unknown = sorted(set(raw) - set(self.members))
        missing = sorted(set(self.members) - set(raw))
        if unknown or missing:
            raise ValueError(f"wrong member scores: missing {missing}, unexpected {unknown}")
        out = {n: np.atleast_1d(np.asarray(raw[n], dtype=np.float64)) for n in self.members}
        sizes = {v.shape for v in out.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ValueError(f"member scores must be 1-D arrays of equal length, got shapes {sorted(sizes)}")
        for n, v in out.items():
            if not np.isfinite(v).all():
                raise ValueError(f"scores of member {n!r} contain NaN or inf")
        return out, next(iter(sizes))[0]

    # -- calibration ------------------------------------------------------------------------
    def learn_scores(self, raw: Mapping[str, Any]) -> None:
        """Feed raw member scores of clean traffic, ``{name: (n,)}``, to the calibrators."""
        vals, _ = self._check_raw(raw)
        for n, v in vals.items():
            self.calibrators[n].learn_many(v)

    def calibrate_many(self, X: Any) -> None:
        """Score clean rows X (n, d) with every member and feed the calibrators (members unchanged)."""
        self.learn_scores({n: d.score_many(X) for n, d in self._detectors().items()})

    def calibrated(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Calibrated scores ``-log10(tail probability)`` per member (0 for an uncalibrated member)."""
        vals, n = self._check_raw(raw)
        out = {}
        for name, v in vals.items():
            cal = self.calibrators[name]
            out[name] = cal.transform(v) if cal.n_seen_ else np.zeros(n)
        return out

    # -- combination ------------------------------------------------------------------------
    def combine_scores(self, raw: Mapping[str, Any], with_reasons: bool = False):
        """Combine raw member scores ``{name: (n,)}``; returns combined float64 (n,)
        (and, with ``with_reasons``, a list of per-row reason dicts)."""
        cal = self.calibrated(raw)
        names = self.names
        M = np.stack([cal[n] for n in names], axis=1)
        combined = M.max(axis=1) if self.combine == "max" else M.mean(axis=1)
        combined = np.maximum(combined, 0.0)
        if not with_reasons:
            return combined
        vals, _ = self._check_raw(raw)
        win = M.argmax(axis=1)
        reasons = []
        for i in range(M.shape[0]):
            reasons.append({"fired": names[int(win[i])], "score": float(combined[i]),
                            "members": {n: {"raw": float(vals[n][i]), "calibrated": float(M[i, j]),
                                            "tail_probability": float(10.0 ** -M[i, j])}
                                        for j, n in enumerate(names)}})
        return combined, reasons

    # -- detector API (members are detectors on the same X) -------------------------------------------
    def learn_one(self, x: Mapping[str, float]) -> None:
        """Every member learns x."""
        for d in self._detectors().values():
            d.learn_one(x)

    def learn_many(self, X: Any) -> None:
        """Every member learns the rows of X (n, d); calibrators are unchanged."""
        for d in self._detectors().values():
            d.learn_many(X)

    def score_many(self, X: Any) -> np.ndarray:
        """Combined calibrated scores, float64 (n,), against the state before the batch."""
        return self.combine_scores({n: d.score_many(X) for n, d in self._detectors().items()})

    def score_one(self, x: Mapping[str, float]) -> float:
        """Combined calibrated score of one observation."""
        return float(self.combine_scores({n: [d.score_one(x)] for n, d in self._detectors().items()})[0])

    def reasons_many(self, X: Any) -> list[dict]:
        """Per row: the member that fired, the combined score and every member's raw/calibrated scores."""
        return self.combine_scores({n: d.score_many(X) for n, d in self._detectors().items()}, with_reasons=True)[1]

    def explain_one(self, x: Mapping[str, float]) -> dict[str, float]:
        """Calibrated score of each member for x (the member contributions to a max/mean)."""
        raw = {n: [d.score_one(x)] for n, d in self._detectors().items()}
        return {n: float(v[0]) for n, v in self.calibrated(raw).items()}

    # -- snapshots -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Snapshot: members' and calibrators' snapshots (plain values and arrays)."""
        return {"detector": "ScoreEnsemble", "version": 1,
                "params": {"combine": self.combine, "delta": self.delta, "buffer_size": self.buffer_size},
                "members": {n: (None if d is None else d.state_dict()) for n, d in self.members.items()},
                "calibrators": {n: c.state_dict() for n, c in self.calibrators.items()}}

    def load_state_dict(self, s: Mapping) -> None:
        """Restore a snapshot; members absent from this instance are rebuilt from their class name.

        Raises:
            ValueError: a snapshot of something else or of an unknown member class.
        """
        if s.get("detector") != "ScoreEnsemble":
            raise ValueError(f"snapshot is of {s.get('detector')!r}, not 'ScoreEnsemble'")
        p = s["params"]
        self.combine, self.delta, self.buffer_size = p["combine"], float(p["delta"]), int(p["buffer_size"])
        reg = _registry()
        members: dict[str, Any] = {}
        for n, ms in s["members"].items():
            if ms is None:
                members[n] = None
                continue
            det = self.members.get(n)
            if det is None or type(det).__name__ != ms["detector"]:
                if ms["detector"] not in reg:
                    raise ValueError(f"unknown member class {ms['detector']!r}")
                det = reg[ms["detector"]]()
            det.load_state_dict(ms)
            members[n] = det
        self.members = members
        self.calibrators = {}
        for n, cs in s["calibrators"].items():
            c = QuantileCalibrator()
            c.load_state_dict(cs)
            self.calibrators[n] = c
