"""Fraud scenarios and hard negatives injected by :mod:`stream.fraud.simulate`.

Each scenario builds the plays of its bot accounts between ``t0`` and ``t1``
at a camouflage level:

* ``L0`` naive: round-the-clock, payload only, fixed play lengths, one shared IP;
* ``L1`` partly human-like: about 18 active hours a day, some popular filler,
  jittered lengths, a few IPs;
* ``L2`` human-like: sessions on a real listener's hour-of-day profile, 50-90 %
  popular filler tracks, rotating IPs and devices.

Scenarios (grounded in the public cases quoted in issue 11):

``ai_farm``         thin-spread AI catalog: 3,000 new tracks of 40 new artists, no track stands out (US 2024 case);
``loop30``          loops of 20 tracks stopped at 30-40 s (Bulgarian 2017 case);
``boost``           paid boost of 5 tracks of one artist by many accounts;
``lockstep``        accounts playing the same tracks in the same minutes;
``click_farm``      many phones behind 1-6 IPs;
``vpn_geo``         VPN exits hopping between countries;
``hijack``          real (background) accounts with new night plays from a new device, IP and country;
``playlist_stuffing``  a loop of a 30-track popular playlist with 3 target tracks (at
                    L2 the targets are 10-50 % of plays, the playlist shuffled);
``payout_gaming``   many tracks each played just past 30 s;
``long_farm``       a boost-and-loop farm already active when the window opens (its plays
                    start a day before it; the stream keeps those inside the window).

Hard negatives (benign): ``sleep`` (night-long ambient playlists), ``superfan``
(a new album replayed all day, beside many casual listeners), ``viral`` (a new
track with many light listeners), ``cafe`` (10 h a day of a shop playlist),
``boost_fans`` (since session 11: organic listeners of the boosted tracks, who
hold subsets of the ring's tracks as the ring's quieter bots do; see
:func:`boost_fans`); real odd users are tagged ``odd_short`` and ``heavy_repeat`` in the background.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream.fraud.identities import COUNTRIES, IdentityPool, rand_device, rand_ip

DAY = 86400.0
SCENARIOS = ("ai_farm", "loop30", "boost", "lockstep", "click_farm", "vpn_geo", "hijack",
             "playlist_stuffing", "payout_gaming", "long_farm")
HARD_NEGATIVES = ("sleep", "superfan", "viral", "cafe")
LEVELS = ("L0", "L1", "L2")
#: Fewest bot accounts per scenario instance: boosts, click farms, lockstep
#: farms and stuffed playlists are many accounts by nature (issue 11: up to
#: 10,000 accounts on 63 tracks; farms of hundreds).
MIN_BOTS = {"boost": 20, "click_farm": 30, "lockstep": 12, "playlist_stuffing": 10}
#: Plays per bot per day at full activity (roughly; L2 has fewer active hours).
BOT_RATE = {"ai_farm": 600, "loop30": 2000, "boost": 300, "lockstep": 400, "click_farm": 300,
            "vpn_geo": 300, "hijack": 60, "playlist_stuffing": 400, "payout_gaming": 1500, "long_farm": 800}


@dataclass
class Plays:
    """Columns of generated plays (one scenario or hard negative)."""

    account: list = field(default_factory=list)
    ts: list = field(default_factory=list)
    track: list = field(default_factory=list)
    artist: list = field(default_factory=list)
    ms: list = field(default_factory=list)
    ip: list = field(default_factory=list)
    device: list = field(default_factory=list)
    country: list = field(default_factory=list)

    def since(self, t: float) -> "Plays":
        """The plays at or after ``t`` (Unix s), in their order."""
        keep = [i for i, x in enumerate(self.ts) if x >= t]
        return Plays(*([col[i] for i in keep] for col in (self.account, self.ts, self.track, self.artist,
                                                             self.ms, self.ip, self.device, self.country)))

    def extend(self, acc, ts, tracks, ms, ip, dev, ctry):
        """Append n plays of one account (scalars broadcast)."""
        n = len(ts)
        self.account += [acc] * n
        self.ts += list(map(float, ts))
        self.track += list(tracks)
        self.artist += [t.split("::")[0] for t in tracks]
        self.ms += list(map(int, ms))
        for col, v in ((self.ip, ip), (self.device, dev), (self.country, ctry)):
            col += list(v) if isinstance(v, (list, np.ndarray)) else [v] * n


class Context:
    """What scenarios draw from: the background's popular tracks and hour profiles.

    Args:
        rng: random generator.
        popular: popular track ids (``artist::track``), most played first.
        pop_p: their sampling probabilities.
        hour_profiles: (k, 24) hour-of-day distributions of real listeners.
        pool: shared IP pools.
    """

    def __init__(self, rng, popular, pop_p, hour_profiles, pool: IdentityPool):
        self.rng = rng
        self.popular = popular
        self.pop_p = pop_p
        self.hour_profiles = hour_profiles
        self.pool = pool

    def filler(self, n: int) -> list[str]:
        """n popular tracks drawn by popularity."""
        return [self.popular[i] for i in self.rng.choice(len(self.popular), n, p=self.pop_p)]

    def timeline(self, t0: float, t1: float, level: str, ms_fn, *, hours=None) -> tuple[np.ndarray, np.ndarray]:
        """Play end times and lengths (ms) of one bot between t0 and t1.

        ``ms_fn(n)`` draws n play lengths. L0 plays back to back around the
        clock; L1 sleeps 6 h a day (starting 6-18 h after ``t0``) and pauses
        at random; L2 plays sessions on a real hour-of-day profile (``hours``
        overrides it).
        """
        rng = self.rng
        prof = self.hour_profiles[rng.integers(len(self.hour_profiles))] if hours is None else hours
        out_t, out_ms = [], []
        t = t0 + rng.random() * 600
        # L1's 6-h sleep starts 6-18 h into the run (and ends by 24 h): one
        # drawn at any hour could cover the whole of a 6-h run (a lockstep
        # farm of seed 23 then played nothing at all)
        sleep0 = (int(t0 // 3600) + rng.integers(6, 19)) % 24
        while t < t1:
            h = int(t // 3600) % 24
            if level == "L1" and (h - sleep0) % 24 < 6:
                t += 3600
                continue
            if level == "L2":
                if rng.random() > min(1.0, prof[h] * 24 * 0.6):
                    t += 3600 * rng.random()
                    continue
            n = 40
            ms = ms_fn(n)
            gap = {"L0": np.ones(n), "L1": rng.exponential(15, n), "L2": rng.exponential(40, n)}[level]
            if level == "L2":
                gap[rng.random(n) < 0.05] += rng.exponential(1200, int(np.sum(rng.random(n) < 0.05)) or 1)[0]
            ends = t + np.cumsum(ms / 1000.0 + gap)
            keep = ends < t1
            out_t.append(ends[keep])
            out_ms.append(ms[keep])
            t = float(ends[-1])
            if level != "L0" and rng.random() < 0.1:
                t += rng.exponential(1800)
        if not out_t:
            return np.zeros(0), np.zeros(0, np.int64)
        return np.concatenate(out_t), np.concatenate(out_ms).astype(np.int64)


def _payload_share(rng, level: str) -> float:
    """Share of a bot's plays on its payload: L0 all, L1 80 %, L2 10-50 %
    (50-90 % popular filler, issue 11). Draws one uniform at every level."""
    return {"L0": 1.0, "L1": 0.8, "L2": 1.0 - rng.uniform(0.5, 0.9)}[level]


def _mix(ctx: Context, payload: list[str], n: int, level: str, payload_share: float | None = None) -> list[str]:
    """n tracks: payload (cycled at random) mixed with popular filler by level."""
    rng = ctx.rng
    share = _payload_share(rng, level) if payload_share is None else payload_share
    is_pay = rng.random(n) < share
    out = ctx.filler(n)
    pay = [payload[i] for i in rng.integers(0, len(payload), n)]
    return [p if m else f for p, f, m in zip(pay, out, is_pay)]


def _net(ctx: Context, level: str, n: int, shared_ips: list[str], home: dict):
    """IPs, devices, countries of n bot plays: L0 one shared IP, L1 a few,
    L2 a rotating residential-proxy IP and device per ~20 plays."""
    rng = ctx.rng
    if level == "L0":
        return shared_ips[0], home["devices"][0], home["country"]
    if level == "L1":
        return [shared_ips[i] for i in rng.integers(0, min(3, len(shared_ips)), n)], home["devices"][0], home["country"]
    blocks = np.arange(n) // 20
    nb = int(blocks[-1]) + 1 if n else 0
    ips = [rand_ip(rng) for _ in range(nb)]
    devs = [rand_device(rng) for _ in range(max(1, nb // 3))]
    return [ips[b] for b in blocks], [devs[b % len(devs)] for b in blocks], home["country"]


def _bots(ctx: Context, k: int) -> list[tuple[str, dict]]:
    from stream.fraud.identities import rand_account
    return [(rand_account(ctx.rng), ctx.pool.home()) for _ in range(k)]


def _ms_full(rng, lo=150_000, hi=260_000):
    return lambda n: rng.integers(lo, hi, n)


def _ms_3040(rng, level):
    if level == "L0":
        return lambda n: np.full(n, 35_000)
    return lambda n: rng.integers(30_500, 39_500, n)


def generate(name: str, level: str, ctx: Context, t0: float, t1: float, k: int,
             background_accounts: list[str] | None = None, background_plays=None) -> Plays:
    """Plays of scenario ``name`` at ``level`` for ``k`` bots in [t0, t1).

    Args:
        background_accounts, background_plays: for ``hijack``, the real
            accounts to take over and their (ts, country) arrays.

    Raises:
        ValueError: on an unknown scenario or level.
    """
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {SCENARIOS}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose from {LEVELS}")
    rng = ctx.rng
    out = Plays()
    tag = f"{name}{rng.integers(1000, 9999)}"
    shared = [ctx.pool.datacenter[i] for i in rng.choice(len(ctx.pool.datacenter), 6, replace=False)]
    if name == "ai_farm":
        payload = [f"{tag}_artist{a:02d}::ai track {a}-{i}" for a in range(40) for i in range(75)]
        for acc, home in _bots(ctx, k):
            ts, ms = ctx.timeline(t0, t1, level, lambda n: rng.integers(60_000, 150_000, n))
            out.extend(acc, ts, _mix(ctx, payload, len(ts), level), ms, *_net(ctx, level, len(ts), shared, home))
    elif name in ("loop30", "payout_gaming"):
        if name == "loop30":
            payload = [f"{tag}_loops::loop {i}" for i in range(20)]
        else:
            payload = [f"{tag}_label{a}::song {a}-{i}" for a in range(10) for i in range(50)]
        for acc, home in _bots(ctx, k):
            ts, ms = ctx.timeline(t0, t1, level, _ms_3040(rng, level))
            tracks = _mix(ctx, payload, len(ts), level)
            if level != "L0":  # filler plays are heard in full
                fill = np.array([not t.startswith(tag) for t in tracks])
                ms = np.where(fill, rng.integers(120_000, 260_000, len(ms)), ms)
            out.extend(acc, ts, tracks, ms, *_net(ctx, level, len(ts), shared, home))
    elif name in ("boost", "long_farm"):
        payload = [f"{tag}_artist::boosted {i}" for i in range(5)]
        for acc, home in _bots(ctx, k):
            ms_fn = _ms_full(rng) if name == "boost" else _ms_3040(rng, level)
            ts, ms = ctx.timeline(t0, t1, level, ms_fn)
            out.extend(acc, ts, _mix(ctx, payload, len(ts), level), ms, *_net(ctx, level, len(ts), shared, home))
    elif name == "lockstep":
        payload = [f"{tag}_artist::sync {i}" for i in range(15)]
        ts0, ms0 = ctx.timeline(t0, t1, level if level != "L2" else "L1", _ms_full(rng))
        sched = [payload[i] for i in rng.integers(0, len(payload), len(ts0))]
        jit = {"L0": 5, "L1": 60, "L2": 180}[level]
        for acc, home in _bots(ctx, k):
            keep = rng.random(len(ts0)) < (1.0 if level == "L0" else 0.8 if level == "L1" else 0.5)
            ts = ts0[keep] + rng.normal(0, jit, int(keep.sum()))
            tracks = [sched[i] for i in np.flatnonzero(keep)]
            ms = ms0[keep]
            if level == "L2":  # unsynchronised filler between the synchronised plays
                nf = int(len(ts) * rng.uniform(1.0, 4.0))
                tf = rng.uniform(t0, t1, nf)
                ts = np.r_[ts, tf]
                tracks = tracks + ctx.filler(nf)
                ms = np.r_[ms, rng.integers(120_000, 260_000, nf)]
            order = np.argsort(ts)
            out.extend(acc, ts[order], [tracks[i] for i in order], ms[order],
                       *_net(ctx, level, len(ts), shared, home))
    elif name == "click_farm":
        nip = {"L0": 1, "L1": 3, "L2": 6}[level]
        farm_ips = [rand_ip(rng) for _ in range(nip)]
        payload = [f"{tag}_artist::promo {i}" for i in range(10)]
        for acc, home in _bots(ctx, k):
            ts, ms = ctx.timeline(t0, t1, level, _ms_full(rng, 90_000, 200_000))
            ips = [farm_ips[i] for i in rng.integers(0, nip, len(ts))]
            out.extend(acc, ts, _mix(ctx, payload, len(ts), level), ms, ips, home["devices"][0], home["country"])
    elif name == "vpn_geo":
        hop = {"L0": 1800, "L1": 7200, "L2": 5 * 3600}[level]
        payload = [f"{tag}_artist::geo {i}" for i in range(10)]
        for acc, home in _bots(ctx, k):
            ts, ms = ctx.timeline(t0, t1, level, _ms_full(rng))
            seg = ((ts - t0) // hop).astype(int)
            exits = [ctx.pool.vpn[i] for i in rng.integers(0, len(ctx.pool.vpn), int(seg.max()) + 1 if len(seg) else 1)]
            dev = home["devices"][0] if level != "L2" else [rand_device(rng) for _ in range(3)][0]
            out.extend(acc, ts, _mix(ctx, payload, len(ts), level), ms,
                       [exits[s][0] for s in seg], dev, [exits[s][1] for s in seg])
    elif name == "hijack":
        payload = [f"{tag}_artist::stolen {i}" for i in range(10)]
        victims = background_accounts or []
        for acc in victims[:k]:
            hist = background_plays[acc]
            hh = np.bincount(((hist["ts"] // 3600) % 24).astype(int), minlength=24)
            night = int(np.argmin(np.convolve(np.r_[hh, hh[:5]], np.ones(6), "valid")[:24]))
            new_c = str(rng.choice([c for c in COUNTRIES if c != hist["country"]]))
            dev, ip = rand_device(rng), rand_ip(rng)
            hours = {"L0": 6, "L1": 3, "L2": 2}[level]
            day0 = np.floor(t0 / DAY) * DAY
            for d in range(int((t1 - day0) // DAY) + 1):
                s = day0 + d * DAY + night * 3600 + rng.random() * 1200
                if s < t0 or s >= t1:
                    continue
                prof = np.zeros(24)
                prof[:] = 1.0 / 24
                ts, ms = ctx.timeline(s, min(s + hours * 3600, t1), "L0" if level == "L0" else "L1", _ms_full(rng))
                if level == "L2":
                    new_c = hist["country"] if rng.random() < 0.5 else new_c
                    dev = rand_device(rng) if rng.random() < 0.5 else dev
                out.extend(acc, ts, _mix(ctx, payload, len(ts), level), ms, rand_ip(rng) if level == "L2" else ip,
                           dev, new_c)
    elif name == "playlist_stuffing":
        targets = [f"{tag}_artist::stuffed {i}" for i in range(3)]
        popular = ctx.filler(30)
        playlist = popular + targets
        for acc, home in _bots(ctx, k):
            ts, ms = ctx.timeline(t0, t1, level, _ms_full(rng))
            n = len(ts)
            if level != "L2":  # the playlist in its order, over and over
                tracks = [playlist[i % len(playlist)] for i in range(n)]
            else:
                # the targets at L2's payload share (10-50 %, as every other
                # scenario's payload); the rest is the playlist's popular
                # tracks in a shuffled order and popular filler from outside
                # it. Until session 10 the targets kept their 3-in-33 share of
                # the playlist and outside filler diluted it to 4-5 % of plays
                share = _payload_share(rng, level)
                is_target = rng.random(n) < share
                outside = rng.random(n) < rng.uniform(0.3, 0.6)
                order = rng.permutation(len(popular))
                pick = rng.integers(0, len(targets), n)
                fill = ctx.filler(n)
                tracks = [targets[pick[i]] if is_target[i] else fill[i] if outside[i]
                          else popular[order[i % len(popular)]] for i in range(n)]
            out.extend(acc, ts, tracks, ms, *_net(ctx, level, n, shared, home))
    return out


def hard_negative(name: str, ctx: Context, t0: float, t1: float, k: int, casual_accounts=None,
                  fan_accounts=None) -> Plays:
    """Benign hard-negative plays (see module docstring).

    ``superfan``: ``k`` fans replay a new 12-song album in order, 150-250
    plays a day (8-14 h) for 3 days, starting 7-10 h into each day and never
    before the album's release (session 14: on every stream checked, seeds 7,
    11, 83 and 89, all of them started 1-14 h before it, as the album's only
    listeners); each day's replay ends before the next day's starts.
    ``casual_accounts`` (``(account, {"ip", "device", "country"})``) play
    it 1-3 times each from the release on.

    Args:
        casual_accounts: established listeners (home identities) for the
            ``superfan`` and ``viral`` crowds.
        fan_accounts: established listeners (home identities) who are the
            superfans (session 14: a fan has a listening history; until
            then every superfan was a new account that played nothing but
            the album). Fans beyond these are new accounts. A fan among
            ``casual_accounts`` plays no casual plays.

    Raises:
        ValueError: on an unknown name.
    """
    from stream.fraud.identities import rand_account
    rng = ctx.rng
    out = Plays()
    day0 = np.floor(t0 / DAY) * DAY
    ndays = int((t1 - day0) // DAY) + 1
    if name == "sleep":
        playlist = [f"Sleep Sounds {i}::ambient {j}" for i in range(3) for j in range(15)]
        for _ in range(k):
            acc, home = rand_account(rng), ctx.pool.home()
            bed = rng.integers(21, 25)
            for d in range(ndays):
                s = day0 + d * DAY + bed * 3600 + rng.normal(0, 1200)
                ts = s + np.cumsum(rng.integers(300_000, 600_000, 80) / 1000.0)
                ts = ts[(ts < s + 8 * 3600) & (ts >= t0) & (ts < t1)]
                ms = np.r_[np.diff(np.r_[s, ts]) * 1000].astype(np.int64)
                out.extend(acc, ts, [playlist[i] for i in rng.integers(0, len(playlist), len(ts))], ms,
                           home["home_ip"], home["devices"][0], home["country"])
                # daytime listening: a few short sessions
                for _ in range(int(rng.integers(1, 4))):
                    s2 = day0 + d * DAY + rng.uniform(9, 20) * 3600
                    n2 = int(rng.integers(5, 25))
                    m2 = rng.integers(20_000, 250_000, n2)
                    t2 = s2 + np.cumsum(m2 / 1000.0 + rng.exponential(10, n2))
                    sel = (t2 >= t0) & (t2 < t1)
                    out.extend(acc, t2[sel], ctx.filler(int(sel.sum())), m2[sel], home["home_ip"],
                               home["devices"][-1], home["country"])
    elif name == "superfan":
        artist = f"New Album Artist {rng.integers(100)}"  # one artist for the whole album
        album = [f"{artist}::song {i}" for i in range(12)]
        rel = t0 + rng.random() * max(t1 - t0 - 3 * DAY, DAY)
        fans = list(fan_accounts or [])[:k]
        for f in range(k):
            # a new identity is drawn for every fan, established or not, so
            # the other scenarios' plays do not move
            acc, home = rand_account(rng), ctx.pool.home()
            ip, dev, ctry = home["home_ip"], home["devices"][0], home["country"]
            if f < len(fans):
                acc, ip, dev, ctry = fans[f][0], fans[f][1]["ip"], fans[f][1]["device"], fans[f][1]["country"]
            for d in range(3):
                u = rng.uniform(7, 10)
                s = np.floor(rel / DAY) * DAY + d * DAY + u * 3600
                if d == 0:  # not before the release (then 0-3 h after it)
                    s = max(s, rel + (u - 7) * 3600)
                n = int(rng.integers(150, 250))
                ms = rng.integers(150_000, 240_000, n)
                ts = s + np.cumsum(ms / 1000.0 + rng.exponential(5, n))
                sel = (ts >= t0) & (ts < t1) & (ts < np.floor(s / DAY) * DAY + DAY + 7 * 3600)
                out.extend(acc, ts[sel], [album[i % 12] for i in range(int(sel.sum()))], ms[sel], ip, dev, ctry)
        fan_ids = {a for a, _ in fans}
        for acc, home in casual_accounts or []:
            n = int(rng.integers(1, 4))
            ts = rel + rng.exponential(DAY, n)
            sel = ts < t1
            tracks = [album[i] for i in rng.integers(0, 12, int(sel.sum()))]
            ms = rng.integers(100_000, 240_000, int(sel.sum()))
            if acc not in fan_ids:  # (drawn all the same: the other plays do not move)
                out.extend(acc, ts[sel], tracks, ms, home["ip"], home["device"], home["country"])
    elif name == "viral":
        track = f"Viral Newcomer {rng.integers(100)}::the hit"
        rel = t0 + rng.random() * max(t1 - t0 - 2 * DAY, DAY)
        for acc, home in casual_accounts or []:
            n = int(rng.integers(1, 4))
            ts = rel + rng.gamma(2.0, 0.3 * DAY, n)
            sel = ts < t1
            out.extend(acc, ts[sel], [track] * int(sel.sum()), rng.integers(20_000, 200_000, int(sel.sum())),
                       home["ip"], home["device"], home["country"])
    elif name == "cafe":
        playlist = ctx.filler(200)
        for _ in range(k):
            acc, home = rand_account(rng), ctx.pool.home()
            for d in range(ndays):
                if rng.random() < 1 / 7:
                    continue  # closed one day a week
                s = day0 + d * DAY + rng.uniform(7, 9) * 3600
                n = 200
                ms = rng.integers(150_000, 260_000, n)
                ts = s + np.cumsum(ms / 1000.0 + rng.exponential(3, n))
                sel = (ts < s + 10 * 3600) & (ts >= t0) & (ts < t1)
                out.extend(acc, ts[sel], [playlist[i] for i in rng.integers(0, 200, int(sel.sum()))], ms[sel],
                           home["home_ip"], home["devices"][0], home["country"])
    else:
        raise ValueError(f"unknown hard negative {name!r}; choose from {HARD_NEGATIVES}")
    return out


def boost_fans(rng, tracks: list[str], t0: float, t1: float, listeners: list[tuple[str, dict]],
               k_range: tuple[int, int] = (10, 31)) -> Plays:
    """Organic listeners of a paid boost's tracks (benign hard negatives).

    A boost buys plays for an artist's tracks, and the artist's real fans play
    them too: 10-30 accounts of ``listeners`` (established background
    accounts with their home identities), each playing 1-3 plays of the
    boosted tracks at random times in ``[t0, t1)``. Each fan therefore holds
    a subset of the ring's new-track set, as a boost bot that plays its
    payload only a few times does: a detector that names subset holders must
    tell the two apart by something else.

    Args:
        rng: random generator (its own, so the other scenarios' plays do not move).
        tracks: the boosted track ids (``artist::track``).
        t0, t1: window of the fans' plays (Unix s).
        listeners: ``(account, {"ip", "device", "country"})`` candidates.
        k_range: fans drawn from ``[lo, hi)``, at most ``len(listeners)``.

    Raises:
        ValueError: if ``tracks`` is empty or ``t1 <= t0``.
    """
    if not tracks:
        raise ValueError("boost_fans needs the boosted tracks")
    if t1 <= t0:
        raise ValueError(f"empty window: t0={t0}, t1={t1}")
    out = Plays()
    k = min(int(rng.integers(*k_range)), len(listeners))
    for i in rng.choice(len(listeners), k, replace=False).tolist():
        acc, home = listeners[i]
        n = int(rng.integers(1, 4))
        ts = np.sort(rng.uniform(t0, t1, n))
        out.extend(acc, ts, [tracks[j] for j in rng.integers(0, len(tracks), n)],
                   rng.integers(120_000, 240_000, n), home["ip"], home["device"], home["country"])
    return out
