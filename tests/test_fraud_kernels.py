"""Compiled kernels of the play-fraud feature state against plain numpy references.

Each reference below is the plain numpy code the kernel replaced; the kernels
must give the same numbers (bit for bit, or to floating-point rounding where
the summation order differs).
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
import pytest

from stream.fraud.sketches import (
    _POW2_NEG,
    CountMin,
    HLLBank,
    RotatingCountMin,
    bitmap_set,
    combine,
    linear_count,
    mix64,
    stable_hash64,
)
from stream.fraud.slots import SlotTable, decay_add, group_index, scatter_add, scatter_add2, scatter_max, scatter_max2, scatter_min

rng = np.random.default_rng(11)


# ---------------------------------------------------------------- references
def ref_stable_hash64(values):
    return np.array([int.from_bytes(hashlib.blake2b(("" if v is None else v).encode(), digest_size=8).digest(),
                                    "little") for v in values], np.uint64)


def ref_clz_rank(w, bits):
    w = w.astype(np.uint64)
    nz = w > 0
    lg = np.zeros(w.shape, np.int64)
    lg[nz] = np.floor(np.log2(w[nz].astype(np.float64))).astype(np.int64)
    return np.minimum(np.where(nz, bits - lg, bits + 1), 63).astype(np.uint8)


def ref_hll_add(reg, p, slots, hashes):
    idx = (hashes & np.uint64((1 << p) - 1)).astype(np.int64)
    rank = ref_clz_rank(hashes >> np.uint64(p), 64 - p)
    np.maximum.at(reg, (slots, idx), rank)


def ref_hll_estimate(reg, other, slots, alpha):
    m = reg.shape[1]
    r = reg[slots] if other is None else np.maximum(reg[slots], other[slots])
    z = _POW2_NEG[r].sum(axis=1)
    e = alpha * m * m / z
    zeros = np.sum(r == 0, axis=1)
    small = (e <= 2.5 * m) & (zeros > 0)
    e[small] = m * np.log(m / zeros[small])
    return e


def ref_cm_cols(keys, width, depth):
    return [(mix64(keys ^ np.uint64(0x5DEECE66D * (d + 1))) & np.uint64(width - 1)).astype(np.int64)
            for d in range(depth)]


def ref_cm_add(table, keys, counts):
    for d, col in enumerate(ref_cm_cols(keys, table.shape[1], table.shape[0])):
        np.add.at(table[d], col, counts)


def ref_cm_query(table, keys):
    cols = ref_cm_cols(keys, table.shape[1], table.shape[0])
    est = table[0][cols[0]].astype(np.int64)
    for d in range(1, table.shape[0]):
        est = np.minimum(est, table[d][cols[d]])
    return est


# --------------------------------------------------------------------- tests
def test_stable_hash64_matches_blake2b_per_value():
    vals = ["a", "", None, "Ünïcode", "x" * 300] + [f"id-{i}" for i in range(200)]
    assert np.array_equal(stable_hash64(vals), ref_stable_hash64(vals))
    assert stable_hash64([]).shape == (0,)


@pytest.mark.parametrize("p", [4, 6, 10])
def test_hll_add_and_estimate_match_numpy(p):
    n_ent, n = 40, 5000
    slots = rng.integers(0, n_ent, n)
    # include zero words and words near powers of two (the float64 log2 edge)
    hashes = mix64(rng.integers(0, 2 ** 62, n, dtype=np.int64).astype(np.uint64))
    hashes[:20] = np.uint64(3)  # w == 0 -> rank bits + 1
    hashes[20:40] = (np.uint64(1) << np.uint64(63)) | np.uint64(5)
    hashes[40:60] = np.uint64(2 ** 64 - 1)
    bank, other = HLLBank(p), HLLBank(p)
    bank.resize(n_ent)
    other.resize(n_ent)
    reg = np.zeros((n_ent, 1 << p), np.uint8)
    oreg = np.zeros((n_ent, 1 << p), np.uint8)
    half = n // 2
    bank.add(slots[:half], hashes[:half])
    ref_hll_add(reg, p, slots[:half], hashes[:half])
    other.add(slots[half:], hashes[half:])
    ref_hll_add(oreg, p, slots[half:], hashes[half:])
    assert np.array_equal(bank.reg_, reg) and np.array_equal(other.reg_, oreg)
    q = np.r_[np.arange(n_ent), [3, 3, 0]]
    np.testing.assert_allclose(bank.estimate(q), ref_hll_estimate(reg, None, q, bank._alpha), rtol=1e-12)
    np.testing.assert_allclose(bank.estimate(q, other), ref_hll_estimate(reg, oreg, q, bank._alpha), rtol=1e-12)
    # an empty entity estimates 0, small sets are near their size
    bank.resize(n_ent + 1)
    assert bank.estimate(np.array([n_ent]))[0] == 0.0


def test_count_min_add_query_match_numpy_and_sparse_clear_is_full_clear():
    width, depth = 1 << 10, 3
    cm = CountMin(width, depth)
    table = np.zeros((depth, width), np.int32)
    for _ in range(5):
        keys = rng.integers(0, 300, 400).astype(np.uint64)
        counts = rng.integers(1, 4, 400).astype(np.int32)
        cm.add(keys, counts)
        ref_cm_add(table, keys, counts)
    cm.add(np.array([7, 7], np.uint64))
    ref_cm_add(table, np.array([7, 7], np.uint64), np.ones(2, np.int32))
    assert np.array_equal(cm.table_, table)
    q = rng.integers(0, 600, 1000).astype(np.uint64)
    assert np.array_equal(cm.query(q), ref_cm_query(table, q))
    assert cm.query(np.zeros(0, np.uint64)).shape == (0,)
    # few keys: sparse clear; then many keys: full clear; both leave all zeros
    cm.clear()
    assert not cm.table_.any() and cm.nbytes() == cm.table_.nbytes
    cm.add(np.arange(10, dtype=np.uint64))
    assert cm.nbytes() == cm.table_.nbytes + 80
    cm.add(rng.integers(0, 10 ** 9, width).astype(np.uint64))
    assert cm._added is None
    cm.clear()
    assert not cm.table_.any() and cm._added == []
    # a table set from a snapshot is cleared in full
    cm.set_table(np.ones((depth, width), np.int32))
    cm.add(np.array([1], np.uint64))
    cm.clear()
    assert not cm.table_.any()
    with pytest.raises(ValueError, match="shape"):
        cm.set_table(np.zeros((1, 4), np.int32))


def test_rotating_count_min_counts_per_period_with_sparse_clears():
    r = RotatingCountMin(1 << 12, 2, k=2)
    truth: dict = {}
    for period in range(1, 11):
        keys = rng.integers(0, 50, 300).astype(np.uint64)
        per = np.full(300, period)
        per[:100] = period - 1  # late plays of the previous period
        r.add(keys, per)
        for k, p in zip(keys.tolist(), per.tolist()):
            truth[(k, p)] = truth.get((k, p), 0) + 1
        q = np.arange(50, dtype=np.uint64)
        for p in (period - 1, period):
            want = np.array([truth.get((k, p), 0) for k in range(50)])
            got = r.query(q, np.full(50, p))
            assert np.all(got >= want) and np.mean(got == want) > 0.95
        assert np.all(r.query(q, np.full(50, period - 2)) == 0)
    state = r.state_dict()
    r2 = RotatingCountMin(1 << 12, 2, k=2)
    r2.load_state_dict(state)
    q = np.arange(50, dtype=np.uint64)
    assert np.array_equal(r2.query(q, np.full(50, 10)), r.query(q, np.full(50, 10)))
    r2.add(q, np.full(50, 12))  # claims period 10's bank: a full clear after a restore
    assert np.all(r2.query(q, np.full(50, 12)) >= 1) and np.all(r2.query(q, np.full(50, 10)) == 0)


def test_slot_table_lookup_allocates_like_pop_order_and_expires():
    t = SlotTable({"n": ("f4", ())}, ttl_s=100)
    s = t.lookup(["a", "b", "a", "c"])
    assert s.tolist() == [0, 1, 0, 2]
    assert np.array_equal(t.hash_[s], ref_stable_hash64(["a", "b", "a", "c"]))
    ids = [f"x{i}" for i in range(200)]  # forces growth
    s2 = t.lookup(ids + ["a"])
    assert s2[-1] == 0 and len(set(s2[:-1].tolist())) == 200 and len(t) == 203
    assert [t.ids_[k] for k in s2[:5].tolist()] == ids[:5]
    t.touch(t.lookup(["a"]), np.array([1000.0]))
    t.touch(t.lookup(ids + ["b", "c"]), np.full(202, 10.0))
    assert t.expire(1050.0) == 202
    assert sorted(t.last_expired_.tolist()) == sorted(s2[:-1].tolist() + [1, 2])
    assert len(t) == 1 and t.live_.sum() == 1 and t.lookup(["a"]).tolist() == [0]
    # freed slots are reused
    assert t.lookup(["new"])[0] in set(t.last_expired_.tolist())
    t2 = SlotTable({"n": ("f4", ())}, ttl_s=100)
    t2.load_state_dict(t.state_dict())
    assert np.array_equal(t2.live_, t.live_) and t2.lookup(["new", "a"]).tolist() == t.lookup(["new", "a"]).tolist()


def test_combine_kernel_matches_numpy_and_is_order_sensitive():
    a = np.array(list(range(100)) + [2 ** 63, 2 ** 64 - 1], np.uint64)
    b = a[::-1].copy()
    with np.errstate(over="ignore"):
        want = mix64(a * np.uint64(0x9E3779B97F4A7C15) ^ mix64(b))
    assert np.array_equal(combine(a, b), want)
    assert np.array_equal(combine(a[:1], b[:1]), want[:1]) and combine(a[:0], b[:0]).shape == (0,)
    # broadcasting falls back to numpy
    assert np.array_equal(combine(a, np.uint64(5)), combine(a, np.full(len(a), 5, np.uint64)))
    assert np.mean(combine(a, b) != combine(b, a)) > 0.95


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32])
def test_scatter_kernels_match_ufunc_at(dtype):
    m, n = 17, 3000
    idx = rng.integers(0, m, n)
    vals = (rng.normal(size=n) * 1000).astype(dtype)
    base = (rng.normal(size=m) * 500).astype(dtype)
    for kernel, ufunc in ((scatter_max, np.maximum), (scatter_min, np.minimum)):
        got, want = base.copy(), base.copy()
        kernel(got, idx, vals)
        ufunc.at(want, idx, vals)
        assert np.array_equal(got, want)
    got, want = base.copy(), base.copy()
    scatter_add(got, idx, 1)
    np.add.at(want, idx, 1)
    assert np.array_equal(got, want)
    rows, cols = rng.integers(0, m, n), rng.integers(0, 24, n)
    base2 = (rng.normal(size=(m, 24)) * 100).astype(dtype)
    got, want = base2.copy(), base2.copy()
    scatter_add2(got, rows, cols, 1.0)
    np.add.at(want, (rows, cols), 1.0)
    assert np.array_equal(got, want)
    got, want = base2.copy(), base2.copy()
    scatter_max2(got, rows, cols, vals)
    np.maximum.at(want, (rows, cols), vals)
    assert np.array_equal(got, want)


def test_bitmap_set_matches_bitwise_or_at_and_feeds_linear_count():
    m, w, n = 9, 4, 2000
    rows = rng.integers(0, m, n)
    pos = rng.integers(0, 64 * w, n)
    got = np.zeros((m, w), np.uint64)
    bitmap_set(got, rows, pos)
    want = np.zeros((m, w), np.uint64)
    np.bitwise_or.at(want, (rows, pos >> 6), np.left_shift(np.uint64(1), (pos & 63).astype(np.uint64)))
    assert np.array_equal(got, want)
    distinct = np.array([len(set(pos[rows == r].tolist())) for r in range(m)])
    ones = np.array([sum(bin(int(x)).count("1") for x in got[r]) for r in range(m)])
    assert np.array_equal(ones, distinct)
    est = linear_count(got)
    assert np.all(est >= ones) and np.all(np.isfinite(est))


def test_decay_add_matches_numpy_decay_then_bincount():
    for _ in range(20):
        cap, m, n = 60, 25, 700
        col = (rng.random(cap) * 100).astype(np.float32)
        slots = rng.choice(cap, m, replace=False)
        f = np.exp(-rng.random(m) * 3).astype(np.float32)
        inv = rng.integers(0, m, n)
        w = rng.random(n) * (rng.random(n) < 0.5)
        got = col.copy()
        decay_add(got, slots, f, inv, w)
        want = col.copy()
        want[slots] = want[slots] * f + np.bincount(inv, w, m).astype(np.float32)
        assert np.array_equal(got, want)
        untouched = np.setdiff1d(np.arange(cap), slots)
        assert np.array_equal(got[untouched], col[untouched])


def test_coplay_poisson_tail_equals_scipy_sf():
    from scipy.special import pdtrc
    from scipy.stats import poisson

    cnt = rng.integers(1, 40, 500)
    lam = rng.random(500) * 10 + 0.05
    assert np.array_equal(pdtrc((cnt - 1).astype(np.float64), lam), poisson.sf(cnt - 1, lam))


def ref_novel(c, a, h, ts, key, tkey, day=86400.0):
    """Plain-numpy reference of ``AccountFeatures._novel``: an unseen value
    replaces the account's least recently seen one (batch-start sightings and
    this batch's insertions), then every sighting is recorded (hours, f4)."""
    last = c[key + "_seen"]
    known = c[key][a] == h[:, None]
    miss = ~known.any(axis=1) & (h != 0)
    if miss.any():
        seen = set()
        for s, v, t in dict.fromkeys(zip(a[miss].tolist(), h[miss].tolist(), ts[miss].tolist())):
            if (s, v) in seen:
                continue
            seen.add((s, v))
            j = int(np.argmin(last[s]))
            c[key][s, j] = v
            c[tkey][s, j] = t
            last[s, j] = np.float32(t / 3600.0)
        known = c[key][a] == h[:, None]
    hours = (ts / 3600.0).astype(np.float32)
    for i in np.flatnonzero(h != 0):
        j = np.flatnonzero(c[key][a[i]] == h[i])
        last[a[i], j] = np.maximum(last[a[i], j], hours[i])
    tfirst = np.where(known, c[tkey][a], np.inf).min(axis=1)
    return (h != 0) & (ts - tfirst < day)


