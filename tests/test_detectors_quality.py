"""Known anomalies on seeded synthetic streams, reference agreement with river / scikit-learn /
PyOD, calibration accuracy and the ensemble's reasons. Each AUC bar is stated in the test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import (
    LODA,
    DenStream,
    HalfSpaceTrees,
    OnlineGaussian,
    QuantileCalibrator,
    RobustZScore,
    ScoreEnsemble,
    SlidingWindowIForest,
)
from detectors.serialize import dumps, loads


def _prequential(det, X, batch=50):
    """Score each micro-batch against the state before it, then learn it (the stream core's order)."""
    out = np.empty(X.shape[0])
    for s in range(0, X.shape[0], batch):
        out[s:s + batch] = det.score_many(X[s:s + batch])
        det.learn_many(X[s:s + batch])
    return out


def _point_anomaly_stream(seed=0, n=4000, d=4, shift=3.0, start=1000, n_anom=60):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.zeros(n, bool)
    idx = rng.choice(np.arange(start, n), n_anom, replace=False)
    direction = rng.normal(size=(n_anom, d))
    X[idx] += shift * direction / np.linalg.norm(direction, axis=1, keepdims=True) * np.sqrt(d) / 1.2
    y[idx] = True
    return X, y


# -- reference agreement with river ----------------------------------------------------------------

def test_hst_auc_comparable_to_river():
    from river import anomaly

    X, y = _point_anomaly_stream(seed=11)
    ours = _prequential(HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=1), X)
    lo, hi = X[:250].min(0), X[:250].max(0)
    Xs = (X - lo) / (hi - lo)  # river's HST expects features in [0, 1]
    rv = anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=1)  # river's defaults
    theirs = np.empty(len(X))
    for i, row in enumerate(Xs):
        x = {f"x{j}": v for j, v in enumerate(row)}
        theirs[i] = rv.score_one(x)
        rv.learn_one(x)
    keep = np.arange(len(X)) >= 1000
    a_ours, a_river = roc_auc_score(y[keep], ours[keep]), roc_auc_score(y[keep], theirs[keep])
    assert a_ours >= 0.9
    assert a_ours >= a_river - 0.02, (a_ours, a_river)


def test_loda_auc_comparable_to_river():
    from river import anomaly

    X, y = _point_anomaly_stream(seed=12, n=2500)
    ours = _prequential(LODA(window_size=500, seed=1), X)
    rv = anomaly.LODA(seed=1)
    theirs = np.empty(len(X))
    for i, row in enumerate(X):
        x = {f"x{j}": v for j, v in enumerate(row)}
        theirs[i] = rv.score_one(x)
        rv.learn_one(x)
    keep = np.arange(len(X)) >= 1000
    a_ours, a_river = roc_auc_score(y[keep], ours[keep]), roc_auc_score(y[keep], theirs[keep])
    assert a_ours >= 0.9
    assert a_ours >= a_river - 0.02, (a_ours, a_river)


# -- reference agreement with scikit-learn / PyOD ------------------------------------------------------

@pytest.mark.parametrize("engine", ["sklearn", "pyod"])
def test_sliding_forest_matches_engine_on_same_window_and_seed(engine):
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2600, 5))
    det = SlidingWindowIForest(window_size=1000, refit_every=700, warmup=256, n_estimators=50, engine=engine,
                               seed=5)
    det.learn_many(X[:2200])
    assert det.n_fits_ == 4  # at 256, 700, 1400, 2100 observations
    # the window is kept in float32, the dtype the engine converts to before growing its trees
    assert det.train_window_.dtype == np.float32
    assert np.array_equal(det.train_window_, X[1100:2100].astype(np.float32))
    if engine == "sklearn":
        ref = IsolationForest(n_estimators=50, max_samples=256, random_state=5 + 3, n_jobs=1).fit(X[1100:2100])
        want = -ref.score_samples(X[2200:])
    else:
        from pyod.models.iforest import IForest

        ref = IForest(n_estimators=50, max_samples=256, random_state=5 + 3, n_jobs=1).fit(X[1100:2100])
        want = -ref.detector_.score_samples(X[2200:])
        # PyOD's own decision_function is the same ranking
        assert np.array_equal(np.argsort(ref.decision_function(X[2200:]), kind="stable"),
                              np.argsort(want, kind="stable"))
    got = det.score_many(X[2200:])
    assert np.array_equal(got, want)  # bit for bit: same decisions, leaf terms added in the same order


