"""Labelled fraud injected into a real listening background.

:func:`prepare_background` cuts each real user's history to one ``days``-long
piece and shifts it by whole days onto a common window (each user keeps their
hour of day and own timing, CONVENTIONS.md "Replay"). :func:`simulate` then:

1. grows the benign background to ``n_accounts`` with clones of real users:
   shifted by whole days inside the window (wrapping around), offset by a
   distinct multiple of 23 min (within +-3 h) per clone of a user, jittered by seconds, 10-30 % of plays dropped, 25 % of tracks
   swapped for popular ones, new identities. Different shifts and offsets keep
   clones of one user out of lockstep with each other;
2. gives every account, benign or not, stable synthetic IP, device and country
   values (:mod:`stream.fraud.identities`) and the extended or basic export
   style with the background's odds, so no field leaks the label;
3. adds the hard negatives and tags the real odd users (the superfans are
   established listeners whose own plays give way to the album while they
   replay it; hard-negative plays of established listeners come from their
   home country);
4. injects every requested scenario at every requested camouflage level
   (:mod:`stream.fraud.scenarios`) inside the background's own time span, with
   about ``fraud_share`` of all events being fraud.

Labels: ``is_fraud`` per event; ``scenario`` is ``""``, ``"<name>:<level>"``
or ``"hardneg:<name>"``. Account-level truth: an account is fraudulent while
it emits fraud events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from stream.batch import PlayBatch, UNKNOWN_IDS
from stream.fraud.identities import IdentityPool, assign_network, rand_account
from stream.fraud.scenarios import BOT_RATE, MIN_BOTS, HARD_NEGATIVES, LEVELS, SCENARIOS, Context, boost_fans, generate, hard_negative
from stream.schemas import play_event_id

DAY = 86400.0


@dataclass
class Labelled:
    """A labelled play stream.

    Attributes:
        batch: plays sorted by event time.
        is_fraud: bool (n,).
        scenario: n strings: ``""``, ``"<name>:L0|L1|L2"`` or ``"hardneg:<name>"``.
    """

    batch: PlayBatch
    is_fraud: np.ndarray
    scenario: list[str]

    def __len__(self) -> int:
        return len(self.batch)

    def take(self, idx) -> "Labelled":
        """Rows ``idx`` as a new :class:`Labelled`."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return Labelled(self.batch.take(idx), self.is_fraud[idx], [self.scenario[i] for i in idx])


