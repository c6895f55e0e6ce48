"""Shared input validation and the base class of PlayGuard's online detectors.

Every detector in :mod:`detectors` (except the edge-stream MIDAS family) follows
the river-style API of CONVENTIONS.md, "Detector API":

- ``learn_one(x: dict)`` / ``score_one(x: dict) -> float``;
- ``learn_many(X)`` / ``score_many(X)`` on float arrays of shape ``(n, d)``;
- ``state_dict()`` / ``load_state_dict(state)`` with plain values only;
- ``explain_one(x) -> dict[str, float]`` where the method allows it.

This module turns dicts and arrays into validated ``float64`` matrices:

- a dict becomes a row whose column ``j`` is the ``j``-th key in sorted order,
  unless ``feature_names`` gives the order;
- the first *learn* call fixes the dimension (arrays) or key set (dicts); a later
  mismatch raises :class:`ValueError`;
- NaN, inf, non-numeric values, a wrong shape or wrong keys raise
  :class:`ValueError` naming the problem;
- univariate detectors take a dict with exactly one numeric value under any key,
  an array of shape ``(n, 1)``, or a 1-D array of shape ``(n,)``.

:class:`Detector` implements the public methods once; a subclass implements
``_learn(X)`` and ``_score(X)`` on validated ``(n, d)`` float64 arrays, and
``_get_state()`` / ``_set_state(state)``. ``learn_one(x)`` is exactly
``_learn`` on a single row, so ``learn_many`` equals a ``learn_one`` loop as long
as ``_learn`` processes rows in order (every detector here does).

>>> import numpy as np
>>> v = FeatureValidator()
>>> v.matrix_from_dict({"b": 2.0, "a": 1.0}, learning=True).tolist()
[[1.0, 2.0]]
>>> v.feature_names_in_
['a', 'b']
>>> v.matrix_from_dict({"a": 1.0, "c": 3.0}, learning=False)
Traceback (most recent call last):
...
ValueError: wrong keys: missing ['b'], unexpected ['c']

Source: river's ``learn_one``/``score_one`` API (Montiel et al., "River: machine
learning for streaming data in Python", JMLR 2021); scikit-learn's input
validation conventions (Pedregosa et al., JMLR 2011).
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np

__all__ = ["FeatureValidator", "Detector", "check_finite", "as_matrix"]


def check_finite(X: np.ndarray, names: list[str] | None = None) -> None:
    """Raise ``ValueError`` naming the first NaN or infinite cell of ``X`` (shape (n, d))."""
    finite = np.isfinite(X)
    if finite.all():
        return
    rows, cols = np.nonzero(~finite)
    i, j = int(rows[0]), int(cols[0])
    v = X[i, j]
    what = "NaN" if np.isnan(v) else "inf"
    col = f"feature {names[j]!r}" if names is not None and j < len(names) else f"column {j}"
    raise ValueError(f"input contains {what} at row {i}, {col}")


def as_matrix(X: Any, *, univariate: bool = False) -> np.ndarray:
    """Convert ``X`` to a C-contiguous float64 array of shape (n, d) without checking finiteness.

    Raises:
        ValueError: non-numeric values, or a shape other than (n, d)
            (univariate: (n, 1) or (n,)).
    """
    if isinstance(X, Mapping):
        raise ValueError("expected an array of shape (n, d), got a dict; use learn_one/score_one for dicts")
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"input is not numeric: {exc}") from exc
    if univariate and A.ndim == 1:
        A = A.reshape(-1, 1)
    if A.ndim != 2:
        want = "(n, 1) or (n,)" if univariate else "(n, d)"
        raise ValueError(f"wrong shape: expected {want}, got {A.shape}")
    if univariate and A.shape[1] != 1:
        raise ValueError(f"wrong shape: univariate detector expects (n, 1), got {A.shape}")
    return np.ascontiguousarray(A)


class FeatureValidator:
    """Fixes and checks the feature layout of a detector.

    Parameters:
        feature_names: optional column order for dict input; also fixes the
            dimension at construction.
        univariate: accept one value under any key, shape (n, 1) or (n,).

    Attributes:
        n_features_in_: the fixed dimension, or None before the first learn call.
        feature_names_in_: the fixed key order, or None when only arrays were seen.
    """

    def __init__(self, feature_names: list[str] | None = None, univariate: bool = False):
        self.univariate = bool(univariate)
        if feature_names is not None:
            names = [str(n) for n in feature_names]
            if len(set(names)) != len(names):
                raise ValueError(f"feature_names contains duplicates: {names}")
            if univariate and len(names) != 1:
                raise ValueError("a univariate detector takes exactly one feature name")
            self.feature_names_in_: list[str] | None = names
            self.n_features_in_: int | None = len(names)
        else:
            self.feature_names_in_ = None
            self.n_features_in_ = 1 if univariate else None

    # -- dicts ---------------------------------------------------------------
    def matrix_from_dict(self, x: Any, *, learning: bool) -> np.ndarray:
        """Turn one dict into a validated (1, d) float64 row.

        Raises:
            ValueError: not a dict, wrong keys, a non-numeric, NaN or inf value.
        """
        if not isinstance(x, Mapping):
            if isinstance(x, (np.ndarray, list, tuple)):
                return self.matrix(as_matrix(np.reshape(np.asarray(x, dtype=object), (1, -1))), learning=learning)
            raise ValueError(f"expected a dict of feature values, got {type(x).__name__}")
        if len(x) == 0:
            raise ValueError("wrong keys: empty dict")
        if self.univariate:
            if len(x) != 1:
                raise ValueError(f"wrong keys: univariate detector expects one value, got keys {sorted(map(str, x))}")
            key, val = next(iter(x.items()))
            row = np.array([[self._number(key, val)]], dtype=np.float64)
            check_finite(row, [str(key)])
            return row
        keys = [str(k) for k in x]
        if self.feature_names_in_ is None:
            names = sorted(keys)
            if self.n_features_in_ is not None and len(names) != self.n_features_in_:
                raise ValueError(f"wrong number of features: expected {self.n_features_in_}, got {len(names)}")
            if learning:
                self.feature_names_in_ = names
                self.n_features_in_ = len(names)
        else:
            names = self.feature_names_in_
            if set(keys) != set(names) or len(keys) != len(names):
                missing = sorted(set(names) - set(keys))
                extra = sorted(set(keys) - set(names))
                raise ValueError(f"wrong keys: missing {missing}, unexpected {extra}")
        lookup = {str(k): v for k, v in x.items()}
        row = np.array([[self._number(n, lookup[n]) for n in names]], dtype=np.float64)
        check_finite(row, names)
        return row

    @staticmethod
    def _number(key: Any, val: Any) -> float:
        # bools count as 0/1, as numpy converts them in arrays
        if not isinstance(val, (numbers.Real, np.number, np.bool_)):
            raise ValueError(f"feature {key!r} is not a number: {val!r}")
        return float(val)

    # -- arrays --------------------------------------------------------------
    def matrix(self, X: Any, *, learning: bool) -> np.ndarray:
        """Validate an array; returns C-contiguous float64 of shape (n, d).

        Raises:
            ValueError: wrong shape, dimension mismatch, non-numeric, NaN or inf.
        """
        A = as_matrix(X, univariate=self.univariate)
        d = A.shape[1]
        if self.n_features_in_ is None:
            if d == 0:
                raise ValueError("wrong shape: zero features")
            if learning:
                self.n_features_in_ = d
        elif d != self.n_features_in_:
            raise ValueError(f"wrong number of features: expected {self.n_features_in_}, got {d}")
        check_finite(A, self.feature_names_in_)
        return A

    def names(self) -> list[str]:
        """Feature names used by ``explain_one``: the fixed keys, else ``x0 .. x{d-1}``."""
        if self.feature_names_in_ is not None:
            return list(self.feature_names_in_)
        return [f"x{j}" for j in range(self.n_features_in_ or 0)]

    def state(self) -> dict:
        """Layout as plain values (for snapshots)."""
        return {"n_features_in": self.n_features_in_, "feature_names_in": self.feature_names_in_,
                "univariate": self.univariate}

    def load(self, s: Mapping) -> None:
        """Restore a layout saved by ``state``."""
        self.n_features_in_ = None if s["n_features_in"] is None else int(s["n_features_in"])
        self.feature_names_in_ = None if s["feature_names_in"] is None else [str(n) for n in s["feature_names_in"]]
        self.univariate = bool(s["univariate"])


class Detector:
    """Base class: validation plus the public API; subclasses implement the method.

    Subclasses set ``univariate`` (class attribute), call ``super().__init__``
    with ``feature_names``, and implement:

    - ``_learn(X)``: update the state with rows of X (n, d) float64, in order;
    - ``_score(X) -> ndarray (n,)``: score rows against the current state,
      without changing it; called only once the dimension is fixed;
    - ``_get_state() -> dict`` / ``_set_state(dict)``: the fitted state only;
    - optionally ``_explain(x_row) -> ndarray (d,)``.

    Before the first learn call, ``score_one``/``score_many`` return 0.0 (no
    evidence yet) after validating the input.
    """

    univariate: bool = False

    def __init__(self, feature_names: list[str] | None = None):
        self.feature_names = None if feature_names is None else list(feature_names)
        self._v = FeatureValidator(self.feature_names, univariate=self.univariate)

    # -- fixed layout ----------------------------------------------------------
    @property
    def n_features_in_(self) -> int | None:
        """Fixed feature dimension, or None before the first learn call."""
        return self._v.n_features_in_

    @property
    def feature_names_in_(self) -> list[str] | None:
        """Fixed dict key order, or None when only arrays were seen."""
        return self._v.feature_names_in_

    # -- public API --------------------------------------------------------------
    def learn_one(self, x: Mapping[str, float]) -> None:
        """Update the state with one observation (dict of feature -> value)."""
        self._learn(self._v.matrix_from_dict(x, learning=True))

    def score_one(self, x: Mapping[str, float]) -> float:
        """Anomaly score of one observation (higher = more anomalous); no state change."""
        X = self._v.matrix_from_dict(x, learning=False)
        return float(self._score_checked(X)[0])

    def learn_many(self, X: Any) -> None:
        """Update the state with the rows of X, shape (n, d), as a learn_one loop would."""
        A = self._v.matrix(X, learning=True)
        if A.shape[0]:
            self._learn(A)

    def score_many(self, X: Any) -> np.ndarray:
        """Scores, shape (n,), float64, of every row against the state before the batch."""
        A = self._v.matrix(X, learning=False)
        return self._score_checked(A)

    def explain_one(self, x: Mapping[str, float]) -> dict[str, float]:
        """Per-feature contributions to the score of ``x`` (see the subclass for their meaning).

        Raises:
            NotImplementedError: when the method has no per-feature decomposition.
        """
        if type(self)._explain is Detector._explain:
            raise NotImplementedError(f"{type(self).__name__} has no per-feature explanation")
        X = self._v.matrix_from_dict(x, learning=False)
        if not self._ready():
            return {n: 0.0 for n in self._v.names()} if self._v.n_features_in_ else {}
        contrib = np.asarray(self._explain(X[0]), dtype=np.float64)
        names = self._v.names()
        if self.univariate and self._v.feature_names_in_ is None and isinstance(x, Mapping):
            names = [str(next(iter(x)))]  # univariate: the caller's key, whatever it is
        return {n: float(c) for n, c in zip(names, contrib)}

    def _score_checked(self, A: np.ndarray) -> np.ndarray:
        if A.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        if not self._ready() or A.shape[1] != self._v.n_features_in_:
            return np.zeros(A.shape[0], dtype=np.float64)
        s = np.asarray(self._score(A), dtype=np.float64)
        return s

    # -- snapshots ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Snapshot: only dicts, lists, numbers, strings, bools, None and numpy arrays."""
        return {"detector": type(self).__name__, "version": 1, "layout": self._v.state(),
                "params": self._params(), "fitted": self._get_state()}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a snapshot made by ``state_dict`` of the same class.

        Raises:
            ValueError: a snapshot of another detector class or version.
        """
        if state.get("detector") != type(self).__name__:
            raise ValueError(f"snapshot is of {state.get('detector')!r}, not {type(self).__name__!r}")
        if state.get("version") != 1:
            raise ValueError(f"unsupported snapshot version {state.get('version')!r}")
        for k, v in state["params"].items():
            setattr(self, k, v)
        self._v.load(state["layout"])
        self._set_state(state["fitted"])

    # -- hooks -------------------------------------------------------------------
    def _params(self) -> dict:
        return {}

    def _ready(self) -> bool:
        return self._v.n_features_in_ is not None

    def _learn(self, X: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _explain(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no per-feature explanation")

    def _get_state(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_state(self, s: Mapping) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
