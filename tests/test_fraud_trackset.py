"""Shared new-track sets (playlist stuffing): bottom-k set keys, causal group
counts and the ``shared_track_set`` group alert (issue 11)."""

import numpy as np
import pytest

from detectors.serialize import dumps, loads
from stream.batch import PlayBatch
from stream.config import Settings
from stream.fraud.models import CatalogFraudModel
from stream.fraud.sketches import stable_hash64
from stream.fraud.trackset import SetGroups, set_keys
from stream.schemas import group_entity_id

T0 = 1_700_000_000.0 // 86400 * 86400


def _plays(accs, ts, tracks):
    """Columns for SetGroups.update: account rows 0..m-1, their hashes."""
    names = sorted(set(accs))
    row = {a: i for i, a in enumerate(names)}
    acc = np.array([row[a] for a in accs], np.int64)
    return acc, stable_hash64(names)[acc], np.asarray(ts, float), stable_hash64(tracks)


def _fresh(m, k=4):
    return np.zeros((m, k), np.uint64), np.zeros(m, np.int32)


def test_same_set_grows_a_group_different_sets_and_one_track_sets_do_not():
    accs, ts, tracks = [], [], []
    for i in range(8):  # a ring: the same 3 tracks, in any order
        for j, tr in enumerate(np.random.default_rng(i).permutation(["x::1", "x::2", "x::3"])):
            accs.append(f"bot{i}"); ts.append(T0 + 100 * i + j); tracks.append(str(tr))
    for i in range(8):  # organic: different pairs of an album, and a one-track hit
        accs += [f"fan{i}", f"fan{i}", f"hit{i}"]
        ts += [T0 + 5000 + i, T0 + 5001 + i, T0 + 6000 + i]
        tracks += [f"album::{i}", f"album::{(i + 1) % 12}", "viral::hit"]
    acc, ah, t, th = _plays(accs, ts, tracks)
    g = SetGroups(k=4)
    sig, sday = _fresh(acc.max() + 1)
    keys, size = g.update(sig, sday, acc, ah, t, th, np.ones(len(t), bool))
    names = sorted(set(accs))
    bot = np.array([a.startswith("bot") for a in accs])
    hit = np.array([a.startswith("hit") for a in accs])
    # the ring's full-set plays: one key, and the k-th bot to hold it sees k accounts
    last = [max(np.flatnonzero(np.array(accs) == f"bot{i}")) for i in range(8)]
    assert len({int(keys[j]) for j in last}) == 1
    assert [int(size[j]) for j in last] == list(range(1, 9))
    assert (keys[hit] == 0).all() and (size[hit] == 0).all()  # a one-track set has no key
    fan = ~bot & ~hit
    assert size[fan].max() == 1  # different pairs never group
    # set_keys gives the key the last play gave each account
    rows = [names.index(f"bot{i}") for i in range(8)]
    assert (set_keys(sig, 2)[rows] == keys[last[0]]).all()