def _threshold_probes(model, rng, n):
    """Rows (n, d) whose cells sit on, just above and just below the forest's float64 thresholds."""
    thr = np.concatenate([t.tree_.threshold[t.tree_.children_left != -1] for t in model.estimators_])
    t32 = thr.astype(np.float32)
    cand = np.concatenate([
        thr,                                                  # the double itself (rounds to either side in float32)
        t32.astype(np.float64),                               # its nearest float32
        np.nextafter(t32, np.float32(np.inf)).astype(np.float64),
        np.nextafter(t32, np.float32(-np.inf)).astype(np.float64),
        np.nextafter(thr, np.inf), np.nextafter(thr, -np.inf),
        [0.0, -0.0, 1e-45, -1e-45, 1e-300, -1e-300, 1e38, -1e38],
    ])
    return rng.choice(cand, size=(n, model.n_features_in_))


@pytest.mark.parametrize("engine", ["sklearn", "pyod"])
def test_sliding_forest_is_bit_exact_on_threshold_values(engine):
    """Cells equal to (or one float32 step from) a split threshold take scikit-learn's branch exactly."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 4))
    X[:, 3] = np.round(X[:, 3])  # ties and zeros: thresholds between integer values
    X[::50, 1] = -0.0
    det = SlidingWindowIForest(window_size=1000, refit_every=1000, warmup=1000, n_estimators=100, engine=engine,
                               seed=11)
    det.learn_many(X[:1000])
    forest = det.model_ if engine == "sklearn" else det.model_.detector_
    Y = np.vstack([X[1000:], _threshold_probes(forest, rng, 4000)])
    assert np.array_equal(det.score_many(Y), -forest.score_samples(Y))
    assert np.array_equal(det.score_many(X[:1000]), -forest.score_samples(X[:1000]))  # its own training rows


def test_float32_keys_order_like_the_floats():
    """The kernel compares uint32 keys; their order must be the float order (ties: -0.0 == +0.0)."""
    from detectors.iforest_window import _keys_of_float32, _path_sums, _threshold_keys

    f32 = np.finfo(np.float32)
    v = np.array([-np.inf, -f32.max, -1.5, -f32.tiny, -1e-45, -0.0, 0.0, 1e-45, f32.tiny, 1.0, f32.max, np.inf],
                 dtype=np.float32)
    v = np.concatenate([v, np.random.default_rng(0).normal(size=200).astype(np.float32)])
    k = _keys_of_float32(v).astype(np.int64)
    assert np.array_equal(k[:, None] <= k[None, :], v[:, None] <= v[None, :])
    t = np.array([0.1, -0.1, 1e-50, -1e-50, 1e39, -1e39, 0.0, -0.0, np.inf, 2.0 ** -149, 3.0])
    # x <= t for float32 x  <=>  key(x) <= threshold key
    kt = _threshold_keys(t).astype(np.int64)
    assert np.array_equal(k[:, None] <= kt[None, :], v.astype(np.float64)[:, None] <= t[None, :])
    # the scoring kernel's own conversion of float64 rows: one stump per threshold, leaf values 0 / 1
    nodes = (_threshold_keys(t).astype(np.uint64) << np.uint64(32))[:, None]  # feature 0
    leaves = np.zeros((t.size, 2))
    for i in range(t.size):
        leaves[i, 1] = 2.0 ** i  # goes right (x > t) in tree i
    out = np.empty(v.size)
    _path_sums(v.astype(np.float64)[:, None], nodes, leaves, 1, out)
    want = ((v.astype(np.float64)[:, None] > t[None, :]) * 2.0 ** np.arange(t.size)).sum(axis=1)
    assert np.array_equal(out, want)


def test_sliding_forest_default_windows_tile_the_stream():
    """With window_size == refit_every every learned event belongs to exactly one forest's window."""
    det = SlidingWindowIForest(window_size=300, refit_every=300, warmup=100, n_estimators=5, seed=0)
    assert SlidingWindowIForest().window_size == SlidingWindowIForest().refit_every
    X = np.random.default_rng(4).normal(size=(1000, 2))
    seen = []
    for s in range(0, 1000, 70):  # batches that straddle the refit points
        det.learn_many(X[s:s + 70])
        if det.n_fits_ and (not seen or seen[-1][0] != det.n_fits_):
            seen.append((det.n_fits_, det.train_window_.copy()))
    assert [k for k, _ in seen] == [1, 2, 3, 4]  # fits at 100, 300, 600, 900
    for k, (_, W) in enumerate(seen[1:]):
        assert np.array_equal(W, X[300 * k:300 * (k + 1)].astype(np.float32))


