"""MIDAS / MIDAS-R / MIDAS-F: exact counts against a dict-based reference, whole-array vs
edge-by-edge equivalence, snapshots, an edge burst, and bad input."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors.midas import MIDAS, MIDASF, MIDASR
from detectors.serialize import dumps, loads


def _chi2_total(a, s, t):
    return 0.0 if s == 0 or t == 1 else ((a - s / t) * t) ** 2 / (s * (t - 1))


def _chi2_prev(a, s, t):
    return 0.0 if s == 0 else (a + s - a * t) ** 2 / (s * (t - 1))


def exact_midas(src, dst, t):
    """Per-edge loop of the paper with exact counts (no sketch)."""
    cur, tot, tick, out = defaultdict(float), defaultdict(float), 1, []
    for s, d, tk in zip(src.tolist(), dst.tolist(), t.tolist()):
        if tk > tick:
            cur.clear()
            tick = tk
        cur[(s, d)] += 1
        tot[(s, d)] += 1
        out.append(_chi2_total(cur[(s, d)], tot[(s, d)], float(tk)))
    return np.array(out)


def exact_midas_r(src, dst, t, factor=0.5):
    cur, tot, tick, out = defaultdict(float), defaultdict(float), 1, []
    for s, d, tk in zip(src.tolist(), dst.tolist(), t.tolist()):
        if tk > tick:
            for k in cur:
                cur[k] *= factor
            tick = tk
        best = 0.0
        for key in (("e", s, d), ("s", s), ("d", d)):
            cur[key] += 1
            tot[key] += 1
            best = max(best, _chi2_total(cur[key], tot[key], float(tk)))
        out.append(best)
    return np.array(out)


def exact_midas_f(src, dst, t, factor=0.5, threshold=1e3):
    cur, tot, score = defaultdict(float), defaultdict(float), defaultdict(float)
    tick, rec, out = 1, 0.0, []
    for s, d, tk in zip(src.tolist(), dst.tolist(), t.tolist()):
        if tk > tick:
            for k in list(cur):
                if score[k] < threshold:
                    tot[k] += cur[k]
                else:
                    tot[k] += tot[k] * rec
                cur[k] *= factor
            rec = 1.0 / (tk - 1.0)
            tick = tk
        best = 0.0
        for key in (("e", s, d), ("s", s), ("d", d)):
            cur[key] += 1
            v = _chi2_prev(cur[key], tot[key], float(tk))
            score[key] = v
            best = max(best, v)
        out.append(best)
    return np.array(out)


def _stream(seed=0, n_ticks=30, per_tick=60, burst_ticks=(20, 21, 22)):
    """Random edges among 30 x 20 nodes, plus 40 copies of edge (7, 13) in each burst tick."""
    rng = np.random.default_rng(seed)
    S, D, T, L = [], [], [], []
    for tk in range(1, n_ticks + 1):
        m = rng.poisson(per_tick)
        s, d, lab = rng.integers(0, 30, m), rng.integers(0, 20, m), np.zeros(m, bool)
        if tk in burst_ticks:
            s, d = np.concatenate([s, np.full(40, 7)]), np.concatenate([d, np.full(40, 13)])
            lab = np.concatenate([lab, np.ones(40, bool)])
        order = rng.permutation(s.size)
        S.append(s[order]), D.append(d[order]), L.append(lab[order]), T.append(np.full(s.size, tk))
    return (np.concatenate(S).astype(np.int64), np.concatenate(D).astype(np.int64),
            np.concatenate(T).astype(np.int64), np.concatenate(L))


BIG = {"n_rows": 3, "n_buckets": 1 << 16}


@pytest.mark.parametrize("cls,ref", [(MIDAS, exact_midas), (MIDASR, exact_midas_r), (MIDASF, exact_midas_f)])
def test_counts_match_exact_counting_with_a_large_sketch(cls, ref):
    src, dst, t, _ = _stream(seed=1)
    got = cls(**BIG, seed=3).score_edges(src, dst, t)
    want = ref(src, dst, t)
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    assert want.max() > 10  # the burst is in the stream


def test_midas_f_exact_with_a_low_threshold():
    # many cells cross the threshold, so the filtered merge (total += total / (t - 1)) runs often
    src, dst, t, _ = _stream(seed=7)
    got = MIDASF(**BIG, threshold=20.0, factor=0.3, seed=1).score_edges(src, dst, t)
    want = exact_midas_f(src, dst, t, factor=0.3, threshold=20.0)
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    assert (want >= 20.0).sum() > 50


def test_midas_current_and_total_counts_are_exact():
    src = np.array([1, 1, 2, 1, 1, 1], dtype=np.int64)
    dst = np.array([5, 5, 6, 5, 5, 6], dtype=np.int64)
    t = np.array([1, 1, 1, 2, 2, 2], dtype=np.int64)
    m = MIDAS(**BIG)
    m.score_edges(src, dst, t)
    # after tick 2: edge (1,5) current 2, total 4; edge (1,6) current 1, total 1; (2,6) current 0, total 1
    def count(arr, s, d):
        from detectors.midas import _bucket
        return min(arr[i, _bucket(s, d, m._salts[i], m.n_buckets)] for i in range(m.n_rows))
    assert count(m.current_, 1, 5) == 2 and count(m.total_, 1, 5) == 4
    assert count(m.current_, 1, 6) == 1 and count(m.total_, 1, 6) == 1
    assert count(m.current_, 2, 6) == 0 and count(m.total_, 2, 6) == 1
    assert m.tick_ == 2


@pytest.mark.parametrize("cls", [MIDAS, MIDASR, MIDASF])
def test_whole_array_equals_edge_by_edge_and_chunks(cls):
    src, dst, t, _ = _stream(seed=2, n_ticks=12)
    whole = cls(seed=5).score_edges(src, dst, t)
    one = cls(seed=5)
    by_edge = np.concatenate([one.score_edges(src[i:i + 1], dst[i:i + 1], t[i:i + 1]) for i in range(src.size)])
    assert np.array_equal(whole, by_edge)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, src.size), 9, replace=False))
    ch = cls(seed=5)
    chunks = np.concatenate([ch.score_edges(a, b, c) for a, b, c in
                             zip(np.split(src, cuts), np.split(dst, cuts), np.split(t, cuts))])
    assert np.array_equal(whole, chunks)
    assert whole.dtype == np.float64 and np.isfinite(whole).all() and (whole >= 0).all()


@pytest.mark.parametrize("cls", [MIDAS, MIDASR, MIDASF])
def test_snapshot_round_trip(cls):
    src, dst, t, _ = _stream(seed=3, n_ticks=20)
    h = src.size // 2
    a = cls(n_buckets=256, seed=9)
    a.score_edges(src[:h], dst[:h], t[:h])
    b = cls()
    b.load_state_dict(loads(dumps(a.state_dict())))
    assert np.array_equal(a.score_edges(src[h:], dst[h:], t[h:]), b.score_edges(src[h:], dst[h:], t[h:]))


# MIDAS scores the first copies of a burst low (small current counts), hence its lower bar.
@pytest.mark.parametrize("cls,bar", [(MIDAS, 0.85), (MIDASR, 0.97), (MIDASF, 0.97)])
def test_edge_burst_is_found(cls, bar):
    src, dst, t, lab = _stream(seed=4, n_ticks=40, per_tick=80)
    s = cls(seed=1).score_edges(src, dst, t)
    keep = t >= 5
    assert roc_auc_score(lab[keep], s[keep]) >= bar


def test_filtering_keeps_a_sustained_attack_visible():
    # a sustained burst: MIDAS-R's totals absorb it, MIDAS-F's filtered totals do not
    rng = np.random.default_rng(6)
    S, D, T = [], [], []
    for tk in range(1, 61):
        m = 50
        s, d = rng.integers(0, 40, m), rng.integers(0, 40, m)
        if tk >= 30:
            s, d = np.concatenate([s, np.full(60, 99)]), np.concatenate([d, np.full(60, 98)])
        S.append(s), D.append(d), T.append(np.full(s.size, tk))
    src, dst, t = (np.concatenate(x).astype(np.int64) for x in (S, D, T))
    attack = src == 99
    late = attack & (t >= 55)
    r = MIDASR(seed=0).score_edges(src, dst, t)
    f = MIDASF(threshold=100.0, seed=0).score_edges(src, dst, t)
    assert f[late].mean() > 3 * r[late].mean()


def test_bad_input():
    m = MIDASR()
    one = np.array([1], dtype=np.int64)
    with pytest.raises(ValueError, match="equal length"):
        m.score_edges(np.array([1, 2]), one, one)
    with pytest.raises(ValueError, match="non-decreasing"):
        m.score_edges(np.array([1, 2]), np.array([1, 2]), np.array([3, 2]))
    with pytest.raises(ValueError, match="tick < 1"):
        m.score_edges(one, one, np.array([0]))
    with pytest.raises(ValueError, match="integers"):
        m.score_edges(one, one, np.array([1.5]))
    with pytest.raises(ValueError, match="NaN"):
        m.score_edges(one, one, np.array([np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        m.score_edges(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="int64"):
        m.score_edges(np.array(["a"]), one, one)
    m.score_edges(one, one, np.array([5]))
    with pytest.raises(ValueError, match="decreased"):
        m.score_edges(one, one, np.array([4]))
    with pytest.raises(ValueError):
        MIDASR(factor=1.5)
    with pytest.raises(ValueError):
        MIDASF(threshold=float("nan"))
    assert m.score_edges(np.array([], dtype=np.int64), np.array([], dtype=np.int64),
                         np.array([], dtype=np.int64)).shape == (0,)


def test_hash_ids_are_stable_and_distinct():
    from detectors.midas import hash_ids

    ids = hash_ids(["acct-1", "acct-2", "acct-1", 42, b"x"])
    assert ids.dtype == np.int64 and ids.shape == (5,)
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert ids[3] == hash_ids(["42"])[0]  # ints hash as their decimal text
    # fixed across processes: BLAKE2b, not Python's salted hash()
    import hashlib
    assert ids[0] == int.from_bytes(hashlib.blake2b(b"acct-1", digest_size=8).digest(), "little", signed=True)
    with pytest.raises(ValueError, match="position 0"):
        hash_ids([None])