def test_group_sizes_do_not_depend_on_the_batch_split_and_reset_each_day():
    rng = np.random.default_rng(3)
    accs, ts, tracks = [], [], []
    for i in range(12):
        for j in range(6):
            accs.append(f"bot{i}"); ts.append(T0 + rng.uniform(0, 7200)); tracks.append(f"x::{j % 3}")
        accs.append(f"bot{i}"); ts.append(T0 + 86400 + 60 * i); tracks.append("x::0")  # next day
    acc, ah, t, th = _plays(accs, ts, tracks)
    order = np.argsort(t, kind="stable")
    acc, ah, t, th = acc[order], ah[order], t[order], th[order]
    ok = np.ones(len(t), bool)
    g1 = SetGroups()
    s1, d1 = _fresh(12)
    _, whole = g1.update(s1, d1, acc, ah, t, th, ok)
    g2 = SetGroups()
    s2, d2 = _fresh(12)
    parts = [g2.update(s2, d2, acc[o:o + 5], ah[o:o + 5], t[o:o + 5], th[o:o + 5], ok[o:o + 5])[1]
             for o in range(0, len(t), 5)]
    assert np.array_equal(whole, np.concatenate(parts))
    assert whole.max() == 12
    nextday = t >= T0 + 86400
    assert (whole[nextday] == 0).all()  # one track so far on the new day: no key
    assert (d1 == int((T0 + 86400) // 86400)).all()


def _ring(starts, n_tracks=3, gap=300.0):
    """Each account plays the same ``n_tracks`` tracks from its start time."""
    accs, ts, tracks = [], [], []
    for i, s0 in enumerate(starts):
        for j in range(n_tracks):
            accs.append(f"bot{i}"); ts.append(s0 + gap * j); tracks.append(f"x::{j}")
    return accs, ts, tracks


def _sizes(accs, ts, tracks, step=None):
    acc, ah, t, th = _plays(accs, ts, tracks)
    o = np.argsort(t, kind="stable")
    acc, ah, t, th = acc[o], ah[o], t[o], th[o]
    g = SetGroups()
    sig, sday = _fresh(acc.max() + 1)
    ok = np.ones(len(t), bool)
    step = step or len(t)
    size = np.concatenate([g.update(sig, sday, acc[i:i + step], ah[i:i + step], t[i:i + step], th[i:i + step],
                                    ok[i:i + step])[1] for i in range(0, len(t), step)])
    return size, np.asarray(accs)[o]


def test_a_ring_that_straddles_midnight_is_one_group_counted_once():
    # six accounts complete the set before midnight, six after: one ring of
    # 12 (before session 6 the per-day count gave two groups of 6)
    starts = [T0 + 22 * 3600 + 900 * i for i in range(6)] + [T0 + 86400 + 1800 + 900 * i for i in range(6)]
    accs, ts, tracks = _ring(starts)
    size, _ = _sizes(accs, ts, tracks)
    assert size.max() == 12
    # the same whatever the batch split (a batch across midnight included)
    for step in (1, 4, 7):
        assert np.array_equal(_sizes(accs, ts, tracks, step)[0], size)
    # the first six keep looping after midnight: they hold the key in both
    # blocks and still count once
    again = _ring([T0 + 86400 + 600 + 60 * i for i in range(6)])
    size2, who = _sizes(accs + again[0], ts + again[1], tracks + again[2])
    assert size2.max() == 12


def test_rings_more_than_a_day_apart_are_not_merged():
    starts = [T0 + 3600 + 900 * i for i in range(6)] + [T0 + 86400 + 13 * 3600 + 900 * i for i in range(6)]
    accs, ts, tracks = _ring(starts)
    size, _ = _sizes(accs, ts, tracks)
    assert size.max() == 6


def test_bad_parameters_and_shapes_raise():
    with pytest.raises(ValueError):
        SetGroups(k=1)
    with pytest.raises(ValueError):
        SetGroups(k=4, min_distinct=5)
    g = SetGroups(k=4)
    with pytest.raises(ValueError):
        g.update(np.zeros((3, 2), np.uint64), np.zeros(3, np.int32), np.zeros(1, np.int64),
                 np.ones(1, np.uint64), np.zeros(1), np.ones(1, np.uint64), np.ones(1, bool))


def _rows(acc, ts, tracks, ms=200_000):
    return [dict(event_id=f"{acc}-{i}-{t}", ts=float(t), account_id=acc, track_id=tr, artist_id=tr.split("::")[0],
                 ms_played=ms, ip=f"ip-{acc}", device_id=f"d-{acc}", country="FR")
            for i, (t, tr) in enumerate(zip(ts, tracks))]


def _background(rng, days):
    """Benign rows: 40 users with 300 plays each of 300 popular tracks,
    spread uniformly over ``days`` days from T0."""
    rows = []
    for a in range(40):
        ts = np.sort(T0 + rng.uniform(0, days * 86400, 300))
        rows += _rows(f"user{a}", ts, [f"Pop{int(k) % 30}::song {int(k)}" for k in rng.integers(0, 300, len(ts))])
    return rows


def _stream(n_bots, seed=0):
    """4 quiet days of benign listening, then on day 4 ``n_bots`` light
    accounts each loop a popular playlist holding 3 brand-new targets twice
    (each target 2 plays per bot, starts spread over 3 h)."""
    rng = np.random.default_rng(seed)
    rows = _background(rng, days=5)
    playlist = [f"Pop{k}::song {k}" for k in range(20)] + [f"Stuffed::target {k}" for k in range(3)]
    for b in range(n_bots):
        start = T0 + 4 * 86400 + 6 * 3600 + rng.uniform(0, 3 * 3600)
        ts = start + np.cumsum(rng.uniform(150, 260, 2 * len(playlist)))
        rows += _rows(f"bot{b}", ts, playlist * 2)
    return sorted(rows, key=lambda r: r["ts"])


def _run(model, rows, size=400):
    out = []
    for o in range(0, len(rows), size):
        out += model.process(PlayBatch.from_dicts(rows[o:o + size]))
    return out


def test_a_stuffing_ring_raises_one_group_alert_listing_all_its_light_members():
    rows = _stream(10)
    m = CatalogFraudModel(Settings())
    alerts = _run(m, rows)
    sets = [a for a in alerts if a.detector == "shared_track_set"]
    assert len(sets) == 1
    g = sets[0]
    bots = {f"bot{b}" for b in range(10)}
    assert g.entity_type == "group" and set(g.evidence["members"]) == bots
    assert g.entity_id == group_entity_id(g.evidence["members"])
    assert g.alert_id == _run(CatalogFraudModel(Settings()), rows)[alerts.index(g)].alert_id  # deterministic
    # no benign listener named by any alert; no bot was heavy on a target
    named = {x for a in alerts for x in ([a.entity_id] if a.entity_type == "account" else a.evidence.get("members", []))}
    assert named <= bots
    # members keep the group's evidence (the first bot to hold the set saw a group of 1)
    c = m.features.accounts.cols_
    assert c["ts_ev"][m.features.accounts.lookup(sorted(bots))].min() >= m.params.threshold


def test_a_small_circle_sharing_a_set_gets_no_set_alert():
    # six accounts holding the same three new tracks are a circle, not a crowd
    alerts = _run(CatalogFraudModel(Settings()), _stream(6))
    assert not [a for a in alerts if a.detector == "shared_track_set"]
    assert not [a for a in alerts if a.entity_type == "account"]


def test_trackset_state_survives_a_snapshot_and_old_snapshots_load():
    rows = _stream(10, seed=4)
    cut = next(i for i, r in enumerate(rows) if r["ts"] >= T0 + 4 * 86400 + 8 * 3600)
    m = CatalogFraudModel(Settings())
    _run(m, rows[:cut])
    state = loads(dumps(m.state_dict()))
    m2 = CatalogFraudModel(Settings())
    m2.load_state_dict(state)
    a1 = [a.alert_id for a in _run(m, rows[cut:])]
    a2 = [a.alert_id for a in _run(m2, rows[cut:])]
    assert a1 == a2 and a1
    # a snapshot from before the shared-set state: no "trackset" entry, no set columns
    old = loads(dumps(CatalogFraudModel(Settings()).state_dict()))
    del old["features"]["trackset"]
    for k in ("ts_sig", "ts_day", "ts_ev"):
        del old["features"]["accounts"]["cols"][k]
    m3 = CatalogFraudModel(Settings())
    m3.load_state_dict(old)
    assert m3.features.accounts.cols_["ts_sig"].shape[1] == 4
    assert any(a.detector == "shared_track_set" for a in _run(m3, rows))


def test_holders_keep_the_set_evidence_as_the_group_grows():
    # 20 bots: the group alert fires when the set's evidence first reaches the
    # threshold; the bots that completed the set before then must end with the
    # grown group's evidence, not the threshold's (session 5)
    rows = _stream(20, seed=2)
    m = CatalogFraudModel(Settings())
    alerts = _run(m, rows)
    sets = [a for a in alerts if a.detector == "shared_track_set"]
    assert len(sets) == 1
    c = m.features.accounts.cols_
    ev = c["ts_ev"][m.features.accounts.lookup([f"bot{b}" for b in range(20)])]
    assert ev.max() >= sets[0].score + 3.0  # the group grew after its alert
    assert ev.min() >= ev.max() - 1.0  # SET_PROPAGATE_NATS


def test_a_set_that_first_gets_hot_with_too_few_holders_still_alerts_its_real_group():
    # Wave 1: nine accounts, one after another, complete the 3-target set and
    # at once add a private new track, so they leave the set's key: the key's
    # day count (distinct accounts, drifted ones included) makes its evidence
    # hot while it has 0-1 current holders. Wave 2, hours later: ten bots that
    # keep the set. The day's one alert for the key must go to wave 2's group,
    # not be used up by wave 1's hot play with fewer than ``set_min`` holders.
    rng = np.random.default_rng(3)
    rows = _background(rng, days=5)
    targets = [f"Stuffed::target {k}" for k in range(3)]
    day4 = T0 + 4 * 86400
    for b in range(9):
        start = day4 + 3600 + b * 1800.0
        ts = start + 200.0 * np.arange(6)
        rows += _rows(f"drift{b}", ts, ["Pop1::song 1", "Pop2::song 2"] + targets + [f"Own{b}::demo"])
    for b in range(10):
        start = day4 + 10 * 3600 + b * 300.0
        ts = start + 200.0 * np.arange(5)
        rows += _rows(f"keep{b}", ts, ["Pop1::song 1", "Pop2::song 2"] + targets)
    rows.sort(key=lambda r: r["ts"])
    cut = next(i for i, r in enumerate(rows) if r["ts"] >= day4 + 10 * 3600)
    m1 = CatalogFraudModel(Settings())
    assert not [a for a in _run(m1, rows[:cut], size=50) if a.detector == "shared_track_set"]
    # wave 1 alone does reach the threshold (the case under test), with no group alert
    ev1 = m1.features.accounts.cols_["ts_ev"][m1.features.accounts.lookup([f"drift{b}" for b in range(9)])]
    assert ev1.max() >= m1.params.threshold
    m = CatalogFraudModel(Settings())
    alerts = _run(m, rows, size=50)
    g_day = [a for a in alerts if a.detector == "shared_track_set"]
    assert len(g_day) == 1
    members = set(g_day[0].evidence["members"])
    assert len(members) >= m.params.set_min
    assert members <= {f"keep{b}" for b in range(10)}
    assert g_day[0].evidence["last_event_ts"] >= day4 + 10 * 3600


def _midnight_ring_rows() -> list[dict]:
    """Six days of benign background plus a stuffing ring of twelve bots:
    six stop before the sixth midnight, six start after it."""
    rng = np.random.default_rng(5)
    rows = _background(rng, days=6)
    playlist = [f"Pop{k}::song {k}" for k in range(6)] + [f"Stuffed::target {k}" for k in range(3)]
    midnight = T0 + 5 * 86400
    for b in range(12):
        start = midnight - 2.5 * 3600 + 600 * b if b < 6 else midnight + 1200 + 600 * (b - 6)
        rows += _rows(f"bot{b}", start + np.cumsum(rng.uniform(150, 200, len(playlist))), playlist)
    rows.sort(key=lambda r: r["ts"])
    return rows


def test_a_stuffing_ring_across_midnight_is_alerted_as_one_group_naming_both_halves():
    # six bots loop the stuffed playlist before midnight and stop; six more
    # start after midnight. Per UTC day (before session 6) each half was a
    # circle of 6 (no alert before midnight, an alert naming only the later
    # bots after); over the 12-24-h window it is one ring of 12
    rows = _midnight_ring_rows()
    m = CatalogFraudModel(Settings())
    alerts = _run(m, rows, size=100)
    sets = [a for a in alerts if a.detector == "shared_track_set"]
    assert len(sets) == 1
    assert sets[0].evidence["last_event_ts"] >= T0 + 5 * 86400  # after midnight
    assert {f"bot{b}" for b in range(6)} <= set(sets[0].evidence["members"])
    assert set(sets[0].evidence["members"]) <= {f"bot{b}" for b in range(12)}


def _run_with_sinks(model, rows, size=100):
    """Run ``model`` and read, per account, the highest score of its own
    plays (``score_sink``) and the highest score the model gave it without a
    play of it (``account_sink``)."""
    own: dict = {}
    raised: dict = {}

    def sink(stage, batch, scores):
        for a, v in zip(batch.account_id, scores.tolist()):
            own[a] = max(own.get(a, 0.0), v)

    def account_sink(stage, accounts, scores):
        for a, v in zip(accounts, np.asarray(scores).tolist()):
            raised[a] = max(raised.get(a, 0.0), v)

    model.score_sink, model.account_sink = sink, account_sink
    return _run(model, rows, size), own, raised


def test_holders_that_stopped_before_the_group_grew_are_reported_at_the_groups_evidence():
    # 20 bots start over 3 h and each plays its loop once: the first ones stop
    # before the last ones join. Their own plays scored a small group; the
    # model raises them to the grown group's evidence, with no play of theirs,
    # and reports it through ``account_sink`` (eval reads it; session 7)
    rng = np.random.default_rng(2)
    rows = _background(rng, days=5)
    playlist = [f"Pop{k}::song {k}" for k in range(10)] + [f"Stuffed::target {k}" for k in range(3)]
    for b in range(20):
        start = T0 + 4 * 86400 + 6 * 3600 + 600.0 * b
        rows += _rows(f"bot{b}", start + np.cumsum(rng.uniform(150, 200, len(playlist))), playlist)
    rows.sort(key=lambda r: r["ts"])
    m = CatalogFraudModel(Settings())
    alerts, own, raised = _run_with_sinks(m, rows)
    sets = [a for a in alerts if a.detector == "shared_track_set"]
    assert len(sets) == 1
    bots = [f"bot{b}" for b in range(20)]
    final = float(m.features.accounts.cols_["ts_ev"][m.features.accounts.lookup(bots)].max())
    assert min(own[b] for b in bots) < final - 3.0  # the early bots' own plays saw a smaller group
    assert min(raised.get(b, 0.0) for b in bots) >= final - 1.0  # SET_PROPAGATE_NATS
    # no benign listener is raised
    assert set(raised) <= set(bots)


def test_holders_of_yesterdays_set_named_by_the_alert_hold_its_evidence():
    # the midnight ring: six bots stop before midnight, six start after; the
    # group alert (after midnight) names all twelve, and the six that have not
    # played since midnight are raised to its evidence as well (session 7:
    # before, only accounts with today's counters were raised)
    rows = _midnight_ring_rows()
    alerts, own, raised = _run_with_sinks(CatalogFraudModel(Settings()), rows)
    sets = [a for a in alerts if a.detector == "shared_track_set"]
    assert len(sets) == 1
    early = [f"bot{b}" for b in range(6)]
    assert max(own[b] for b in early) < sets[0].score - 3.0
    assert min(raised.get(b, 0.0) for b in early) >= sets[0].score


def test_eval_ranks_a_stopped_holder_by_the_score_the_model_gave_it():
    # evaluate() reads account_sink: the stopped early bots of the midnight
    # ring score at least the group alert's evidence, not the threshold
    from stream.fraud.evaluate import evaluate
    from stream.fraud.simulate import Labelled

    rows = _midnight_ring_rows()
    batch = PlayBatch.from_dicts(rows)
    fraud = np.array([a.startswith("bot") for a in batch.account_id])
    lab = Labelled(batch, fraud, ["playlist_stuffing:L1" if f else "" for f in fraud])
    res = evaluate(lab, baselines=False)
    pos, neg = res["_curves"]["playlist_stuffing:L1"]
    thr = res["thresholds"]["catalog"]
    assert min(pos) > thr + 3.0  # every bot, the stopped ones too, above the threshold's floor
    assert max(neg) < thr
    assert res["core"]["per_scenario"]["playlist_stuffing:L1"]["recall"] == 1.0


def _boost_rows(seed=0):
    """4 quiet days, then on day 4 a ring of 12 new accounts each playing 5
    new boosted tracks (twice) amid popular filler; three quieter new bots
    playing 2, 3 and 4 of those tracks (a subset whose set key is not the
    ring's), one of them before the ring is hot; and three long-known
    listeners (fans) playing 2-3 of them."""
    rng = np.random.default_rng(seed)
    rows = _background(rng, days=5)
    boosted = [f"Boosted::b {k}" for k in range(5)]
    # the ring's sketch holds its 4 smallest track hashes: subsets take the
    # largest one, so none of them has the ring's key
    order = [boosted[i] for i in np.argsort(stable_hash64(boosted))]
    pop = [f"Pop{k}::song {k}" for k in range(20)]
    day4 = T0 + 4 * 86400
    for b in range(12):
        tr = boosted * 2 + pop[:10]
        rows += _rows(f"bot{b}", day4 + 8 * 3600 + 600.0 * b + np.cumsum(rng.uniform(150, 260, len(tr))),
                      [tr[i] for i in rng.permutation(len(tr))])
    quiet = {"quiet2": order[-2:], "quiet3": order[-3:], "quiet4": order[-4:]}
    for q, (name, tr) in enumerate(quiet.items()):
        start = day4 + (6 if name == "quiet2" else 14) * 3600
        tr = tr + pop[10:16]
        rows += _rows(name, start + np.cumsum(rng.uniform(150, 260, len(tr))), tr)
    for f, n in enumerate((2, 3, 3)):
        rows += _rows(f"user{f}", day4 + 14 * 3600 + np.cumsum(rng.uniform(150, 260, n)), order[-n:])
    return sorted(rows, key=lambda r: r["ts"]), list(quiet), [f"user{f}" for f in range(3)]


def test_a_rings_quieter_bots_holding_subsets_share_its_evidence_its_long_known_fans_do_not():
    # session 11: boost L2 bots that play the payload a few times hold a subset
    # of the ring's tracks, so their set key is not the ring's; a new account
    # whose only new tracks are an alerted ring's holds the ring's evidence
    # times the share of a full sketch it holds; long-known listeners do not
    rows, quiet, fans = _boost_rows()
    # session 12: a sparse listener first seen 30 h before the ring (a viral
    # hit), who then plays two of its tracks: "new" by first sighting, but
    # there before the ring's accounts
    boosted = sorted({r["track_id"] for r in rows if r["track_id"].startswith("Boosted")})
    day4 = T0 + 4 * 86400
    sparse = _rows("sparse", [day4 - 22 * 3600, day4 + 14 * 3600, day4 + 14.1 * 3600],
                   ["Viral::hit", boosted[0], boosted[1]])
    rows = sorted(rows + sparse, key=lambda r: r["ts"])
    m = CatalogFraudModel(Settings())
    alerts, own, raised = _run_with_sinks(m, rows)
    sets = [a for a in alerts if a.detector == "shared_track_set"]
    assert len(sets) == 1 and not set(quiet) & set(sets[0].evidence["members"])
    F = m.features
    # the ring's evidence as it ended (it grows after its alert)
    ring = float(F.accounts.cols_["ts_ev"][F.accounts.lookup([f"bot{b}" for b in range(12)])].max())
    assert ring >= sets[0].score
    ev = dict(zip(quiet, F.accounts.cols_["ring_ev"][F.accounts.lookup(quiet)].tolist()))
    # 2, 3 and 4 of a 4-track sketch: half, three quarters and all of the ring's evidence
    assert ev["quiet2"] == pytest.approx(ring * 2 / 4, rel=0.1)
    assert ev["quiet3"] == pytest.approx(ring * 3 / 4, rel=0.1)
    assert ev["quiet4"] == pytest.approx(ring, rel=0.1)
    # quiet2 stopped before the ring was hot: raised without a play of its own
    assert own["quiet2"] < 1.0 and raised["quiet2"] >= ev["quiet2"] - 1e-6
    named = {a.entity_id: a for a in alerts if a.detector == "catalog_account"}
    assert "quiet4" in named and "ring_subset" in named["quiet4"].reasons
    # the fans hold the same subsets but are long known: nothing; nor the
    # sparse listener, first seen long before the ring's first holder
    assert F.accounts.cols_["ring_ev"][F.accounts.lookup(fans + ["sparse"])].max() == 0.0
    assert not set(fans + ["sparse"]) & (set(named) | set(raised))


def test_ring_tracks_survive_a_snapshot():
    rows, quiet, _ = _boost_rows(seed=1)
    cut = next(i for i, r in enumerate(rows) if r["ts"] >= T0 + 4 * 86400 + 13.9 * 3600)
    m = CatalogFraudModel(Settings())
    _run(m, rows[:cut])
    assert m.ring_tracks_
    m2 = CatalogFraudModel(Settings())
    m2.load_state_dict(loads(dumps(m.state_dict())))
    assert m2.ring_tracks_ == m.ring_tracks_ and m2.ring_keys_ == m.ring_keys_
    _run(m, rows[cut:])
    _run(m2, rows[cut:])
    look = m.features.accounts.lookup(quiet)
    assert np.array_equal(m.features.accounts.cols_["ring_ev"][look], m2.features.accounts.cols_["ring_ev"][look])
    assert m.features.accounts.cols_["ring_ev"][look].min() > 0