def prepare_background(raw: PlayBatch, days: int = 14, end_ts: float | None = None) -> PlayBatch:
    """One ``days``-long piece of each account's history on a common window.

    The piece is the newest one, except for an account that plays one track
    more than 100 times in some day: its piece ends with its busiest such day,
    so that the odd behaviour stays in the background. Shifts are whole days.

    Args:
        raw: plays of real accounts (any time span).
        days: window length in days (>= 1).
        end_ts: window end (Unix s); default: the last midnight before now.

    Returns:
        Plays in [end_ts - days*86400, end_ts), sorted by event time.

    Raises:
        ValueError: if ``days`` < 1 or ``raw`` is empty.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if not len(raw):
        raise ValueError("empty background")
    if end_ts is None:
        end_ts = float(np.floor(datetime.now(UTC).timestamp() / DAY) * DAY)
    acc = np.asarray(raw.account_id, dtype=object)
    order = np.argsort(acc, kind="stable")
    acc_s = acc[order]
    bounds = np.flatnonzero(np.r_[True, acc_s[1:] != acc_s[:-1], True])
    keep, shift = [], []
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        idx = order[b0:b1]
        ts = raw.ts[idx]
        dayn = np.floor(ts / DAY).astype(np.int64)
        tr = [raw.track_id[i] for i in idx]
        cnt = Counter((t, d) for t, d in zip(tr, dayn.tolist()) if t not in UNKNOWN_IDS)
        big = [(c, d) for (t, d), c in cnt.items() if c > 100]
        last_day = max(big)[1] if big else int(dayn.max())
        sel = (dayn > last_day - days) & (dayn <= last_day)
        keep.append(idx[sel])
        shift.append(np.full(int(sel.sum()), end_ts - (last_day + 1) * DAY))
    keep_i = np.concatenate(keep)
    b = raw.take(keep_i)
    b.ts = b.ts + np.concatenate(shift)
    b.record_ts = b.ts.copy()
    return b.take(np.argsort(b.ts, kind="stable"))


def _popular(batch: PlayBatch, k: int = 2000):
    c = Counter(t for t in batch.track_id if t not in UNKNOWN_IDS)
    top = c.most_common(k)
    tracks = [t for t, _ in top]
    p = np.array([n for _, n in top], float)
    return tracks, p / p.sum()


def _cols(batch: PlayBatch, idx: np.ndarray) -> dict:
    return {"ts": batch.ts[idx], "track": [batch.track_id[i] for i in idx],
            "artist": [batch.artist_id[i] for i in idx], "ms": batch.ms_played[idx],
            "platform": [batch.platform[i] for i in idx], "country": [batch.country[i] for i in idx]}


def _replay_sessions(plays, accounts: set, gap_s: float = 3600.0) -> dict:
    """Replay sessions of ``accounts`` in ``plays`` (:class:`Plays`):
    account -> float (m, 2) array of [start, end] event times (Unix s) of
    their runs of plays with gaps under ``gap_s``; a session starts one
    play length (ms_played) before its first play ends."""
    acc = np.asarray(plays.account, dtype=object)
    ts = np.asarray(plays.ts, np.float64)
    ms = np.asarray(plays.ms, np.float64)
    out = {}
    for a in accounts:
        ix = np.flatnonzero(acc == a)
        if not len(ix):
            continue
        ix = ix[np.argsort(ts[ix], kind="stable")]
        cut = np.flatnonzero(np.diff(ts[ix]) > gap_s) + 1
        first, last = np.r_[0, cut], np.r_[cut, len(ix)] - 1
        out[a] = np.c_[ts[ix[first]] - ms[ix[first]] / 1000.0, ts[ix[last]]]
    return out


def _in_sessions(acc: np.ndarray, ts: np.ndarray, busy: dict) -> np.ndarray:
    """bool (n,): plays (accounts ``acc``, end times ``ts`` (Unix s), (n,))
    inside one of their account's ``busy`` sessions (:func:`_replay_sessions`)."""
    out = np.zeros(len(ts), bool)
    for a, sess in busy.items():
        ix = np.flatnonzero(acc == a)
        pos = np.searchsorted(sess[:, 0], ts[ix], side="right") - 1
        out[ix[(pos >= 0) & (ts[ix] <= sess[np.maximum(pos, 0), 1])]] = True
    return out


