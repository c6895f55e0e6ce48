"""Play-fraud stage models on small synthetic streams (issue 11)."""

import numpy as np
import pytest

from detectors.serialize import dumps, loads
from stream.batch import PlayBatch
from stream.config import Settings
from stream.fraud.features_account import FEATURE_NAMES
from stream.fraud.models import AccountFraudModel, CatalogFraudModel
from stream.fraud.sketches import CountMin, RotatingCountMin, linear_count, mix64
from stream.fraud.slots import SlotTable
from stream.schemas import group_entity_id

T0 = 1_700_000_000.0 // 86400 * 86400


def _rows(acc, ts, tracks, ms=200_000, **kw):
    return [dict(event_id=f"{acc}-{i}-{t}", ts=float(t), account_id=acc, track_id=tr,
                 artist_id=tr.split("::")[0], ms_played=ms, **kw) for i, (t, tr) in enumerate(zip(ts, tracks))]


def _background(n_acc=30, days=2, seed=0):
    """Benign listeners: random popular tracks at random times, own IP/device."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(n_acc):
        ts = np.sort(T0 + rng.uniform(0, days * 86400, 60 * days))
        tr = [f"Artist{int(k) % 40}::song {int(k)}" for k in rng.integers(0, 400, len(ts))]
        rows += _rows(f"user{a}", ts, tr, ip=f"10.0.{a}.1", device_id=f"dev{a}", country="FR")
    return rows


def _run(model, rows, size=500):
    rows = sorted(rows, key=lambda r: r["ts"])
    out = []
    for o in range(0, len(rows), size):
        out += model.process(PlayBatch.from_dicts(rows[o:o + size]))
    return out


def test_lockstep_group_alert_lists_its_members():
    rows = _background()
    members = [f"bot{i}" for i in range(8)]
    sched = T0 + 86400 + np.arange(0, 6 * 3600, 200.0)
    for m in members:
        rows += _rows(m, sched + 3.0, [f"SyncArtist::sync {k % 10}" for k in range(len(sched))])
    alerts = _run(CatalogFraudModel(Settings()), rows)
    groups = [a for a in alerts if a.detector == "lockstep"]
    assert groups, "no lockstep group alert"
    g = groups[0]
    assert g.entity_type == "group" and set(g.evidence["members"]) <= set(members)
    assert g.entity_id == group_entity_id(g.evidence["members"]) and len(g.evidence["members"]) >= 3
    flagged = {a.entity_id for a in alerts if a.detector == "catalog_account"}
    assert flagged and flagged <= set(members)  # no benign listener flagged


def test_click_farm_behind_one_ip_alerts_ip_and_accounts():
    rows = _background(n_acc=20)
    ts = T0 + 86400 + np.arange(0, 4 * 3600, 150.0)
    for i in range(70):
        rows += _rows(f"phone{i}", ts + i, [f"Artist{k % 40}::song {k}" for k in range(len(ts))],
                      ip="203.0.113.7", device_id=f"ph{i}", country="FR")
    alerts = _run(AccountFraudModel(Settings()), rows)
    ip_alerts = [a for a in alerts if a.detector == "ip_fanin"]
    assert ip_alerts and ip_alerts[0].entity_id == "203.0.113.7"
    flagged = {a.entity_id for a in alerts if a.detector == "account_fraud"}
    assert len(flagged & {f"phone{i}" for i in range(70)}) >= 35
    assert not flagged & {f"user{a}" for a in range(20)}


def test_benign_background_raises_nothing_and_heavy_repeat_is_benign():
    rows = _background(n_acc=20, days=3)
    # a superfan replays one album all day (real listeners do: README)
    ts = T0 + 86400 + np.arange(0, 14 * 3600, 210.0)
    rows += _rows("superfan", ts, [f"NewAlbum::song {k % 12}" for k in range(len(ts))],
                  ip="10.9.9.9", device_id="sf", country="FR")
    model_a, model_c = AccountFraudModel(Settings()), CatalogFraudModel(Settings())
    assert _run(model_a, rows) == []
    assert _run(model_c, rows) == []


def test_catalog_snapshot_roundtrip_and_entity_counts():
    rows = sorted(_background(n_acc=10, days=1), key=lambda r: r["ts"])
    m1 = CatalogFraudModel(Settings())
    m1.process(PlayBatch.from_dicts(rows[:300]))
    m2 = CatalogFraudModel(Settings())
    m2.load_state_dict(loads(dumps(m1.state_dict())))
    b = PlayBatch.from_dicts(rows[300:])
    scores = {}
    for name, m in (("a", m1), ("b", m2)):
        m.score_sink = lambda stage, batch, s, name=name: scores.__setitem__(name, s)
        m.process(b)
    assert np.allclose(scores["a"], scores["b"])
    assert m2.entity_counts()["account"] == 10 and m2.entity_counts()["track"] > 50


def test_account_snapshot_from_another_feature_set_restores_and_scores():
    """A worker upgraded to a version with another account feature set
    restores the old snapshot's counters; its HalfSpaceTrees, grown on the
    old columns, start afresh instead of raising on every batch."""
    rows = sorted(_background(n_acc=10, days=2), key=lambda r: r["ts"])
    old = AccountFraudModel(Settings())
    old.process(PlayBatch.from_dicts(rows[:600]))
    state = old.state_dict()
    narrow = AccountFraudModel._make_hst()  # trees grown on one column fewer
    Z = old._hst_input(np.random.default_rng(0).random((400, len(FEATURE_NAMES) - 1)))
    narrow.learn_many(Z)
    state["hst"] = narrow.state_dict()
    m = AccountFraudModel(Settings())
    m.load_state_dict(loads(dumps(state)))
    assert m.hst_n_ == 0 and m.features.accounts.index_ == old.features.accounts.index_
    m.process(PlayBatch.from_dicts(rows[600:]))
    assert m.hst.n_features_in_ == len(FEATURE_NAMES)
    with pytest.raises(ValueError):  # what the old trees did with these columns
        narrow.score_many(old._hst_input(np.zeros((1, len(FEATURE_NAMES)))))


def test_state_expires_after_inactivity():
    t = SlotTable({"n": ("f4", ())}, ttl_s=100)
    s = t.lookup(["a", "b"])
    t.touch(s, np.array([0.0, 150.0]))
    assert t.expire(now=200.0) == 1 and list(t.index_) == ["b"]
    assert t.lookup(["c"])[0] == s[0]  # the freed slot is reused


def test_count_min_and_rotation_and_linear_counting():
    cm = CountMin(1 << 10, 2)
    keys = mix64(np.arange(300, dtype=np.uint64))
    cm.add(np.repeat(keys, 3))
    assert np.all(cm.query(keys) >= 3) and np.mean(cm.query(keys) == 3) > 0.9
    r = RotatingCountMin(1 << 8, 2, k=2)
    r.add(keys[:5], np.full(5, 10))
    r.add(keys[:5], np.full(5, 12))  # period 12 evicts period 10
    assert r.query(keys[:5], np.full(5, 10)).sum() == 0 and r.query(keys[:5], np.full(5, 12)).min() >= 1
    bits = np.zeros((1, 4), np.uint64)
    for b in (mix64(np.arange(100, dtype=np.uint64)) & np.uint64(255)).astype(int).tolist():
        bits[0, b >> 6] |= np.uint64(1) << np.uint64(b & 63)
    assert 80 < linear_count(bits)[0] < 125


def test_account_day_maxima_one_score_per_active_account_day():
    from stream.fraud.calibrate import account_day_maxima

    ts = np.array([T0 + 10, T0 + 20, T0 + 86400 + 5, T0 + 30])
    mx = account_day_maxima(["a", "a", "a", "b"], ts, np.array([1.0, 5.0, 2.0, 7.0]))
    assert sorted(mx.tolist()) == [2.0, 5.0, 7.0]
    with pytest.raises(ValueError, match="unequal"):
        account_day_maxima(["a"], ts, np.zeros(4))


def test_thresholds_come_from_a_budget_on_clean_traffic():
    from stream.fraud.calibrate import calibrate_thresholds
    from stream.fraud.simulate import Labelled

    rows = sorted(_background(n_acc=40, days=3, seed=4), key=lambda r: r["ts"])
    b = PlayBatch.from_dicts(rows)
    clean = Labelled(b, np.zeros(len(b), bool), [""] * len(b))
    loose = calibrate_thresholds(clean, budget=400.0, floor=0.0)
    tight = calibrate_thresholds(clean, budget=0.5, floor=6.0)
    rep = tight["report"]["account"]
    assert rep["account_days"] == 120  # 40 accounts x 3 active days
    # a tighter budget can only raise a threshold; the floor bounds it below
    assert rep["raw_threshold"] >= loose["threshold"]
    assert tight["report"]["catalog"]["raw_threshold"] >= loose["catalog_threshold"]
    assert rep["raw_threshold"] >= rep["max_clean_score"] - 1e-9  # budget below one alert: above every clean score
    assert tight["threshold"] == max(rep["raw_threshold"], 6.0)
    with pytest.raises(ValueError, match="budget"):
        calibrate_thresholds(clean, budget=0.0)


def _new_artist_background(days=5, seed=1):
    """Benign listeners on a fixed catalog for ``days`` days (the catalog
    model's first 3 days are its cold start: no artist counts as new)."""
    return _background(n_acc=15, days=days, seed=seed)


def test_distinct_new_cold_artists_flag_a_thin_spread_farm_not_an_album_listener():
    rows = _new_artist_background()
    t = T0 + 4 * 86400 + np.arange(0, 40 * 110.0, 110.0)
    # a thin-spread farm: every play a different brand-new artist (AI catalog)
    rows += _rows("farm", t, [f"Ai{k}::track {k}" for k in range(len(t))], ip="10.8.8.8", device_id="f",
                  country="FR")
    # a listener discovering one new album: 12 new tracks of one new artist, twice
    rows += _rows("fan", t + 7.0, [f"Debut::song {k % 12}" for k in range(len(t))], ip="10.7.7.7",
                  device_id="g", country="FR")
    m = CatalogFraudModel(Settings())
    alerts = _run(m, [r for r in rows if r["ts"] < t[0]])
    alerts += _run(m, [r for r in rows if r["ts"] >= t[0]], size=4)
    first = {a.entity_id: a for a in alerts if a.detector == "catalog_account"}
    assert "farm" in first and "fan" not in first
    a = first["farm"]
    assert "new_artists" in a.reasons and a.features["new_artists"].actual > 0.5
    # the farm is flagged within its first 15 plays (~27 min), not after an hour
    assert a.evidence["last_event_ts"] - t[0] <= 15 * 110.0


def test_odd_hour_evidence_of_a_new_identity_does_not_fade_with_its_own_plays():
    rng = np.random.default_rng(3)
    rows = []
    for d in range(4):  # daytime listener (9:00-18:00 UTC) on one phone at home
        ts = np.sort(T0 + d * 86400 + rng.uniform(9 * 3600, 18 * 3600, 60))
        rows += _rows("victim", ts, [f"Home::song {k % 30}" for k in range(60)], ip="10.1.1.1",
                      device_id="phone", country="FR")
    m = AccountFraudModel(Settings())
    _run(m, rows)
    night = T0 + 4 * 86400 + 2 * 3600 + np.arange(0, 3 * 3600, 215.0)  # 02:00-05:00, new phone abroad
    odd = []
    for k, t in enumerate(night):
        slots, X, _ = m.features.update(PlayBatch.from_dicts(
            _rows("victim", [t], ["Stolen::x"], ip="198.51.100.9", device_id="new", country="BR")))
        odd.append(X[0, FEATURE_NAMES.index("odd_hour_new_device")])
    gain = np.diff(odd)
    # each night play from the new identity adds about as much surprise as the
    # first ones did (the hijacker's plays do not teach the account its hours)
    assert gain[-5:].mean() > 0.7 * gain[:5].mean() > 0.5


def _daytime_listener(rng, days=4):
    """A listener playing 09:00-18:00 UTC on one phone at home (FR) for ``days`` days."""
    rows = []
    for d in range(days):
        ts = np.sort(T0 + d * 86400 + rng.uniform(9 * 3600, 18 * 3600, 60))
        rows += _rows("owner", ts, [f"Home::song {k % 30}" for k in range(60)], ip="10.1.1.1",
                      device_id="phone", country="FR")
    return rows


def _account_alerts(alerts):
    return [a for a in alerts if a.detector == "account_fraud"]


def test_a_new_phone_where_the_owners_phone_has_played_is_not_a_stranger():
    """A traveller's own phone reaches the new country first; a phone first
    seen there at night (by the home clock) is then the traveller's, not a
    new identity. The same night plays with the owner's phone never in that
    country are a hijacker's and alert during the night."""
    night = T0 + 4 * 86400 + 2 * 3600 + np.arange(0, 3 * 3600, 215.0)  # 02:00-05:00
    abroad = dict(ip="198.51.100.9", device_id="new", country="BR")
    found = {}
    for case in ("trip", "hijack"):
        m = AccountFraudModel(Settings())
        rows = _daytime_listener(np.random.default_rng(3))
        if case == "trip":  # the owner's phone lands in BR the evening before
            td = T0 + 3 * 86400 + np.arange(19 * 3600, 23 * 3600, 600.0)
            rows += _rows("owner", td, ["Home::song 2"] * len(td), ip="198.51.100.9", device_id="phone",
                          country="BR")
        assert not _account_alerts(_run(m, rows))
        found[case] = _account_alerts(_run(m, _rows("owner", night, ["Away::x"] * len(night), **abroad), size=10))
    assert not found["trip"]
    assert len(found["hijack"]) == 1 and "odd_hour_new_device" in found["hijack"][0].reasons
    assert found["hijack"][0].evidence["last_event_ts"] < night[-1]


def test_a_device_first_seen_at_home_is_the_owners_abroad():
    """A second phone first used at home, then taken on a trip (new IP and
    country, at night by the home clock), is not a new identity; a phone
    first seen from a new IP and country is, whatever it does next."""
    col = FEATURE_NAMES.index("new_identity_plays")
    night = T0 + 4 * 86400 + 2 * 3600 + np.arange(0, 3 * 3600, 215.0)
    got = {}
    for case in ("owner's", "stranger's"):
        m = AccountFraudModel(Settings())
        _run(m, _daytime_listener(np.random.default_rng(5)))
        if case == "owner's":  # the second phone's first play: at home, the evening before
            m.features.update(PlayBatch.from_dicts(_rows("owner", [T0 + 3 * 86400 + 20 * 3600], ["Home::song 4"],
                                                         ip="10.1.1.1", device_id="phone2", country="FR")))
        for t in night:
            slots, X, _ = m.features.update(PlayBatch.from_dicts(
                _rows("owner", [t], ["Away::x"], ip="198.51.100.9", device_id="phone2", country="BR")))
        got[case] = X[0, col]
    assert got["owner's"] == 0.0
    assert got["stranger's"] > 0.5 * len(night)


def test_the_home_ip_outlives_carrier_ips_in_the_accounts_memory():
    """Three remembered IPs per account: an unseen IP replaces the least
    recently seen one. A home line used between mobile sessions on three
    carrier NATs stays known (a round-robin cursor evicted it every day, and
    it came back as a new IP)."""
    col = FEATURE_NAMES.index("new_ip_plays")
    m = AccountFraudModel(Settings())
    t = T0
    for d in range(4):
        for ip in ("100.64.0.1", "100.64.0.2", "100.64.0.3"):
            for k in range(5):  # a session at home, then one on a carrier NAT
                t += 600.0
                m.features.update(PlayBatch.from_dicts(_rows("user", [t], [f"Home::song {k}"], ip="10.0.0.1",
                                                             device_id="phone", country="FR")))
            t += 600.0
            m.features.update(PlayBatch.from_dicts(_rows("user", [t], ["Home::song 9"], ip=ip, device_id="phone",
                                                         country="FR")))
        t = T0 + (d + 1) * 86400
    home_new = []
    for k in range(5):  # the next day's first home plays
        slots, X, _ = m.features.update(PlayBatch.from_dicts(_rows("user", [t + 60 * k], ["Home::song 1"],
                                                                    ip="10.0.0.1", device_id="phone", country="FR")))
        home_new.append(X[0, col])
    # the carrier IPs take turns in the other two slots (each comes back as
    # new, as it should with four IPs and three slots); the home plays add
    # nothing to the decayed new-IP count
    assert np.all(np.diff(home_new) <= 0.0)


def test_a_home_line_outlives_a_day_on_three_carrier_nats():
    """Session 11: a night listener at home (its own line) spends a day on
    three carrier NATs shared with other accounts, then its second device
    first plays back home in the evening. Before, the three shared lines
    evicted the home line from the 3-IP memory, the home line came back as
    a new line of its own, the second device became a stranger's and its
    evening plays scored their hours' surprise (65 nats on seed 59). A line
    of the account's own now outlives shared ones by ``OWN_HOLD_H`` hours."""
    c_ip, c_odd = FEATURE_NAMES.index("new_ip_plays"), FEATURE_NAMES.index("odd_hour_new_device")
    m = AccountFraudModel(Settings())
    rows = []
    for d in range(3):  # nights at home, 02:00-06:00
        ts = T0 + d * 86400 + 2 * 3600 + np.arange(0, 4 * 3600, 240.0)
        rows += _rows("user", ts, ["Night::song"] * len(ts), ip="10.0.0.1", device_id="phone", country="FR")
    carriers = ("100.64.0.1", "100.64.0.2", "100.64.0.3")
    for k, ip in enumerate(carriers):  # day 3: three carrier NATs, each shared by other accounts
        t = T0 + 3 * 86400 + (8 + 2 * k) * 3600
        for o in range(4):
            rows += _rows(f"other{o}", [t - 600 + 60 * o], ["Pop::song"], ip=ip, device_id=f"od{o}", country="FR")
        rows += _rows("user", t + np.arange(0, 3600, 300.0), ["Day::song"] * 12, ip=ip, device_id="phone",
                      country="FR")
    _run(m, rows, size=50)
    eve = T0 + 3 * 86400 + 20 * 3600 + np.arange(0, 3600, 240.0)  # the tablet, first seen at home
    out = []
    for t in eve:
        _, X, _ = m.features.update(PlayBatch.from_dicts(_rows("user", [t], ["Eve::song"], ip="10.0.0.1",
                                                               device_id="tablet", country="FR")))
        out.append(X[0])
    out = np.array(out)
    assert out[:, c_odd].max() == 0.0  # the tablet is the owner's, not a stranger's
    assert np.all(np.diff(out[:, c_ip]) <= 0.0)  # the home line is still known


def test_a_new_phone_on_a_line_the_owners_phone_joins_is_the_households():
    """Session 12: a daytime listener's new tablet first plays at night on a
    new line of its own (a move, a new router): a stranger's device at home,
    whose hours' surprise counts. Once the owner's own phone plays from that
    line too, the tablet is the household's and its night plays add nothing
    (held-out seed 59: 41 nats over one day for such a listener). On a line
    the owner's phone never uses, the same tablet keeps adding evidence."""
    c_odd = FEATURE_NAMES.index("odd_hour_new_device")
    found = {}
    for case, phone_joins in (("household", True), ("stranger", False)):
        m = AccountFraudModel(Settings())
        rows = _daytime_listener(np.random.default_rng(5))
        night1 = T0 + 4 * 86400 + 1 * 3600 + np.arange(0, 2 * 3600, 240.0)  # 01:00-03:00
        rows += _rows("owner", night1, ["New::song"] * len(night1), ip="198.51.100.7", device_id="tablet",
                      country="FR")
        if phone_joins:  # the owner's phone on the new line, the next morning
            ts = T0 + 4 * 86400 + 10 * 3600 + np.arange(0, 3600, 300.0)
            rows += _rows("owner", ts, ["Home::song 1"] * len(ts), ip="198.51.100.7", device_id="phone",
                          country="FR")
        _run(m, rows, size=40)
        out = []
        for t in T0 + 4 * 86400 + 20 * 3600 + np.arange(0, 2 * 3600, 240.0):  # the tablet, 20:00-22:00
            _, X, _ = m.features.update(PlayBatch.from_dicts(_rows("owner", [t], ["New::song"], ip="198.51.100.7",
                                                                   device_id="tablet", country="FR")))
            out.append(X[0, c_odd])
        found[case] = np.array(out)
    assert np.all(np.diff(found["household"]) <= 0.0)  # only decays: no new surprise
    assert found["stranger"][-1] > found["stranger"][0]  # control: a stranger's device keeps adding

def test_a_strangers_phone_on_its_own_line_at_night_at_home():
    """The victim's country, a phone never seen before, on an IP no other
    account uses, at the owner's sleeping hours: the hours' surprise (not the
    count of plays, as abroad) is enough over three hours to alert. The same phone on a
    carrier NAT shared by many accounts is the owner's new phone."""
    night = T0 + 4 * 86400 + 2 * 3600 + np.arange(0, 3 * 3600, 215.0)  # 02:00-05:00
    found = {}
    for case, ip in (("own line", "198.51.100.9"), ("carrier NAT", "100.64.9.9")):
        m = AccountFraudModel(Settings())
        rows = _daytime_listener(np.random.default_rng(3))
        for k in range(6):  # other accounts on the carrier NAT (and on nothing else)
            ts = T0 + 3 * 86400 + 3600 * np.arange(1, 20)
            rows += _rows(f"mobile{k}", ts, ["Pop::hit"] * len(ts), ip="100.64.9.9", device_id=f"m{k}", country="FR")
        _run(m, rows)
        found[case] = _account_alerts(_run(m, _rows("owner", night, ["Stolen::x"] * len(night), ip=ip,
                                                    device_id="new", country="FR"), size=10))
    assert len(found["own line"]) == 1 and "odd_hour_new_device" in found["own line"][0].reasons
    assert not found["carrier NAT"]


def test_own_devices_stay_known_while_ips_churn():
    """New IPs (mobile carriers, VPN exits) must not evict the account's
    devices: each kind (device / IP / country) has its own 3 remembered values
    (least recently seen replaced since session 8). With one shared round-robin
    cursor (before session 3), the first sighting of a second device could
    overwrite the account's main phone, which then came back as "new" for a day
    (and with a VPN exit country, as a new identity at an odd hour)."""
    ips = ["10.0.0.1", "100.64.0.1", "100.64.0.2", "100.64.0.3", "185.1.1.1"]
    for extra in range(3):  # shift the IP churn so a shared cursor hits every slot
        m = AccountFraudModel(Settings())
        t = T0
        for k in range(4 * 30 + extra):  # 4 days on the phone, IPs churning
            t += 2880.0
            m.features.update(PlayBatch.from_dicts(_rows(
                "user", [t], [f"Home::song {k % 25}"], ip=ips[k % len(ips)], device_id="phone", country="FR")))
        m.features.update(PlayBatch.from_dicts(_rows("user", [t + 60], ["Home::song 1"], ip=ips[0],
                                                     device_id="laptop", country="FR")))
        for k in range(10):  # back on the phone
            slots, X, _ = m.features.update(PlayBatch.from_dicts(_rows(
                "user", [t + 300 + 200 * k], ["Home::song 2"], ip=ips[0], device_id="phone", country="FR")))
        # only the laptop's one play is from a new device
        assert X[0, FEATURE_NAMES.index("new_device_plays")] < 1.01, extra


def test_coplays_on_long_known_tracks_get_an_allowance_new_tracks_do_not():
    """Listeners who replay an old favourite at the same minutes (clones of one
    real user) are not a farm: their first ``coplay_free`` decayed co-plays on
    long-known tracks are free. The same co-plays on a track first seen today
    (a farm's payload) count in full."""
    rng = np.random.default_rng(7)
    rows = _background(n_acc=20, days=5, seed=2)
    fans, bots = [f"fan{i}" for i in range(6)], [f"bot{i}" for i in range(6)]
    for d in range(4):  # the fans' favourite, heard on days 0-3 at random times
        for f in fans:
            rows += _rows(f, T0 + d * 86400 + rng.uniform(0, 86400, 3), ["Fav::hit"] * 3)
    t = T0 + 4 * 86400 + 12 * 3600 + np.array([0.0, 900.0])  # two shared windows on day 4
    for i, f in enumerate(fans):
        rows += _rows(f, t + 5.0 * i, ["Fav::hit"] * 2, ip=f"10.9.{i}.1", device_id=f"fd{i}", country="FR")
    for i, b in enumerate(bots):
        rows += _rows(b, t + 3600 + 5.0 * i, ["Brand New::payload"] * 2, ip=f"10.8.{i}.1", device_id=f"bd{i}",
                      country="FR")
    m = CatalogFraudModel(Settings())
    seen = {}
    terms = m.terms

    def spy(u):
        out = terms(u)
        ids = m.features.accounts.ids_
        for j, s in enumerate(u["uacc"].tolist()):
            seen[ids[s]] = max(seen.get(ids[s], 0.0), float(out[0]["coplay_share"][j]))
        return out

    m.terms = spy
    _run(m, [r for r in rows if r["ts"] < t[0]])
    _run(m, [r for r in rows if r["ts"] >= t[0]], size=6)  # live-sized batches
    co = m.features.accounts.cols_
    assert max(co["co"][m.features.accounts.lookup(fans)]) > 0.5  # the fans did co-play
    assert max(seen[f] for f in fans) == 0.0
    assert min(seen[b] for b in bots) > 0.0


def test_no_coplays_on_a_track_the_cold_model_has_watched_for_less_than_an_hour():
    """Session 14: in the model's first days a track's first sighting is not
    its first play, and its rate starts at zero. On held-out seed 89, 9-24
    clones of a real listener who loops one track "co-played" it in the
    background's first 50 minutes and two of them alerted. The same plays on
    a track first seen after the cold start (a farm's payload) are co-plays
    from the start."""
    def loopers(prefix, track, t0):
        rows = []
        for i in range(12):
            ts = t0 + 60.0 + 7.0 * i + 240.0 * np.arange(12)  # every 4 min for 48 min
            rows += _rows(f"{prefix}{i}", ts, [track] * len(ts), ip=f"10.7.{i}.1", device_id=f"{prefix}d{i}")
        return rows

    cold = loopers("clone", "Old Favourite::loop", T0)
    late = loopers("bot", "Brand New::payload", T0 + 4 * 86400)
    m = CatalogFraudModel(Settings())
    _run(m, _background(n_acc=20, days=5, seed=4) + cold + late, size=50)
    co = m.features.accounts.cols_["co"]
    assert co[m.features.accounts.lookup([f"clone{i}" for i in range(12)])].max() == 0.0
    assert co[m.features.accounts.lookup([f"bot{i}" for i in range(12)])].min() > 1.0


def test_fans_aligned_in_a_releases_crowd_are_not_coplays_a_closed_group_is():
    """Session 14: on a new track, a co-play's window must hold ``co_closed``
    (30 %) or more of the track's listeners of today and yesterday. Eight
    fans who happen to play a new album's song in the same minutes, among 40
    casual listeners of it, are not a lockstep group; eight accounts that are
    the whole audience of their new track are."""
    rng = np.random.default_rng(11)
    rows = _background(n_acc=20, days=5, seed=6)
    day4 = T0 + 4 * 86400
    for i in range(40):  # the album's casual listeners, spread over the day
        rows += _rows(f"casual{i}", [day4 + rng.uniform(0, 6 * 3600)], ["Album::song"])
    t = day4 + 8 * 3600 + np.array([0.0, 1200.0, 2400.0])
    for i in range(8):
        rows += _rows(f"fan{i}", t + 20.0 * i, ["Album::song"] * 3, ip=f"10.6.{i}.1", device_id=f"fd{i}")
        rows += _rows(f"bot{i}", t + 20.0 * i, ["Closed::payload"] * 3, ip=f"10.5.{i}.1", device_id=f"bd{i}")
    m = CatalogFraudModel(Settings())
    _run(m, rows, size=40)
    co = m.features.accounts.cols_["co"]
    assert co[m.features.accounts.lookup([f"fan{i}" for i in range(8)])].max() == 0.0
    assert co[m.features.accounts.lookup([f"bot{i}" for i in range(8)])].max() > 0.5
    # without the closed-group test the fans co-play
    m2 = CatalogFraudModel(Settings())
    m2.features.co_closed = 0.0
    _run(m2, rows, size=40)
    assert m2.features.accounts.cols_["co"][m2.features.accounts.lookup([f"fan{i}" for i in range(8)])].max() > 0.5


def test_phones_rotating_over_the_same_few_ips_form_an_ip_set_group():
    """A phone farm behind six IPs: every phone rotates over the same IPs, so
    all share one daily IP set, and each alerts with ``ip_set_accounts`` among
    its reasons. Listeners who share carrier NAT IPs but each have a home line
    hold sets of their own (group size 1). Each phone plays human-like
    volumes on its own device: no other term reaches the threshold."""
    col = FEATURE_NAMES.index("ip_set_accounts")
    rng = np.random.default_rng(5)
    farm_ips = [f"198.51.100.{k}" for k in range(1, 7)]
    rows = []
    for i in range(20):  # listeners: home line, and 2 of 3 shared carrier IPs
        ts = np.sort(T0 + 86400 + rng.uniform(8 * 3600, 22 * 3600, 60))
        ips = [f"10.0.{i}.1" if k % 3 else f"100.64.0.{1 + (k // 3) % 2 + (i % 2)}" for k in range(len(ts))]
        rows += [dict(r, ip=ip) for r, ip in zip(_rows(f"user{i}", ts, [f"Artist{k % 40}::song {k}" for k in
                                                                         rng.integers(0, 400, len(ts))],
                                                       device_id=f"dev{i}", country="FR"), ips)]
    for i in range(25):
        ts = np.sort(T0 + 86400 + rng.uniform(9 * 3600, 21 * 3600, 80))
        phone = _rows(f"phone{i}", ts, [f"Artist{k % 40}::song {k}" for k in rng.integers(0, 400, len(ts))],
                      device_id=f"ph{i}", country="FR")
        rows += [dict(r, ip=farm_ips[k]) for r, k in zip(phone, rng.integers(0, 6, len(ts)))]
    m = AccountFraudModel(Settings())
    alerts = _run(m, rows)
    flagged = {a.entity_id: a for a in alerts if a.detector == "account_fraud"}
    phones = {f"phone{i}" for i in range(25)}
    assert len(set(flagged) & phones) >= 15
    assert not set(flagged) - phones
    assert all("ip_set_accounts" in flagged[p].reasons for p in set(flagged) & phones)
    c = m.features.accounts
    n = c.cols_["ipset_n"]
    assert max(n[c.index_[f"user{i}"]] for i in range(20)) <= 2.0
    assert min(n[c.index_[p]] for p in phones) >= 20.0
    # the farm is no longer grouped the next day until the phones play again
    slots, X, _ = m.features.update(PlayBatch.from_dicts(_rows("phone0", [T0 + 2 * 86400 + 60.0], ["A::b"],
                                                              ip=farm_ips[0], device_id="ph0", country="FR")))
    assert X[0, col] == 0.0


def test_a_residential_proxy_rotation_takes_new_lonely_ips_a_listener_does_not():
    """A new account handed a fresh IP of its own every 20 plays (a
    residential-proxy rotation) alerts on ``new_lonely_ips`` on its first
    day; a new listener on its home line and carrier NAT IPs shared with other
    accounts takes one IP of its own (home) and stays quiet. Plays that share
    one time stamp (the real exports' minute resolution) take an IP in once."""
    col = FEATURE_NAMES.index("new_lonely_ips")
    rng = np.random.default_rng(9)
    t = T0 + 86400 + 8 * 3600 + np.arange(0, 8 * 3600, 240.0)  # 120 plays over 8 h
    tracks = [f"Artist{k % 40}::song {k}" for k in rng.integers(0, 400, len(t))]
    rows = []
    for k in range(8):  # other accounts on the carrier NATs
        rows += _rows(f"mobile{k}", t[::6] + k, tracks[::6], ip=f"100.64.0.{k % 3 + 1}", device_id=f"m{k}",
                      country="FR")
    rows += [dict(r, ip=f"100.64.0.{k % 3 + 1}" if k % 4 == 0 else "10.9.9.9")
             for k, r in enumerate(_rows("listener", t, tracks, device_id="lp", country="FR"))]
    rows += [dict(r, ip=f"198.18.{k // 20}.{k % 7 + 1}")
             for k, r in enumerate(_rows("proxied", t + 1, tracks, device_id="pp", country="FR"))]
    m = AccountFraudModel(Settings())
    alerts = _run(m, rows, size=50)
    flagged = {a.entity_id: a for a in alerts if a.detector == "account_fraud"}
    assert set(flagged) == {"proxied"} and "new_lonely_ips" in flagged["proxied"].reasons
    c = m.features.accounts
    assert c.cols_["newlonely"][c.index_["listener"]] <= 1.0
    # ten plays at one time stamp on a new line of its own: one IP taken in
    f = m.features
    slots, X, _ = f.update(PlayBatch.from_dicts(_rows("listener", [t[-1] + 600.0] * 10, tracks[:10],
                                                       ip="10.8.8.8", device_id="lp", country="FR")))
    assert X[0, col] <= c.cols_["newlonely"][c.index_["listener"]] <= 2.0


def test_a_strangers_phone_keeps_its_provenance_after_its_first_day():
    """A hijacker in the victim's own country: a phone first seen at noon on
    a new line of its own (a stranger's, but the hour is the owner's, so no
    evidence), back 39 h later at 03:00 for an hour on another new line of
    its own. The phone is older than a day, and its night plays still count:
    the account alerts on ``odd_hour_new_device`` (until session 9 only a
    device's first 24 h did). Back on its first line (known to the account)
    the same night adds nothing."""
    found = {}
    for case, night_ip in (("new line", "198.51.100.2"), ("first line", "198.51.100.1")):
        m = AccountFraudModel(Settings())
        rows = _daytime_listener(np.random.default_rng(4), days=6)
        noon = T0 + 4 * 86400 + 12 * 3600 + np.arange(0, 1800, 215.0)
        night = T0 + 6 * 86400 + 3 * 3600 + np.arange(0, 3600, 215.0)
        rows += _rows("owner", noon, ["Stolen::x"] * len(noon), ip="198.51.100.1", device_id="burner", country="FR")
        before = _account_alerts(_run(m, rows, size=5))
        after = _account_alerts(_run(m, _rows("owner", night, ["Stolen::x"] * len(night), ip=night_ip,
                                                device_id="burner", country="FR"), size=5))
        c = m.features.accounts
        found[case] = (before, after, float(c.cols_["oddhour"][c.index_["owner"]]))
    before, after, odd = found["new line"]
    assert not before and len(after) == 1 and "odd_hour_new_device" in after[0].reasons
    before, after, odd_known = found["first line"]
    assert not before and not after and odd_known < 1.0 < odd


def test_a_vpn_hopper_takes_in_a_new_country_every_hop_a_toggler_and_a_traveller_do_not():
    """Three new accounts play daytime hours for 5 days on one phone. The
    hopper moves to another VPN exit country every 12 h (2 countries a day, so
    ``countries_24h`` stays within its allowance) and alerts on
    ``new_countries_7d``; the toggler switches between home and two favourite
    exits every 2 h, and the traveller spends days 2-5 abroad: their countries
    stay in the account's 3-country memory and neither alerts. A country
    that flips on the home IP (geo-IP data) is not taken in."""
    rng = np.random.default_rng(2)
    exits = ["NL", "SE", "US", "BR", "JP", "DE", "ES", "IT", "CA", "MX"]
    t = T0 + np.cumsum(rng.exponential(300.0, 1500))
    t = t[((t % 86400) >= 6 * 3600) & (t < T0 + 5 * 86400)]  # awake 06:00-24:00
    tracks = [f"Artist{k % 40}::song {k}" for k in rng.integers(0, 400, len(t))]
    toggle = ["FR", "NL", "FR", "SE"]  # every 2 h
    rows = []
    for acc, ctry in (("hopper", [exits[int((x - T0) // (12 * 3600))] for x in t]),  # every 12 h
                      ("toggler", [toggle[int((x - T0) // 7200) % 4] for x in t]),
                      ("traveller", ["FR" if x < T0 + 86400 else "IT" for x in t])):
        ips = [f"203.0.113.{exits.index(c) + 1}" if c in exits else "10.2.2.2" for c in ctry]
        rows += [dict(r, country=c, ip=ip) for r, c, ip in
                 zip(_rows(acc, t + len(rows) % 7, tracks, device_id=f"{acc}-phone"), ctry, ips)]
    m = AccountFraudModel(Settings())
    alerts = _account_alerts(_run(m, rows, size=100))
    assert {a.entity_id for a in alerts} == {"hopper"}
    assert "new_countries_7d" in alerts[0].reasons
    c = m.features.accounts
    taken = {a: float(c.cols_["newctry_w"][c.index_[a]]) for a in ("hopper", "toggler", "traveller")}
    assert taken["hopper"] > 6.5 and taken["toggler"] <= 3.0 and taken["traveller"] <= 2.0
    # a country that flips on the home IP is the geo-IP data's, not a journey
    # (a real listener's conn_country flips between EE, PL, SE and GB)
    # (two days at home in EE first, then four days of flips on the same IP)
    flips = ["EE", "PL", "SE", "GB", "EE"]
    f = m.features
    for d in range(6):
        day = T0 + 5 * 86400 + d * 86400 + 9 * 3600 + np.arange(0, 5 * 3600, 600.0)
        f.update(PlayBatch.from_dicts([dict(r, country="EE" if d < 2 else flips[(k + d) % 5]) for k, r in
                                       enumerate(_rows("flapper", day, tracks[:len(day)], ip="10.3.3.3",
                                                       device_id="fp"))]))
    assert float(c.cols_["newctry_w"][c.index_["flapper"]]) <= 1.0  # home only


def test_a_farms_first_arrivals_in_a_cell_are_late_coplays_judged_causally():
    """Session 11: the first ``co_min`` accounts to reach a (track, 10-min)
    cell are not co-plays when they arrive, though the farm fills the cell
    within minutes. An account's pending play (its last, not a co-play) is
    judged again at its next play, counting the accounts that reached the
    cell by then, never later ones; on new tracks only (a farm's payload)."""
    # a farm's payload: tracks first seen after the model's own first 3 days
    rows = _background(n_acc=5, days=5)
    t0 = T0 + 4 * 86400 + 3 * 600  # the start of a 10-min bucket
    for i in range(8):  # each bot plays A, B, C; bot i arrives 20*i s after bot 0
        rows += _rows(f"bot{i}", t0 + 20.0 * i + np.array([0.0, 400.0, 800.0]),
                      [f"Brand New::{k}" for k in "ABC"])
    # an early bot: plays A just after bot 0, then B before anyone else
    # reached A or B (all in bot 0's bucket)
    rows += _rows("early", t0 + np.array([1.0, 5.0, 900.0]), [f"Brand New::{k}" for k in "ABC"])
    # on two more new tracks: a bot first on E (three others follow within
    # seconds) whose next play, F, comes in the same batch of 4: E is judged
    # at F as in batches of one (session 12); and one first on G, back 3 h
    # later (G's cell no longer counted)
    for k in range(3):
        rows += _rows(f"e{k}", [t0 + 3001.0 + k, t0 + 3006.0 + k], ["Brand New::E", "Brand New::G"])
    rows += _rows("early2", t0 + np.array([3000.0, 3005.0]), ["Brand New::E", "Brand New::F"])
    rows += _rows("sleeper", t0 + np.array([3005.5, 3 * 3600.0]), ["Brand New::G", "Brand New::H"])
    cos = []
    for size in (1, 4, 16):
        m = CatalogFraudModel(Settings())
        _run(m, rows, size=size)
        t = m.features.accounts
        cos.append({a: c for a, c in zip(t.ids_, np.round(t.cols_["co"], 2).tolist()) if a})
    assert cos[0] == cos[1] == cos[2]  # the same counts whatever the batch size
    co = cos[0]
    # bots 3-7 co-play on arrival in every cell; bots 0-2 are among the first
    # three in one or two cells and are credited late there (their last play,
    # C, is pending at the end or was a co-play on arrival): two each
    for i in range(3, 8):
        assert co[f"bot{i}"] == pytest.approx(3.0, abs=0.05)
    for i in range(3):
        assert co[f"bot{i}"] == pytest.approx(2.0, abs=0.05)
    # the early bot's A was judged at its B, when A held bot 0 and itself:
    # never credited; its B was judged at its C (B full by then); C co-played
    # on arrival
    assert co["early"] == pytest.approx(2.0, abs=0.05)
    # E held three others at early2's F: credited; G too, but 3 h later: not
    assert co["early2"] == pytest.approx(1.0, abs=0.05) and co["sleeper"] == 0.0
    # the same farm on long-known tracks (a listener's clones replaying its
    # favourites): co-plays on arrival count, late ones do not
    old = [r for r in rows if r["account_id"].startswith("user")]
    for r in rows:
        if r["account_id"].startswith(("bot", "early")) and r["track_id"][-1] in "ABC" and r["account_id"] != "early2":
            k = "ABC".index(r["track_id"][-1])
            old.append(dict(r, track_id=f"Artist{k}::song {k}", artist_id=f"Artist{k}"))
    m = CatalogFraudModel(Settings())
    _run(m, old, size=1)
    t = m.features.accounts
    co_old = dict(zip(t.ids_, t.cols_["co"].tolist()))
    assert co_old["bot3"] == pytest.approx(3.0, abs=0.05) and co_old["bot0"] == 0.0


def test_30_40_s_plays_of_a_new_cold_artist_count_as_a_loop_catalog_from_its_first_play():
    rows = _new_artist_background()
    t = T0 + 4 * 86400 + np.arange(0, 48 * 150.0, 150.0)
    rng = np.random.default_rng(5)
    popular = [f"Artist{int(k) % 40}::song {int(k)}" for k in rng.integers(0, 400, len(t))]
    # a lone looper: popular filler heard in full, and every 4th play a 35-s
    # play of a brand-new loop artist nobody else plays (the artist never has
    # the 3 listeners and 20 plays that make an established loop catalog)
    loop = np.arange(len(t)) % 4 == 0
    tracks = [f"Loops::loop {k % 5}" if loop[k] else popular[k] for k in range(len(t))]
    ms = np.where(loop, 35_000, 200_000)
    looper = [dict(r, ms_played=int(m_)) for r, m_ in zip(
        _rows("looper", t, tracks, ip="10.8.8.8", device_id="l", country="FR"), ms)]
    # a listener who samples a new artist's first two tracks for 35 s each
    sample = [f"Debut::song {k}" if k in (10, 11) else popular[(k + 7) % len(t)] for k in range(len(t))]
    sampler = [dict(r, ms_played=35_000 if r["track_id"].startswith("Debut") else 200_000)
               for r in _rows("sampler", t + 20.0, sample, ip="10.7.7.7", device_id="s", country="FR")]
    m = CatalogFraudModel(Settings())
    alerts = _run(m, rows + looper + sampler, size=50)
    first = {}
    for a in alerts:
        if a.detector == "catalog_account":
            first.setdefault(a.entity_id, a)
    assert "looper" in first and "sampler" not in first
    a = first["looper"]
    assert "loop_catalog_share" in a.reasons
    assert a.features["loop_catalog_share"].actual > 0.15
    # flagged within its first 8 loop plays (32 plays, 80 min), not never
    assert a.evidence["last_event_ts"] - t[0] <= 32 * 150.0


@pytest.mark.parametrize("day, niche_alerts", [(4, False), (9, True)])
def test_artists_a_known_listener_brings_in_during_the_warm_up_are_not_new(day, niche_alerts):
    rows = _background(n_acc=10, days=day + 1, seed=2)
    t = T0 + day * 86400 + np.arange(0, 40 * 100.0, 100.0)
    # a listener the model has known since its first day opens 40 artists the
    # model has never met, one play each; a fresh account does the same
    rows += _rows("user3", t, [f"Niche{k}::deep cut" for k in range(len(t))], ip="10.0.3.1", device_id="dev3",
                  country="FR")
    rows += _rows("farm", t + 30.0, [f"Ai{k}::track" for k in range(len(t))], ip="10.8.8.8", device_id="f",
                  country="FR")
    m = CatalogFraudModel(Settings())
    alerts = _run(m, [r for r in rows if r["ts"] < t[0]])
    alerts += _run(m, [r for r in rows if r["ts"] >= t[0]], size=20)
    flagged = {a.entity_id for a in alerts if a.detector == "catalog_account" and "new_artists" in a.reasons}
    # in the model's warm-up (its first 8 days) the listener's artists are
    # ones it had not seen yet; after it, 40 new artists in an hour are new
    assert "farm" in flagged
    assert ("user3" in flagged) == niche_alerts


def test_a_new_device_weighs_by_how_much_of_the_owner_has_been_seen():
    """The same night of plays from a new phone, new IP and new country: an
    owner seen over 4 days of listening (240 plays) alerts; one seen over 6
    plays in 3 days may well own a phone not seen yet, and does not."""
    night = T0 + 4 * 86400 + 2 * 3600 + np.arange(0, 3 * 3600, 215.0)  # 02:00-05:00
    abroad = dict(ip="198.51.100.9", device_id="new", country="BR")
    found = {}
    for case in ("seen", "thin"):
        rows = _daytime_listener(np.random.default_rng(3))
        if case == "thin":
            keep = np.random.default_rng(4).choice(len(rows), 6, replace=False)
            rows = [rows[i] for i in sorted(keep)]
            rows[0] = dict(rows[0], ts=T0 + 9 * 3600)  # first seen on day 0: past the identity age
        m = AccountFraudModel(Settings())
        assert not _account_alerts(_run(m, rows))
        found[case] = _account_alerts(_run(m, _rows("owner", night, ["Away::x"] * len(night), **abroad), size=10))
    assert len(found["seen"]) == 1 and "odd_hour_new_device" in found["seen"][0].reasons
    assert not found["thin"]


def _farm_rows(n_bots=6, plays=2):
    """A small lockstep farm on new tracks (after the model's cold start):
    each bot plays A, B, C... 400 s apart, bot i 20*i s after bot 0."""
    rows = _background(n_acc=5, days=5)
    t0 = T0 + 4 * 86400 + 3 * 600
    for i in range(n_bots):
        rows += _rows(f"bot{i}", t0 + 20.0 * i + 400.0 * np.arange(plays),
                      [f"Brand New::{k}" for k in "ABCDEFGH"[:plays]], ip=f"10.5.{i}.1", device_id=f"bd{i}")
    return rows


def _run_carrying(rows, carried, size=50):
    """Catalog stage alone, each bot play carrying ``carried`` nats of
    account-stage evidence; returns (alerts, max catalog score per bot)."""
    m = CatalogFraudModel(Settings())
    best = {}

    def sink(stage, batch, ev):
        for a, v in zip(batch.account_id, ev.tolist()):
            if a.startswith("bot"):
                best[a] = max(best.get(a, 0.0), v)

    m.score_sink = sink
    alerts = []
    rows = sorted(rows, key=lambda r: r["ts"])
    for o in range(0, len(rows), size):
        b = PlayBatch.from_dicts(rows[o:o + size])
        b.account_score = np.array([carried if a.startswith("bot") else 0.0 for a in b.account_id], np.float32)
        alerts += m.process(b)
    return alerts, best


def test_the_catalog_stage_adds_the_account_stage_evidence_its_plays_carry():
    """Session 15: the account stage's evidence rides on each forwarded play
    (``PlayBatch.account_score``) and the catalog stage adds it to its own,
    as separate features' log-likelihood ratios add. A bot with a few
    co-plays and a few nats of account evidence is caught when both stages
    together reach the threshold, though neither does alone; an account the
    account stage has raised itself gets no second alert for that evidence."""
    rows = _farm_rows()
    alone, own = _run_carrying(rows, 0.0)
    assert not [a for a in alone if a.detector == "catalog_account"]
    weak = {a for a, v in own.items() if 2.0 < v < 12.0}
    assert len(weak) >= 3, own  # co-plays, under the threshold
    carried = 12.0 - min(own[a] for a in weak) + 0.5
    assert carried < 12.0  # under the account stage's own threshold
    fused, both = _run_carrying(rows, carried)
    for a in own:
        assert both[a] == pytest.approx(own[a] + carried, abs=1e-3)
    raised = {a.entity_id: a for a in fused if a.detector == "catalog_account"}
    assert set(raised) == {a for a in own if own[a] + carried >= 12.0}
    assert weak <= set(raised)
    al = raised[min(weak, key=own.get)]
    assert "account_stage" in al.reasons
    assert al.features["account_stage"].actual == pytest.approx(carried, abs=1e-3)
    assert al.evidence["terms"]["account_stage"] == pytest.approx(carried, abs=0.01)
    # evidence the account stage alerted on by itself is not alerted again
    again, _ = _run_carrying(rows, 13.0)
    assert not [a for a in again if a.detector == "catalog_account" and a.entity_id in weak]


def test_the_account_stage_forwards_each_plays_network_evidence_not_its_listening_volume():
    """The account stage sets ``account_score`` on the batch it forwards: the
    play's account evidence of ``FORWARDED_TERMS`` (who plays and from
    where) after the batch. A VPN hopper's IPs and countries are forwarded;
    a looper's 30-40 s plays are not (the catalog stage sees its loop
    catalog itself). The bytes carry it."""
    rows = _background(n_acc=10, days=1)
    t = T0 + 3600 + 300.0 * np.arange(40)
    loop = _rows("looper", T0 + 3600 + 40.0 * np.arange(60), ["Loops::loop 1"] * 60, ms=35_000,
                 ip="10.6.0.1", device_id="ld", country="FR")
    hop = [dict(r, ip=f"10.7.{i // 4}.1", country=["FR", "DE", "JP", "BR", "MX", "US"][(i // 4) % 6])
           for i, r in enumerate(_rows("hopper", t, [f"Artist{i % 40}::song {i}" for i in range(40)],
                                       device_id="hd"))]
    m = AccountFraudModel(Settings())
    seen, fwd = {}, {}
    terms = m.terms

    def spy(X, slots):
        out = terms(X, slots)
        ids = m.features.accounts.ids_
        for j, s in enumerate(slots.tolist()):
            fwd[ids[s]] = sum(float(out[k][j]) for k in AccountFraudModel.FORWARDED_TERMS)
        return out

    def sink(stage, batch, ev):
        for a, v in zip(batch.account_id, ev.tolist()):
            seen[a] = v

    m.terms, m.score_sink = spy, sink
    rows = sorted(rows + loop + hop, key=lambda r: r["ts"])
    last = {}
    for o in range(0, len(rows), 100):
        b = PlayBatch.from_dicts(rows[o:o + 100])
        assert not b.account_score.any()
        m.process(b)
        np.testing.assert_allclose(b.account_score, [fwd[a] for a in b.account_id], rtol=1e-5, atol=1e-6)
        for a, v in zip(b.account_id, b.account_score.tolist()):
            last[a] = v
        if "hopper" in b.account_id:
            hb = b
    assert seen["looper"] >= 12.0 and last["looper"] == 0.0
    assert 12.0 <= last["hopper"] <= seen["hopper"] + 1e-3
    assert max(v for a, v in last.items() if a.startswith("user")) == 0.0
    back = PlayBatch.from_bytes(hb.to_bytes())
    np.testing.assert_array_equal(back.account_score, hb.account_score)