def test_novel_values_scan_matches_numpy_reference():
    from stream.fraud.features_account import AccountFeatures

    f = AccountFeatures()
    a_all = f.accounts.lookup([f"acc{i}" for i in range(30)])
    t0 = 1.7e9
    for step in range(6):  # several batches: values age, recur and get evicted
        n = 400
        a = a_all[rng.integers(0, 30, n)]
        h = rng.integers(0, 7, n).astype(np.uint32)  # 0 = absent; up to 6 values > 3 kept
        ts = np.sort(t0 + step * 40_000 + rng.random(n) * 30_000)
        ref_cols = {k: v.copy() for k, v in f.accounts.cols_.items()}
        want = ref_novel(ref_cols, a, h, ts, "dev", "dev_t")
        got = f._novel(a, h, ts, "dev", "dev_t")[0]
        assert np.array_equal(got, want)
        for k in ("dev", "dev_t", "dev_seen"):
            assert np.array_equal(f.accounts.cols_[k], ref_cols[k])
    assert not f._novel(a, np.zeros(n, np.uint32), ts, "ip", "ip_t")[0].any()


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_group_index_matches_np_unique_groups(dtype):
    for n in (0, 1, 7, 3000):
        keys = rng.integers(0, max(n // 3, 1), n).astype(dtype)
        if dtype == np.uint64 and n:
            keys[: n // 2] = mix64(keys[: n // 2])  # large keys with the top bit set
        first, inv, counts = group_index(keys)
        u, ufirst, uinv, ucnt = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        assert len(first) == len(u) and inv.shape == (n,)
        # first-appearance order: first indices ascending and every key's first event
        assert np.all(np.diff(first) > 0) and sorted(first.tolist()) == sorted(ufirst.tolist())
        assert np.array_equal(keys[first][inv], keys)
        assert np.array_equal(counts[inv], ucnt[uinv])


def test_hll_clear_rows_by_index_or_mask_and_crc_of_absent_columns():
    from stream.fraud.features_account import _crc

    bank = HLLBank(6)
    bank.resize(5)
    bank.add(np.repeat(np.arange(5), 50), mix64(np.arange(250, dtype=np.uint64)))
    before = bank.reg_.copy()
    bank.clear(np.array([1, 3]))
    assert not bank.reg_[[1, 3]].any() and np.array_equal(bank.reg_[[0, 2, 4]], before[[0, 2, 4]])
    bank.clear(np.array([True, False, False, False, False]))
    assert not bank.reg_[0].any() and bank.reg_[2].any()
    bank.clear(np.zeros(0, np.int64))
    assert bank.reg_[2].any()
    vals = ["SE", None, "", "FR", "SE"]
    want = np.array([zlib.crc32(v.encode()) | 1 if v else 0 for v in vals], np.uint32)
    cache: dict = {}
    assert np.array_equal(_crc(vals, cache), want) and np.array_equal(_crc(vals, cache), want)
    assert np.array_equal(_crc(vals), want)
    assert np.array_equal(_crc([None] * 4, cache), np.zeros(4, np.uint32))


def ref_arrivals_before(cells, ts, arrivals):
    # the lexsort version _arrivals_before replaced
    m, n = len(arrivals), len(cells)
    if m == 0:
        return np.zeros(n, np.int64)
    keys = np.r_[cells[arrivals], cells]
    tt = np.r_[ts[arrivals], ts]
    isarr = np.r_[np.ones(m, np.int64), np.zeros(n, np.int64)]
    o = np.lexsort((1 - isarr, tt, keys))
    a = isarr[o]
    cs = np.cumsum(a)
    ks = keys[o]
    start = np.r_[True, ks[1:] != ks[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(o)), 0))
    out = np.empty(m + n, np.int64)
    out[o] = cs - cs[first] + a[first]
    return out[m:]


def test_arrivals_before_matches_lexsort_reference():
    from stream.fraud.features_catalog import _arrivals_before

    for it in range(300):
        n = int(rng.integers(1, 300))
        # few cells (groups past the insertion-sort size too), tied times, NaN times
        cells = mix64(rng.integers(0, int(rng.integers(1, 20)), n).astype(np.uint64))
        ts = rng.integers(0, int(rng.integers(1, 30)), n).astype(np.float64)
        if it % 5 == 0:
            ts[rng.random(n) < 0.1] = np.nan
        arr = rng.choice(n, int(rng.integers(0, n + 1)), replace=False).astype(np.int64)
        assert np.array_equal(_arrivals_before(cells, ts, arr), ref_arrivals_before(cells, ts, arr))


def test_rotating_count_min_multi_period_query_matches_single_period_queries():
    r = RotatingCountMin(1 << 10, 2, k=3)
    for base in range(0, 40, 4):  # batches spanning more periods than are kept
        per = base + rng.integers(0, 6, 500)
        r.add(rng.integers(0, 60, 500).astype(np.uint64), per)
        keys = rng.integers(0, 60, 300).astype(np.uint64)
        q = base + rng.integers(-2, 8, 300)
        want = np.array([r.query(keys[i:i + 1], q[i:i + 1])[0] for i in range(300)])
        assert np.array_equal(r.query(keys, q), want) and want.any()


def test_slot_table_expire_of_most_entities_rebuilds_the_index():
    t = SlotTable({"n": ("f4", ())}, ttl_s=100)
    ids = [f"x{i}" for i in range(300)]
    s = t.lookup(ids)
    t.touch(s, np.where(np.arange(300) % 10 == 0, 1000.0, 10.0))
    assert t.expire(1050.0) == 270
    keep = ids[::10]
    assert t.index_ == {i: int(s[k]) for k, i in enumerate(ids) if i in set(keep)}
    assert t.lookup(keep).tolist() == s[::10].tolist() and len(t) == 30
    assert t.lookup(["new"])[0] in set(t.last_expired_.tolist())


def test_crc_str_matches_crc():
    from stream.fraud.features_account import _crc, _crc_str

    vals = ["t1", "", "spotify:track:x", "t1", "é"]
    assert np.array_equal(_crc_str(vals), _crc(vals)) and _crc_str(vals).dtype == np.uint32
    assert _crc_str([]).shape == (0,)