def simulate(background: PlayBatch, *, n_accounts: int = 1000, fraud_share: float = 0.03,
             scenarios: list[str] | None = None, levels=("L0", "L1", "L2"), seed: int = 0,
             hard_negatives: bool = True, grow_background: bool = True) -> Labelled:
    """Inject labelled fraud and hard negatives into a real background.

    Args:
        background: real plays already on a common window (e.g. from
            :func:`prepare_background` or a time-shifted replay window).
        n_accounts: benign background size after cloning (>= the real accounts).
        fraud_share: target share of fraud events in (0, 0.5).
        scenarios: scenario names (default all of :data:`SCENARIOS`).
        levels: camouflage levels.
        seed: random seed (same inputs and seed give the same output).
        hard_negatives: add the synthetic hard negatives.
        grow_background: add benign clones beyond ``n_accounts`` until fraud
            events are at most ``fraud_share`` of all events (scenario bot
            minimums and 6-h minimum durations otherwise push the share above
            it); ``False`` keeps ``n_accounts`` and lets the share exceed it.

    Returns:
        :class:`Labelled`, sorted by event time.

    Raises:
        ValueError: on an empty background, a bad share, scenario or level.
    """
    scenarios = list(SCENARIOS if scenarios is None else scenarios)
    levels = list(levels)
    for s in scenarios:
        if s not in SCENARIOS:
            raise ValueError(f"unknown scenario {s!r}; choose from {SCENARIOS}")
    for lv in levels:
        if lv not in LEVELS:
            raise ValueError(f"unknown level {lv!r}; choose from {LEVELS}")
    if not 0 < fraud_share < 0.5:
        raise ValueError(f"fraud_share must be in (0, 0.5), got {fraud_share}")
    if not len(background):
        raise ValueError("empty background")
    rng = np.random.default_rng(seed)
    t0, t1 = float(background.ts.min()), float(background.ts.max()) + 1.0
    span_days = max(1, int(np.floor((t1 - t0) / DAY)))
    span = span_days * DAY
    acc = np.asarray(background.account_id, dtype=object)
    real_accounts = sorted(set(background.account_id))
    by_acc = {a: np.flatnonzero(acc == a) for a in real_accounts}
    pool = IdentityPool(rng, n_accounts)
    popular, pop_p = _popular(background)
    # ---- benign accounts: real + clones, as column dicts
    rows = {k: [] for k in ("account", "ts", "track", "artist", "ms", "platform", "country", "label", "fraud")}
    ev_src = []  # original event ids (real rows) or None
    ext_style = {}
    labels_real = {}
    for a, idx in by_acc.items():
        ms = background.ms_played[idx]
        tr = [background.track_id[i] for i in idx]
        dayn = (background.ts[idx] // DAY).astype(np.int64)
        cnt = Counter((t, d) for t, d in zip(tr, dayn.tolist()) if t not in UNKNOWN_IDS)
        if cnt and max(cnt.values()) > 100:
            labels_real[a] = "hardneg:heavy_repeat"
        elif len(ms) and np.mean(ms < 30000) > 0.8:
            labels_real[a] = "hardneg:odd_short"
        ext_style[a] = any(p is not None for p in (background.platform[i] for i in idx[:50]))
    def add_rows(account, c, label, ext, src_ids=None):
        n = len(c["ts"])
        rows["account"] += [account] * n
        rows["ts"].append(np.asarray(c["ts"], float))
        rows["track"] += c["track"]
        rows["artist"] += c["artist"]
        rows["ms"].append(np.asarray(c["ms"], np.int64))
        rows["platform"] += c.get("platform", [None] * n) if ext else [None] * n
        rows["country"] += c.get("country", [None] * n)
        rows["label"] += [label] * n
        rows["fraud"].append(np.zeros(n, bool) if not label or label.startswith("hardneg") else np.ones(n, bool))
        ev_src.extend(src_ids if src_ids is not None else [None] * n)
        ext_style[account] = ext
    for a, idx in by_acc.items():
        add_rows(a, _cols(background, idx), labels_real.get(a, ""), ext_style[a], [background.event_id[i] for i in idx])
    n_clones = max(0, n_accounts - len(real_accounts))
    clones = []
    # clones of one user get distinct offsets on a 23-min grid, so routine
    # listeners' clones never share (track, 10-min bucket) cells: +-1..7 steps
    # (+-3 h) first, then the next rings outwards (+-8..14 steps, ...) once a
    # user has more clones than that. Reusing the first ring (as before) made
    # clones of one user with the same offset play the same tracks within
    # seconds of each other on every day of a daily routine: an artificial
    # lockstep pair
    ring = np.r_[np.arange(-7, 0), np.arange(1, 8)]
    grid = ring * 23 * 60.0
    offsets = {a: list(rng.permutation(grid)) for a in real_accounts}
    rings = dict.fromkeys(real_accounts, 0)

    def add_clone(src: str) -> int:
        idx = by_acc[src]
        keep = idx[rng.random(len(idx)) > rng.uniform(0.1, 0.3)]
        c = _cols(background, keep)
        k = int(rng.integers(1, max(2, span_days)))
        if not offsets[src]:
            rings[src] += 1
            offsets[src] = list(rng.permutation((ring + 7 * rings[src] * np.sign(ring)) * 23 * 60.0))
        # wrapped into the window (clipping piled the plays shifted past an
        # edge onto one instant)
        ts = t0 + np.mod(c["ts"] - t0 + k * DAY + offsets[src].pop() + rng.normal(0, 3, len(keep)), span)
        c["ts"] = np.clip(ts, t0, t1 - 1)
        swap = rng.random(len(keep)) < 0.25
        fill = [popular[i] for i in rng.choice(len(popular), int(swap.sum()), p=pop_p)]
        it = iter(fill)
        c["track"] = [next(it) if s else t for t, s in zip(c["track"], swap)]
        c["artist"] = [t.split("::")[0] if s else ar for t, ar, s in zip(c["track"], c["artist"], swap)]
        new = rand_account(rng)
        clones.append(new)
        add_rows(new, c, "", ext_style[src])
        return len(keep)

    for src in rng.choice(real_accounts, n_clones).tolist():
        add_clone(src)
    benign_plain = [a for a in real_accounts if a not in labels_real] + clones
    # ---- hard negatives
    prof = []
    for a in real_accounts:
        h = np.bincount(((background.ts[by_acc[a]] // 3600) % 24).astype(int), minlength=24).astype(float)
        prof.append(h / max(h.sum(), 1))
    ctx = Context(rng, popular, pop_p, np.array(prof), pool)
    p_ext = float(np.mean([ext_style[a] for a in real_accounts]))
    idents = {}  # account -> home identity
    busy = {}  # superfan -> its replay sessions (its own plays give way)
    injected = []
    casual_pool = list(clones)
    rng.shuffle(casual_pool)
    hijack_victims = casual_pool[int(0.6 * len(casual_pool)):]
    casual_pool = casual_pool[:int(0.6 * len(casual_pool))]
    def ident_of(a):
        if a not in idents:
            idents[a] = pool.home()
        return idents[a]
    if hard_negatives:
        casual = lambda i, n: [(a, {"ip": ident_of(a)["home_ip"], "device": ident_of(a)["devices"][0],  # noqa: E731
                                    "country": ident_of(a)["country"]}) for a in casual_pool[i:i + n]]
        # the album's and the viral hit's casual listeners are two different
        # crowds (up to 300 accounts each, half of the casual pool at most)
        n_casual = min(300, len(casual_pool) // 2)
        crowds = {"superfan": casual(0, n_casual), "viral": casual(n_casual, n_casual)}
        # the superfans are established listeners of the album's crowd
        # (session 14; new accounts that played nothing but the album before)
        fans = crowds["superfan"][:6]
        for name, k in (("sleep", 5), ("superfan", 6), ("viral", 0), ("cafe", 3)):
            pl = hard_negative(name, ctx, t0, t1, k, casual_accounts=crowds.get(name),
                               fan_accounts=fans if name == "superfan" else None)
            injected.append((pl, f"hardneg:{name}", False))
            if name == "superfan":
                busy = _replay_sessions(pl, {a for a, _ in fans})
    # ---- fraud
    n_benign = sum(len(x) for x in rows["ts"]) + sum(len(p[0].ts) for p in injected)
    combos = [(s, lv) for s in scenarios for lv in levels]
    budget = fraud_share / (1 - fraud_share) * n_benign / max(len(combos), 1)
    warm = min(4 * DAY, 0.3 * (t1 - t0))
    for s, lv in combos:
        eff = BOT_RATE[s] * {"L0": 1.0, "L1": 0.6, "L2": 0.3}[lv]
        if s == "long_farm":  # active from before the window opens
            k = max(3, int(round(budget / (eff * span_days))))
            a0 = t0 - DAY
            a1 = min(t1, a0 + float(np.clip(budget / (k * eff) * DAY, 1.5 * DAY, span)))
        else:
            k = max(MIN_BOTS.get(s, 4), int(round(budget / (eff * 2))))
            if s == "hijack":
                k = max(4, min(k, 12))
            dur = float(np.clip(budget / (k * eff) * DAY, 6 * 3600, 3 * DAY))
            a0 = t0 + warm + rng.random() * max(t1 - t0 - warm - dur, 0)
            a1 = min(a0 + dur, t1)
        victims = None
        bg_plays = None
        if s == "hijack":
            victims = hijack_victims[:k]
            hijack_victims = hijack_victims[k:]
            bg_plays = {}  # victim history: their clone rows
            acc_arr = np.asarray(rows["account"], dtype=object)
            allts = np.concatenate(rows["ts"])
            for v in victims:
                bg_plays[v] = {"ts": allts[acc_arr == v], "country": ident_of(v)["country"]}
        pl = generate(s, lv, ctx, a0, a1, k, background_accounts=victims, background_plays=bg_plays)
        if s == "long_farm":
            # already active when the window opens: the stream starts with the
            # window, as a model started then sees it (session 14: it held the
            # farm's day before it, so the model's first day was the farm
            # alone and the whole background arrived at once a day later)
            pl = pl.since(t0)
        injected.append((pl, f"{s}:{lv}", True))
    # ---- grow the benign background until fraud is ``fraud_share`` of events:
    # scenario intensities (bots, durations) are set from the requested
    # background above; bot minimums make the fraud larger than the budget, so
    # more benign clones (never hijack victims or hard negatives) are added.
    n_fraud = sum(len(p[0].ts) for p in injected if p[2])
    n_benign = sum(len(x) for x in rows["ts"]) + sum(len(p[0].ts) for p in injected if not p[2])
    n_benign -= int(_in_sessions(np.asarray(rows["account"], dtype=object),
                                 np.concatenate(rows["ts"]) if rows["ts"] else np.zeros(0), busy).sum())
    need = fraud_share / (1 - fraud_share)
    if grow_background and n_fraud > need * n_benign:
        while n_fraud > need * n_benign:
            n_benign += add_clone(str(rng.choice(real_accounts)))
    # ---- organic listeners of each boost's tracks (hard negatives, session
    # 11): drawn from the album's and the viral hit's crowds (established
    # accounts that already have home identities) by a generator of their
    # own, after everything else, so no other play moves
    if hard_negatives:
        frng = np.random.default_rng([seed, 0xB0057])
        fan_pool = crowds["superfan"] + crowds["viral"]
        for pl, label, _ in list(injected):
            if label.split(":")[0] != "boost" or not pl.ts or not fan_pool:
                continue
            pay = sorted({t for t in pl.track if "::boosted " in t})
            injected.append((boost_fans(frng, pay, min(pl.ts), min(max(pl.ts) + DAY, t1), fan_pool),
                             "hardneg:boost_fans", False))
    # ---- assemble: benign rows get network identities; injected carry theirs
    acc_arr = np.asarray(rows["account"], dtype=object)
    ts_all = np.concatenate(rows["ts"]) if rows["ts"] else np.zeros(0)
    ms_all = np.concatenate(rows["ms"]) if rows["ms"] else np.zeros(0, np.int64)
    fraud_all = np.concatenate(rows["fraud"]) if rows["fraud"] else np.zeros(0, bool)
    n0 = len(ts_all)
    ip = [None] * n0
    dev = [None] * n0
    plat = list(rows["platform"])
    ctry = list(rows["country"])
    order = np.lexsort((ts_all, acc_arr))
    bounds = np.flatnonzero(np.r_[True, acc_arr[order][1:] != acc_arr[order][:-1], True])
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        idx = order[b0:b1]
        a = acc_arr[idx[0]]
        real_c = Counter(c for c in (ctry[i] for i in idx) if c)
        home = ident_of(a)
        if real_c:
            home["country"] = real_c.most_common(1)[0][0]
        ips, devs, plats, ctrs = assign_network(rng, ts_all[idx], home, pool,
                                                travel=rng.random() < 0.05, vpn=rng.random() < 0.03)
        for j, i in enumerate(idx.tolist()):
            ip[i], dev[i] = ips[j], devs[j]
            if ctry[i] is None or not real_c:
                ctry[i] = ctrs[j]
            if ext_style[a] and plat[i] is None:
                plat[i] = plats[j]
    cols = dict(account=list(rows["account"]), ts=[ts_all], track=list(rows["track"]), artist=list(rows["artist"]),
                ms=[ms_all], ip=ip, dev=dev, plat=plat, ctry=ctry, label=list(rows["label"]), fraud=[fraud_all])
    inj_ext = {}
    for pl, label, is_f in injected:
        n = len(pl.ts)
        if n == 0:
            continue
        if label.startswith("hardneg:"):
            # an established listener plays from its home country (its
            # identity's country is set from its real rows above, after
            # the hard negatives were drawn)
            pl.country = [idents[a]["country"] if a in idents else c for a, c in zip(pl.account, pl.country)]
        for a in set(pl.account):
            if a not in inj_ext:
                inj_ext[a] = ext_style.get(a, rng.random() < p_ext)
        cols["account"] += pl.account
        cols["ts"].append(np.asarray(pl.ts))
        cols["track"] += pl.track
        cols["artist"] += pl.artist
        cols["ms"].append(np.asarray(pl.ms, np.int64))
        cols["ip"] += pl.ip
        cols["dev"] += pl.device
        cols["ctry"] += pl.country
        cols["plat"] += [("android" if inj_ext[a] else None) for a in pl.account]
        cols["label"] += [label] * n
        cols["fraud"].append(np.full(n, is_f))
        ev_src.extend([None] * n)
    ts = np.concatenate(cols["ts"])
    ms = np.concatenate(cols["ms"])
    fraud = np.concatenate(cols["fraud"])
    n = len(ts)
    accounts = cols["account"]
    ext = np.fromiter((cols["plat"][i] is not None for i in range(n)), bool, n)
    iso = np.datetime_as_string((ts * 1e3).astype("datetime64[ms]"), unit="ms").tolist()
    event_id = [ev_src[i] if ev_src[i] is not None else
                play_event_id(accounts[i], iso[i], cols["track"][i], int(ms[i]), f"sim{seed}:{i}") for i in range(n)]
    short = ms < 30000
    batch = PlayBatch(
        event_id=event_id, ts=ts, account_id=accounts, track_id=cols["track"], artist_id=cols["artist"],
        ms_played=ms, track_duration_ms=np.full(n, -1, np.int64), platform=cols["plat"],
        device_id=cols["dev"], ip=cols["ip"], country=cols["ctry"],
        reason_start=[("clickrow" if e else None) for e in ext],
        reason_end=[(("fwdbtn" if s else "trackdone") if e else None) for e, s in zip(ext, short)],
        shuffle=np.where(ext, (rng.random(n) < 0.5).astype(np.int8), -1).astype(np.int8),
        skipped=np.where(ext, short.astype(np.int8), -1).astype(np.int8),
        offline=np.where(ext, 0, -1).astype(np.int8), record_ts=ts.copy(),
    ).validate()
    # real extended rows keep their own flags
    order = np.argsort(ts, kind="stable")
    if busy:  # a superfan's own plays give way to the album while it replays it
        keep = np.ones(n, bool)
        keep[:n0] = ~_in_sessions(np.asarray(accounts[:n0], dtype=object), ts[:n0], busy)
        order = order[keep[order]]
    return Labelled(batch.take(order), fraud[order], [cols["label"][i] for i in order])