def test_sliding_forest_on_a_constant_window_matches_the_engine():
    """Single-leaf trees (nothing to split) become always-left heaps with the root's value."""
    from sklearn.ensemble import IsolationForest

    det = SlidingWindowIForest(window_size=300, refit_every=300, warmup=300, n_estimators=20, seed=2)
    det.learn_many(np.ones((300, 3)))
    Y = np.vstack([np.ones((2, 3)), np.random.default_rng(0).normal(size=(20, 3)), np.full((1, 3), 1e300)])
    ref = IsolationForest(n_estimators=20, max_samples=256, random_state=2, n_jobs=1).fit(np.ones((300, 3)))
    assert np.array_equal(det.score_many(Y[:-1]), -ref.score_samples(Y[:-1]))
    assert det.score_many(Y[-1:])[0] == det.score_many(Y[:1])[0]  # beyond float32: still the root's leaf


def test_sliding_forest_refuses_values_beyond_float32():
    det = SlidingWindowIForest(window_size=50, refit_every=50, warmup=20, n_estimators=5)
    det.learn_many(np.zeros((10, 2)))
    before = dumps(det.state_dict())
    with pytest.raises(ValueError, match="float32 range"):
        det.learn_many(np.array([[0.0, 1.0], [4e38, 0.0]]))
    assert dumps(det.state_dict()) == before


# -- univariate metric streams: spikes, level shifts, seasonality -------------------------------------

