"""Contract tests of the detector API (CONVENTIONS.md, "Detector API") for every river-style detector.

Equivalence (score_many vs a score_one loop, learn_many vs a learn_one loop),
snapshot round trips through detectors.serialize, bad input, univariate input,
and the runnable examples in every module's docstring.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from detectors import (
    LODA,
    DenStream,
    HalfSpaceTrees,
    OnlineGaussian,
    RobustZScore,
    SlidingWindowIForest,
)
from detectors.serialize import dumps, loads

NAMES = ["a", "b", "c"]

FACTORIES = {
    "hst": lambda: HalfSpaceTrees(n_trees=10, height=6, window_size=50, seed=1),
    "hst_limits": lambda: HalfSpaceTrees(n_trees=5, height=5, window_size=40, limits=[[-3, 3]] * 3, seed=2),
    "loda": lambda: LODA(n_projections=20, n_bins=8, window_size=50, seed=1),
    "gaussian_ew": lambda: OnlineGaussian(alpha=0.01),
    "gaussian_welford": lambda: OnlineGaussian(alpha=None),
    "denstream": lambda: DenStream(eps=1.0, decay=0.01, mu=4, beta=0.5),
    "iforest_sklearn": lambda: SlidingWindowIForest(window_size=100, refit_every=80, warmup=40, n_estimators=10,
                                                     seed=1),
    "iforest_pyod": lambda: SlidingWindowIForest(window_size=100, refit_every=80, warmup=40, n_estimators=10,
                                                  engine="pyod", seed=1),
}
UNIVARIATE = {
    "robust_median": lambda: RobustZScore(alpha=0.05),
    "robust_mean": lambda: RobustZScore(alpha=0.05, method="mean"),
    "robust_seasonal": lambda: RobustZScore(alpha=0.05, period=7),
}
ALL = {**FACTORIES, **UNIVARIATE}


def _data(name: str, n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = 1 if name in UNIVARIATE else 3
    X = rng.normal(size=(n, d))
    X[::37] += 6.0  # a few outliers so scores vary
    return X


def _dicts(X: np.ndarray, name: str) -> list[dict]:
    if name in UNIVARIATE:
        return [{"value": float(r[0])} for r in X]
    return [dict(zip(NAMES, map(float, r))) for r in X]


def _state_bytes(det) -> bytes:
    return dumps(det.state_dict())


@pytest.mark.parametrize("name", sorted(ALL))
def test_score_many_equals_score_one_loop_and_changes_nothing(name):
    det = ALL[name]()
    X = _data(name)
    det.learn_many(X[:200])
    before = _state_bytes(det)
    batch = det.score_many(X[200:])
    loop = np.array([det.score_one(x) for x in _dicts(X[200:], name)])
    assert np.array_equal(batch, loop)
    assert _state_bytes(det) == before
    assert batch.dtype == np.float64 and batch.shape == (100,)
    assert np.isfinite(batch).all() and (batch >= 0).all()
    assert batch.std() > 0, "scores should vary once the detector has learned"


@pytest.mark.parametrize("name", sorted(ALL))
def test_learn_many_equals_learn_one_loop(name):
    X = _data(name)
    a, b, c = ALL[name](), ALL[name](), ALL[name]()
    a.learn_many(X)
    for x in _dicts(X, name):
        b.learn_one(x)
    for lo, hi in [(0, 7), (7, 7), (7, 120), (120, 121), (121, 300)]:  # uneven chunks, one empty
        c.learn_many(X[lo:hi])
    Y = _data(name, n=60, seed=1)
    sa = a.score_many(Y)
    assert np.array_equal(sa, b.score_many(Y))
    assert np.array_equal(sa, c.score_many(Y))
    la, lb = loads(_state_bytes(a)), loads(_state_bytes(b))
    assert _fitted_equal(la["fitted"], lb["fitted"])


def _fitted_equal(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_fitted_equal(x[k], y[k]) for k in x)
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.shape == y.shape and np.array_equal(x, y)
    if isinstance(x, list):
        return len(x) == len(y) and all(_fitted_equal(u, v) for u, v in zip(x, y))
    return x == y


@pytest.mark.parametrize("name", sorted(ALL))
def test_snapshot_round_trip_gives_identical_scores(name):
    X = _data(name)
    det = ALL[name]()
    det.learn_many(X[:150])
    blob = dumps(det.state_dict())
    restored = type(det)()  # default constructor: the snapshot carries the parameters
    restored.load_state_dict(loads(blob))
    assert np.array_equal(det.score_many(X[150:]), restored.score_many(X[150:]))
    det.learn_many(X[150:250])
    restored.learn_many(X[150:250])
    assert np.array_equal(det.score_many(X[250:]), restored.score_many(X[250:]))


@pytest.mark.parametrize("name", sorted(ALL))
def test_snapshot_contains_only_plain_values(name):
    det = ALL[name]()
    det.learn_many(_data(name)[:120])

    def walk(v):
        if isinstance(v, dict):
            assert all(isinstance(k, str) for k in v)
            for u in v.values():
                walk(u)
        elif isinstance(v, list):
            for u in v:
                walk(u)
        else:
            assert v is None or isinstance(v, (bool, int, float, str, np.ndarray)), type(v)

    walk(det.state_dict())


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bad_input_raises_value_error_naming_the_problem(name):
    det = FACTORIES[name]()
    X = _data(name)
    det.learn_many(X[:100])
    bad = X[:5].copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        det.score_many(bad)
    with pytest.raises(ValueError, match="NaN"):
        det.learn_many(bad)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="inf"):
        det.learn_many(bad)
    with pytest.raises(ValueError, match="inf.*'b'"):
        det.score_one({"a": 1.0, "b": float("inf"), "c": 0.0})
    with pytest.raises(ValueError, match="wrong shape"):
        det.score_many(X[0])
    with pytest.raises(ValueError, match="wrong shape"):
        det.learn_many(X[:4].reshape(2, 2, 3))
    with pytest.raises(ValueError, match="wrong number of features"):
        det.learn_many(np.zeros((3, 4)))
    det.learn_one({"a": 0.0, "b": 0.1, "c": 0.2})  # fixes the key set
    with pytest.raises(ValueError, match="wrong keys"):
        det.learn_one({"a": 0.0, "b": 0.1, "z": 0.2})
    with pytest.raises(ValueError, match="not a number"):
        det.score_one({"a": 0.0, "b": "x", "c": 0.2})
    with pytest.raises(ValueError, match="not numeric"):
        det.score_many([["a", "b", "c"]])


def test_dict_columns_follow_sorted_keys_or_feature_names():
    a = OnlineGaussian(alpha=None)
    b = OnlineGaussian(alpha=None, feature_names=["z", "a"])
    rng = np.random.default_rng(3)
    for u, v in rng.normal(size=(50, 2)) * [1.0, 10.0]:
        a.learn_one({"z": v, "a": u})   # sorted keys: column 0 = "a"
        b.learn_one({"a": v, "z": u})   # feature_names: column 0 = "z"
    assert a.feature_names_in_ == ["a", "z"]
    assert np.allclose(a.mean_, b.mean_)
    assert a.covariance_[1, 1] > 10 * a.covariance_[0, 0]


@pytest.mark.parametrize("name", sorted(UNIVARIATE))
def test_univariate_accepts_any_single_key_and_column_arrays(name):
    X = _data(name)
    a, b, c = UNIVARIATE[name](), UNIVARIATE[name](), UNIVARIATE[name]()
    a.learn_many(X)
    b.learn_many(X[:, 0])  # shape (n,)
    for i, r in enumerate(X):
        c.learn_one({f"key{i % 3}": float(r[0])})  # any key
    assert a.score_one({"plays": 9.0}) == b.score_one({"x": 9.0}) == c.score_one({"y": 9.0})
    with pytest.raises(ValueError, match="wrong shape"):
        a.score_many(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="one value"):
        a.score_one({"x": 1.0, "y": 2.0})
    with pytest.raises(ValueError, match="NaN"):
        a.learn_one({"x": float("nan")})


@pytest.mark.parametrize("name", sorted(ALL))
def test_outliers_score_above_inliers(name):
    det = ALL[name]()
    rng = np.random.default_rng(5)
    d = 1 if name in UNIVARIATE else 3
    det.learn_many(rng.normal(size=(400, d)))
    inl = det.score_many(rng.normal(size=(50, d)))
    out = det.score_many(rng.normal(size=(50, d)) + 8.0)
    assert np.median(out) > np.percentile(inl, 95)


def test_scores_are_zero_before_learning_and_comparable_across_instances():
    X = np.random.default_rng(2).normal(size=(300, 3))
    for make in FACTORIES.values():
        assert np.array_equal(make().score_many(X[:5]), np.zeros(5))
        a, b = make(), make()
        a.learn_many(X)
        b.learn_many(X)
        assert np.array_equal(a.score_many(X[:20]), b.score_many(X[:20]))


@pytest.mark.parametrize("module", ["base", "calibration", "ensemble", "gaussian", "hst", "iforest_window",
                                    "loda", "microcluster", "midas", "robust", "serialize"])
def test_docstring_examples_run(module):
    mod = importlib.import_module(f"detectors.{module}")
    assert mod.__doc__ and "Source" in mod.__doc__
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_explain_one_where_the_method_allows_it():
    X = _data("loda")
    for make in (lambda: OnlineGaussian(feature_names=NAMES), lambda: LODA(window_size=50, feature_names=NAMES)):
        det = make()
        assert det.explain_one({"a": 0.0, "b": 0.0, "c": 0.0}) == {"a": 0.0, "b": 0.0, "c": 0.0}  # no data yet
        det.learn_many(X)
        e = det.explain_one({"a": 0.0, "b": 12.0, "c": 0.0})
        assert set(e) == set(NAMES) and max(e, key=e.get) == "b"
    rz = RobustZScore()
    rz.learn_many(_data("robust_median"))
    assert rz.explain_one({"v": 10.0})["v"] == pytest.approx(rz.score_one({"v": 10.0}))
    for make in (HalfSpaceTrees, DenStream, SlidingWindowIForest):
        with pytest.raises(NotImplementedError):
            make().explain_one({"a": 0.0, "b": 0.0, "c": 0.0})


@pytest.mark.parametrize("name", sorted(ALL))
def test_loading_into_a_used_instance_drops_its_caches(name):
    X = _data(name)
    other = ALL[name]()
    other.learn_many(X[100:300][::-1])  # another history, same number of observations
    blob = dumps(other.state_dict())
    used = ALL[name]()
    used.learn_many(X[:200])
    used.score_many(X[:10])  # fills any score cache (precision matrix, leaf table, ...)
    used.load_state_dict(loads(blob))
    assert np.array_equal(used.score_many(X[:50]), other.score_many(X[:50]))