def _metric(kind, seed=0, n=4000):
    rng = np.random.default_rng(seed)
    x = 100.0 + rng.normal(0, 5, n)
    y = np.zeros(n, bool)
    if kind == "season":
        x += 40.0 * np.sin(2 * np.pi * np.arange(n) / 200)
    if kind in ("spike", "season"):
        idx = rng.choice(np.arange(1000, n), 40, replace=False)
        x[idx] += rng.choice([-1.0, 1.0], 40) * rng.uniform(25, 40, 40)
        y[idx] = True
    if kind == "shift":
        for s in range(1000, n, 750):
            x[s:] += 30.0 * (1 if (s // 750) % 2 else -1)
            y[s:s + 5] = True  # the onset of each shift
    return x.reshape(-1, 1), y


UNIVARIATE_DETECTORS = {
    "robust": lambda: RobustZScore(alpha=0.02),
    "gaussian": lambda: OnlineGaussian(alpha=0.01),
    "hst": lambda: HalfSpaceTrees(window_size=100, seed=0),
    "loda": lambda: LODA(n_projections=10, window_size=200, seed=0),
    "iforest": lambda: SlidingWindowIForest(window_size=500, refit_every=250, n_estimators=50, seed=0),
}


# AUC bars. Level shifts are labelled only at their onset (5 values): window-based models keep
# flagging the new level until their window or refit catches up, hence the lower bars of HST,
# LODA and the sliding forest (refit every 250 values here).
BARS = {"spike": {"robust": 0.98, "gaussian": 0.98, "hst": 0.98, "loda": 0.98, "iforest": 0.98},
        "shift": {"robust": 0.98, "gaussian": 0.98, "hst": 0.93, "loda": 0.89, "iforest": 0.8}}


@pytest.mark.parametrize("name", sorted(UNIVARIATE_DETECTORS))
@pytest.mark.parametrize("kind", ["spike", "shift"])
def test_univariate_spikes_and_level_shifts(name, kind):
    bar = BARS[kind][name]
    X, y = _metric(kind, seed=3)
    det = UNIVARIATE_DETECTORS[name]()
    s = _prequential(det, X, batch=1)
    keep = np.arange(len(y)) >= 1000
    assert roc_auc_score(y[keep], s[keep]) >= bar


def test_robust_seasonal_option_handles_seasonality():
    X, y = _metric("season", seed=4)
    keep = np.arange(len(y)) >= 2000
    plain = _prequential(RobustZScore(alpha=0.02), X, batch=1)
    seasonal = _prequential(RobustZScore(alpha=0.02, period=200), X, batch=1)
    a_plain, a_seas = roc_auc_score(y[keep], plain[keep]), roc_auc_score(y[keep], seasonal[keep])
    assert a_seas >= 0.9
    assert a_seas > a_plain + 0.1


def test_robust_scores_do_not_saturate_and_stay_finite():
    det = RobustZScore()
    det.learn_many(np.full((50, 1), 7.0))  # a constant series: MAD = 0
    s = det.score_many(np.array([[7.0], [7.1], [8.0], [70.0], [7e6]]))
    assert s[0] == 0.0
    assert np.isfinite(s).all()
    assert np.all(np.diff(s) > 0)  # strictly increasing with the deviation: no clipping
    det2 = RobustZScore()
    det2.learn_many(np.random.default_rng(0).normal(0, 1, (500, 1)))
    s2 = det2.score_many(np.array([[3.0], [30.0], [300.0]]))
    assert s2[1] > 5 * s2[0] and s2[2] > 5 * s2[1]


# -- multivariate ---------------------------------------------------------------------------------------

def test_gaussian_finds_broken_correlation_and_explains_it():
    rng = np.random.default_rng(7)
    n = 3000
    z = rng.normal(size=n)
    X = np.column_stack([z, z + 0.1 * rng.normal(size=n), rng.normal(size=n)])
    y = np.zeros(n, bool)
    idx = rng.choice(np.nonzero((np.arange(n) >= 1000) & (np.abs(z) > 1.0))[0], 30, replace=False)
    X[idx, 1] = -X[idx, 0]  # each value alone is ordinary; their relation is not
    y[idx] = True
    det = OnlineGaussian(alpha=None, feature_names=["plays", "skips", "hour"])
    s = _prequential(det, X)
    assert roc_auc_score(y[1000:], s[1000:]) >= 0.98
    e = det.explain_one({"plays": 2.0, "skips": -2.0, "hour": 0.0})
    assert sorted(e, key=e.get)[-1] in ("plays", "skips")
    assert e["hour"] < 0.05 * max(e.values())


def test_denstream_flags_then_groups_a_dense_new_cluster():
    rng = np.random.default_rng(8)
    centers = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0], [0.0, 4.0, 4.0, 0.0]])
    normal = centers[rng.integers(0, 3, 3000)] + rng.normal(0, 0.4, (3000, 4))
    det = DenStream(eps=1.0, decay=1e-3, mu=10, beta=0.5)
    det.learn_many(normal[:2000])
    # a lockstep group of accounts appears: near-identical feature vectors far from the normal clusters
    bots = np.array([6.0, -3.0, 6.0, 5.0]) + rng.normal(0, 0.05, (60, 4))
    first = det.score_many(bots[:5])
    inliers = det.score_many(normal[2000:2500])
    y = np.r_[np.zeros(500, bool), np.ones(5, bool)]
    assert roc_auc_score(y, np.r_[inliers, first]) >= 0.99
    for k in range(60):  # interleave the group with normal traffic
        det.learn_many(normal[2000 + 10 * k:2010 + 10 * k])
        det.learn_one(dict(zip("abcd", bots[k])))
    ids = det.predict_many(bots)
    assert ids[0] >= 0 and np.all(ids == ids[0])  # one stable group id
    normal_ids = det.predict_many(normal[2900:])
    assert ids[0] not in set(normal_ids.tolist())
    assert det.score_many(bots).mean() < 0.2 * first.mean()  # the promoted cluster is now normal
    assert {c["id"] for c in det.clusters() if c["kind"] == "potential"} >= {int(ids[0])}


# -- calibration and ensemble ------------------------------------------------------------------------------

def test_calibrator_tail_probabilities_and_budget():
    rng = np.random.default_rng(9)
    clean = rng.standard_exponential(200_000)
    cal = QuantileCalibrator()
    cal.learn_many(clean)
    for s in (0.5, 2.0, 5.0, 7.0):
        assert abs(cal.tail_probability(s) / np.exp(-s) - 1.0) < 0.1
    # 1 alert per 1,000 entities per day with 24 hourly scores per entity -> p = 1/24,000
    thr = cal.set_budget(1.0, scores_per_entity_per_day=24)
    assert abs(cal.target_tail_probability_ - 1 / 24_000) < 1e-15
    fresh = rng.standard_exponential(2_000_000)
    rate = cal.is_alert(fresh).mean()
    assert 0.5 / 24_000 < rate < 2.0 / 24_000
    assert thr == pytest.approx(np.log(24_000), rel=0.1)
    # beyond the maximum: still decreasing, never zero
    p = cal.tail_probability(np.array([cal.max_, cal.max_ + 1, cal.max_ + 10]))
    assert np.all(np.diff(p) < 0) and p[-1] > 0


def test_calibrator_learn_many_equals_loop_and_snapshot():
    x = np.random.default_rng(1).normal(size=12_345)
    a, b = QuantileCalibrator(buffer_size=1000), QuantileCalibrator(buffer_size=1000)
    a.learn_many(x)
    for v in x:
        b.learn_one(float(v))
    q = np.linspace(-4, 4, 33)
    assert np.array_equal(a.tail_probability(q), b.tail_probability(q))
    c = QuantileCalibrator()
    c.load_state_dict(loads(dumps(a.state_dict())))
    assert np.array_equal(a.tail_probability(q), c.tail_probability(q))
    with pytest.raises(ValueError, match="NaN"):
        a.learn_many([1.0, float("nan")])
    with pytest.raises(ValueError, match="no scores"):
        QuantileCalibrator().tail_probability(1.0)
    with pytest.raises(ValueError, match="set_budget"):
        QuantileCalibrator().is_alert([1.0])


def test_ensemble_keeps_the_reason_of_the_member_that_fired():
    rng = np.random.default_rng(10)
    X = rng.normal(size=(3000, 3))
    ens = ScoreEnsemble(members={"gauss": OnlineGaussian(alpha=None), "loda": LODA(window_size=500, seed=0)})
    ens.learn_many(X[:2000])
    ens.calibrate_many(X[2000:])
    probe = np.array([[0.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    s = ens.score_many(probe)
    assert s[1] > 3.0 > s[0]  # a one-in-a-thousand tail is 3 on the calibrated scale
    reasons = ens.reasons_many(probe)
    assert reasons[1]["fired"] in ("gauss", "loda")
    fired = reasons[1]["fired"]
    assert reasons[1]["members"][fired]["calibrated"] == pytest.approx(s[1])
    assert s[0] == pytest.approx(ens.score_one({"a": 0.0, "b": 0.0, "c": 0.0}))
    mean_ens = ScoreEnsemble(members=["a", "b"], combine="mean")
    mean_ens.learn_scores({"a": rng.normal(size=4000), "b": rng.normal(size=4000)})
    m = mean_ens.combine_scores({"a": [0.0, 4.0], "b": [0.0, 0.0]})
    c = mean_ens.calibrated({"a": [0.0, 4.0], "b": [0.0, 0.0]})
    assert m[1] == pytest.approx((c["a"][1] + c["b"][1]) / 2)
    with pytest.raises(ValueError, match="missing"):
        mean_ens.combine_scores({"a": [1.0]})
    restored = ScoreEnsemble(members=["x"])
    restored.load_state_dict(loads(dumps(ens.state_dict())))
    assert np.array_equal(restored.score_many(probe), s)
