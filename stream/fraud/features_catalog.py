"""Track, artist, lockstep and catalog-side account features (vectorised).

One :class:`CatalogFeatures` per ``plays.by_artist`` partition. It sees every
account's plays of its artists' tracks. Plays with no identity ("Unknown
Artist / Unknown Track" local files, :meth:`PlayBatch.known_identity`) stay out
of track and artist state.

Track and artist state (per entity, O(1)):

* plays today, the decayed weekly baseline (tau 7 d), first-seen time
  (newness);
* unique listeners today and yesterday (HyperLogLog, 64 registers);
* heavy listeners today: accounts whose plays of the entity today reach
  ``heavy_track`` (3) or ``heavy_artist`` (15), counted when an
  (account, entity, day) count-min counter crosses the limit;
* share of plays ending between 30 and 40 s (decayed).

Listener concentration is the share of today's listeners that are heavy:
organic hits have many light listeners, paid boosts and stuffed playlists many
heavy ones, a superfan one heavy listener.

Lockstep: distinct accounts are counted per (track, 10-minute bucket) cell in
rotating count-min sketches (an (account, cell) sketch admits each account once);
a play is a *co-play* when at least ``co_min`` other accounts played the same
track in its bucket and that count is improbable (Poisson tail < ``co_p``) at
the track's own last-hour rate (tau 1 h, the cell's own plays left out), so
popular tracks, viral spikes and album releases do not make co-plays.
Accounts whose plays are mostly co-plays move in lockstep. The first
``co_min`` accounts to reach a cell are never co-plays when they arrive; on a
new track (a farm's payload) an account's last play that was not a co-play is
judged again at its next play, with the accounts that reached its cell by then
(a *late* co-play, session 11; causal, never counting later arrivals).

Catalog-side account state (per account seen by this partition): decayed
plays, co-plays, plays of new cold artists (first seen less than 3 days ago,
after this model's first 3 days so a cold start is not "new", and with fewer
than ``cold_listeners`` unique listeners: a thin-spread AI catalog, not a
release many people hear; only an account's first play of a track each day
counts), and its own 30-40 s plays of artists (with 3+ listeners) whose recent
plays mostly (> ``loop_share``) end at 30-40 s (loop and payout-gaming catalogs)
or of new cold artists (a loop catalog before it has listeners).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from scipy.special import pdtrc

from stream.batch import UNKNOWN_IDS, PlayBatch
from stream.fraud.evidence import binom_llr
from stream.fraud.sketches import HLLBank, RotatingCountMin, combine
from stream.fraud.trackset import SetGroups
from stream.fraud.slots import SlotTable, decay_add, group_index, scatter_add, scatter_max, scatter_min

DAY = 86400.0
TAU_DAY = 12 * 3600.0
TAU_HOUR = 3600.0
TAU_WEEK = 7 * DAY
NEW_S = 3 * DAY
#: The catalog's warm-up (s after its first play): an artist first met in it
#: by an account known for ``KNOWN_ACCOUNT_S`` is one the model had not seen yet
WARM_S = 8 * DAY
KNOWN_ACCOUNT_S = 2 * DAY
TRACKSET_K = 4

_ENT_COLS = {
    "day": ("i4", ()), "plays_day": ("i4", ()), "heavy": ("i4", ()), "first_seen": ("f8", ()),
    "t_ref": ("f8", ()), "base": ("f4", ()), "k3040": ("f4", ()), "n": ("f4", ()), "n1": ("f4", ()),
}
_ACC_COLS = {"t_ref": ("f8", ()), "n": ("f4", ()), "co": ("f4", ()), "co_new": ("f4", ()),
             "newart": ("f4", ()), "newad": ("f4", ()),
             "loopart": ("f4", ()),
             "day": ("i4", ()), "boost": ("f4", ()),
             # new-track set sketch of the day (stream.fraud.trackset) and the
             # day's strongest shared-set evidence (nats, set by the model)
             "ts_sig": ("u8", (TRACKSET_K,)), "ts_day": ("i4", ()), "ts_ev": ("f4", ()),
             # event time of the account's first play seen by this partition
             # (s; 0 = not yet): a ring's quieter bots are accounts made for it
             "born": ("f8", ()),
             # the account stage's network evidence (nats) carried by the
             # account's newest play (``PlayBatch.account_score``; set by the model)
             "acc_ev": ("f4", ()),
             # the day's strongest ring-subset evidence (nats, set by the model)
             "ring_ev": ("f4", ()),
             # the account's last play when it was not (yet) a co-play: track
             # slot, 10-min bucket (0 = none) and event time; judged again at
             # the account's next play (a late co-play, session 11)
             "lc_track": ("i4", ()), "lc_bucket": ("i4", ()), "lc_ts": ("f8", ())}


def _unknown(ids: list[str], slots: np.ndarray) -> np.ndarray:
    """Bool (n,): ids with no identity (in ``UNKNOWN_IDS``, the rule of
    :meth:`PlayBatch.known_identity`), given their track or artist table
    slots (n,) from :meth:`SlotTable.find`. Only ids the table does not hold
    (slot -1) are tested: the tables never hold an id with no identity."""
    out = np.zeros(len(ids), bool)
    miss = np.flatnonzero(slots < 0)
    if len(miss):
        unk = UNKNOWN_IDS.__contains__
        out[miss] = np.fromiter(map(unk, map(ids.__getitem__, miss.tolist())), bool, len(miss))
    return out


class _EntityState:
    """Columns + listener HyperLogLogs for one catalog entity type."""

    def __init__(self, ttl_s: float, hll_p: int):
        self.table = SlotTable(_ENT_COLS, ttl_s)
        self.hll = [HLLBank(hll_p), HLLBank(hll_p)]

    def update(self, ids: list[str] | None, ts, day, acc_hash, pair_count, pair_batch_count, heavy_limit, is3040,
               slots: np.ndarray | None = None):
        """Fold plays in; returns (slots, listeners today+yesterday, heavy today).

        ``slots`` (int64 (n,)), when given, are the plays' entity slots already
        looked up (``ids`` is then not read)."""
        t = self.table
        s = t.lookup(ids) if slots is None else slots
        t.touch(s, ts)
        for b in self.hll:
            b.resize(t.capacity)
        c = t.cols_
        first, uinv, _ = group_index(s)  # per-entity work is order-free: no sort
        us = s[first]
        # newest time and day, oldest time of each entity in the batch
        tmax = np.full(len(us), -np.inf)
        scatter_max(tmax, uinv, ts)
        dmax = (tmax // DAY).astype(np.int64)  # floor is monotone: the newest day
        new = c["first_seen"][us] == 0
        fs = np.full(len(us), np.inf)
        scatter_min(fs, uinv, ts)
        c["first_seen"][us] = np.where(new, fs, c["first_seen"][us])
        roll = dmax > c["day"][us]
        for par in (0, 1):
            self.hll[par].clear(us[roll & ((dmax % 2 == par) | (c["day"][us] < dmax - 1))])
        c["plays_day"][us[roll]] = 0
        c["heavy"][us[roll]] = 0
        c["day"][us[roll]] = dmax[roll]
        # decayed volume and 30-40 s share
        ref = np.maximum(c["t_ref"][us], tmax)
        dt = ref - c["t_ref"][us]
        fw = np.exp(-dt / TAU_WEEK).astype(np.float32)
        fd = np.exp(-dt / TAU_DAY).astype(np.float32)
        fh = np.exp(-dt / TAU_HOUR).astype(np.float32)
        c["t_ref"][us] = ref
        age = ref[uinv] - ts
        wd = np.exp(-age / TAU_DAY)
        decay_add(c["base"], us, fw, uinv, np.exp(-age / TAU_WEEK))
        decay_add(c["n"], us, fd, uinv, wd)
        decay_add(c["n1"], us, fh, uinv, np.exp(-age / TAU_HOUR))
        decay_add(c["k3040"], us, fd, uinv, wd * is3040)
        today = day == c["day"][s]
        scatter_add(c["plays_day"], s[today], 1)
        for par in (0, 1):
            sel = day % 2 == par
            self.hll[par].add(s[sel], acc_hash[sel])
        # heavy listeners: (account, entity, day) counter crossing the limit in this batch
        cross = today & (pair_count >= heavy_limit) & (pair_count - pair_batch_count < heavy_limit)
        if cross.any():
            # one crossing per unique pair: pair_batch_count counts the pair's plays in the batch
            keys = combine(acc_hash[cross], self.table.hash_[s[cross]])
            first_idx = group_index(keys)[0]
            scatter_add(c["heavy"], s[cross][first_idx], 1)
        listeners = self.hll[0].estimate(us, self.hll[1])[uinv]
        heavy = c["heavy"][s].astype(np.float64)
        return s, np.maximum(listeners, heavy), heavy


@nb.njit
def _arrivals_kernel(inv, g, ts, arrivals, out):
    # arrival times grouped by cell (ascending, NaN last), then per play a
    # binary search for the arrivals at or before its time (all for a NaN time)
    start = np.zeros(g + 1, np.int64)
    for k in range(len(arrivals)):
        start[inv[arrivals[k]] + 1] += 1
    for j in range(g):
        start[j + 1] += start[j]
    fill = start[:g].copy()
    times = np.empty(len(arrivals))
    for k in range(len(arrivals)):
        j = inv[arrivals[k]]
        times[fill[j]] = ts[arrivals[k]]
        fill[j] += 1
    for j in range(g):
        lo, hi = start[j], start[j + 1]
        if hi - lo > 32:
            times[lo:hi] = np.sort(times[lo:hi])
        else:  # the usual few arrivals: insertion sort in place, NaN last as np.sort
            for a in range(lo + 1, hi):
                x = times[a]
                b = a - 1
                while b >= lo and (times[b] > x or (np.isnan(times[b]) and not np.isnan(x))):
                    times[b + 1] = times[b]
                    b -= 1
                times[b + 1] = x
    for i in range(len(inv)):
        lo = start[inv[i]]
        hi = start[inv[i] + 1]
        t = ts[i]
        if np.isnan(t):
            out[i] = hi - lo
            continue
        a = lo
        while a < hi:  # first arrival later than t (or NaN)
            mid = (a + hi) // 2
            if times[mid] <= t:
                a = mid + 1
            else:
                hi = mid
        out[i] = a - lo


def _arrivals_before(cells: np.ndarray, ts: np.ndarray, arrivals: np.ndarray) -> np.ndarray:
    """Per play (n,): how many of the batch's new (cell, account) arrivals
    (indices ``arrivals`` into ``cells`` / ``ts``) reached the play's cell at or
    before the play's time (an arrival counts for its own play).

    Args:
        cells: uint64 cell keys (n,); ts: event times (n,) in s;
        arrivals: int indices (m,) of each new (cell, account) pair's first play.

    Returns:
        int64 (n,).
    """
    m, n = len(arrivals), len(cells)
    if m == 0:
        return np.zeros(n, np.int64)
    first, inv, _ = group_index(cells)
    out = np.empty(n, np.int64)
    _arrivals_kernel(inv, len(first), np.asarray(ts, np.float64), np.asarray(arrivals, np.int64), out)
    return out


class CatalogFeatures:
    """Catalog-stage feature state (see module docstring).

    Args:
        ttl_s: inactivity (s) after which an entity's state is dropped.
        heavy_track, heavy_artist: plays per account per day that make a
            heavy listener of a track / an artist.
        co_min: other accounts playing the same track in the same bucket that
            make a co-play (with a Poisson tail below ``co_p``).
        cold_listeners: unique listeners under which a new artist is "cold".
        loop_share: 30-40 s share above which an artist is a loop catalog.
        bucket_s: lockstep bucket length (s).
        hll_p: HyperLogLog precision.
        cms_width: count-min width (power of two).
        co_closed: on a new track, the share of the track's listeners (today
            and yesterday, HyperLogLog) a play's window must hold for a
            co-play: a closed group, not a release's fans in a larger crowd.
        causal: co-play counts see only earlier arrivals in the play's cell
            and the track's previous bucket (default); ``False``: the cell's
            count after the whole batch (the previous model: depends on the
            batch size).
    """

    def __init__(self, ttl_s: float = 7 * DAY, heavy_track: int = 3, heavy_artist: int = 15,
                 co_min: int = 3, co_p: float = 1e-3, cold_listeners: float = 20.0, loop_share: float = 0.3, bucket_s: int = 600, hll_p: int = 6, cms_width: int = 1 << 19,
                 causal: bool = True, co_closed: float = 0.3):
        self.causal = causal
        self.heavy_track = heavy_track
        self.heavy_artist = heavy_artist
        self.co_min = co_min
        self.co_p = co_p
        self.co_closed = co_closed
        self.cold_listeners = cold_listeners
        self.loop_share = loop_share
        self.bucket_s = bucket_s
        self.tracks = _EntityState(ttl_s, hll_p)
        self.artists = _EntityState(ttl_s, hll_p)
        self.accounts = SlotTable(_ACC_COLS, ttl_s)
        self.pair_track = RotatingCountMin(cms_width, 2, k=2)
        self.pair_artist = RotatingCountMin(cms_width, 2, k=2)
        self.coplay = RotatingCountMin(1 << 16, 2, k=4)
        self.coplay_acc = RotatingCountMin(1 << 17, 2, k=4)
        self.trackset = SetGroups(k=TRACKSET_K)
        self.t0_: float = 0.0

    def update(self, batch: PlayBatch) -> dict:
        """Fold ``batch`` in; per-event arrays for the known-identity plays.

        Returns:
            dict with ``idx`` (event indices with identity), ``acc`` (catalog
            account slot per event), ``track``/``artist`` (slots), and per
            event ``track_listeners``, ``track_heavy``, ``artist_listeners``,
            ``artist_heavy``, ``pair_track``, ``pair_artist`` (plays today),
            ``co`` (other plays in the track's bucket), ``new_artist`` (bool);
            per account of ``uacc``, ``acc_tmax`` (its newest play, Unix s).
        """
        # every play's entities as the tables hold them (nothing allocated
        # yet): a known id needs no identity test
        acc = self.accounts.find(batch.account_id)
        ts_slots = self.tracks.table.find(batch.track_id)
        ar_slots = self.artists.table.find(batch.artist_id)
        known = ~(_unknown(batch.artist_id, ar_slots) | _unknown(batch.track_id, ts_slots))
        idx = np.flatnonzero(known)
        ts = np.asarray(batch.ts, np.float64)[idx]
        if self.t0_ == 0.0 and len(ts):
            self.t0_ = float(ts.min())
        rows = None if len(idx) == len(batch) else idx
        if rows is not None:
            acc, ts_slots, ar_slots = acc[idx], ts_slots[idx], ar_slots[idx]
        acc = self.accounts.admit(batch.account_id, acc, rows)
        self.accounts.touch(acc, ts)
        ah = self.accounts.hash_[acc]
        day = (ts // DAY).astype(np.int64)
        ms = np.asarray(batch.ms_played)[idx]
        is3040 = (ms >= 30000) & (ms < 40000)
        # pair counters first (need entity hashes: allocate the entities first)
        ts_slots = self.tracks.table.admit(batch.track_id, ts_slots, rows)
        ar_new = ar_slots < 0
        ar_slots = self.artists.table.admit(batch.artist_id, ar_slots, rows)
        kt = combine(ah, self.tracks.table.hash_[ts_slots])
        ka = combine(ah, self.artists.table.hash_[ar_slots])
        self.pair_track.add(kt, day)
        self.pair_artist.add(ka, day)
        pt = self.pair_track.query(kt, day)
        pa = self.pair_artist.query(ka, day)
        _, kinv, kcnt = group_index(kt)
        a_first, ainv, acnt = group_index(ka)
        s_t, lt, ht = self.tracks.update(None, ts, day, ah, pt, kcnt[kinv], self.heavy_track, is3040, ts_slots)
        s_a, la, ha = self.artists.update(None, ts, day, ah, pa, acnt[ainv], self.heavy_artist, is3040, ar_slots)
        self._known_before(s_a, ar_new, acc, ts)
        # lockstep co-plays: distinct accounts per (track, bucket) cell, judged
        # against the track's own recent rate (Poisson tail)
        bucket = (ts // self.bucket_s).astype(np.int64)
        kc = combine(self.tracks.table.hash_[s_t], bucket.astype(np.uint64))
        hour = bucket * self.bucket_s // 3600
        k3 = combine(kc, ah)
        seen = self.coplay_acc.query(k3, hour)
        self.coplay_acc.add(k3, hour)
        first3 = group_index(k3)[0]  # count-min adds commute: any order
        newcell = first3[seen[first3] == 0]
        # (a batch of local files only has no play to judge)
        late = self._late_coplays(acc, ah, ts, kc, newcell) if self.causal and len(ts) else None
        if self.causal:
            # each play sees only accounts that reached its cell before it (no
            # look-ahead into the rest of the batch: the same evidence whatever
            # the batch size) plus the accounts of the track's previous bucket
            pre = self.coplay.query(kc, hour)
            cnt = pre + _arrivals_before(kc, ts, newcell)
            self.coplay.add(kc[newcell], hour[newcell])
            bprev = bucket - 1
            hprev = bprev * self.bucket_s // 3600
            kp = combine(self.tracks.table.hash_[s_t], bprev.astype(np.uint64))
            own_prev = self.coplay_acc.query(combine(kp, ah), hprev) > 0
            prev = np.maximum(self.coplay.query(kp, hprev) - own_prev, 0)
            cnt = cnt + prev
            # the track's rate (n1) holds the whole batch: leave out the whole
            # window's accounts so far, as the rate does
            cnt_all = self.coplay.query(kc, hour) + prev
            span = self.bucket_s + (ts - bucket * self.bucket_s)
        else:
            self.coplay.add(kc[newcell], hour[newcell])
            cnt = cnt_all = self.coplay.query(kc, hour)
            span = float(self.bucket_s)
        # expected accounts in the window from the track's last-hour rate (tau
        # 1 h, so it follows a release's ramp), without the window's own plays
        co = cnt - 1
        cop = self._coplay(cnt, s_t, cnt_all, span, ts)
        # co-plays on new tracks (first seen < NEW_S ago, after the cold start):
        # a farm's payload; benign clusters co-play on long-known favourites
        tfs = self.tracks.table.cols_["first_seen"][s_t]
        new_track = self._new(tfs, ts)
        co_new = cop & new_track
        # a play judged again at the account's next play in this batch (as one
        # pending from an earlier batch is at its first play here)
        late_in = (self._late_in_batch(acc, ts, kc, newcell, pre, prev, s_t, bucket, cop | ~new_track)
                   if self.causal else np.zeros(len(ts), bool))
        # accounts holding the same set of new tracks today (playlist
        # stuffing): a play joins its set's group while the account is still
        # a light listener of the track (heavy ones are concentration's case)
        set_size = np.zeros(len(ts), np.int64)
        set_key = np.zeros(len(ts), np.uint64)
        jn = np.flatnonzero(new_track)
        if len(jn):
            ca = self.accounts.cols_
            set_key[jn], set_size[jn] = self.trackset.update(
                ca["ts_sig"], ca["ts_day"], acc[jn], ah[jn], ts[jn], self.tracks.table.hash_[s_t[jn]],
                pt[jn] <= self.heavy_track)
        # newness of the artist
        afs = self.artists.table.cols_["first_seen"][s_a]
        # first play today of a track of a new, cold artist (a superfan replaying
        # an album counts each track once a day; a thin-spread farm every play)
        new_cold = self._new(afs, ts) & (la < self.cold_listeners)
        new_artist = new_cold & (pt - kcnt[kinv] < 1)
        # distinct new cold artists: an account's first play of the artist today
        # (once per (account, artist) in the batch). A listener discovering an
        # album finds one new artist; a thin-spread farm a new one every play
        afirst = np.zeros(len(ts), bool)
        afirst[a_first] = True
        new_artist_d = new_cold & afirst & (pa - acnt[ainv] < 1)
        # artists whose recent plays mostly end at 30-40 s (loop / payout catalogs),
        # and any 30-40 s play of a new cold artist: a loop catalog's first plays
        # come before it has 3 listeners and 20 plays, and were lost (an L2
        # looper's 8 loop plays in 52 gave 7.6 nats, not 11.3; session 13)
        ac = self.artists.table.cols_
        an = ac["n"][s_a].astype(np.float64)
        loop_art = (((an >= 20) & (ac["k3040"][s_a] > self.loop_share * an) & (la >= 3)) | new_cold) & is3040
        # catalog-side account counters
        c = self.accounts.cols_
        ua, uinv = np.unique(acc, return_inverse=True)
        tmax = np.full(len(ua), -np.inf)
        scatter_max(tmax, uinv, ts)
        tmin = np.full(len(ua), np.inf)
        scatter_min(tmin, uinv, ts)
        c["born"][ua] = np.where(c["born"][ua] > 0, c["born"][ua], tmin)
        ref = np.maximum(c["t_ref"][ua], tmax)
        f = np.exp(-(ref - c["t_ref"][ua]) / TAU_DAY).astype(np.float32)
        c["t_ref"][ua] = ref
        w = np.exp(-(ref[uinv] - ts) / TAU_DAY)
        decay_add(c["n"], ua, f, uinv, w)
        decay_add(c["co"], ua, f, uinv, w * (cop | late_in))
        decay_add(c["co_new"], ua, f, uinv, w * (co_new | late_in))
        if late is not None:
            self._settle_late(late, ua, uinv, ts, s_t, bucket, cop, new_track)
        decay_add(c["newart"], ua, f, uinv, w * new_artist)
        decay_add(c["newad"], ua, f, uinv, w * new_artist_d)
        decay_add(c["loopart"], ua, f, uinv, w * loop_art)
        return dict(idx=idx, acc=acc, uacc=ua, uinv=uinv, track=s_t, artist=s_a, ts=ts, day=day,
                    track_listeners=lt, track_heavy=ht, artist_listeners=la, artist_heavy=ha,
                    pair_track=pt, pair_artist=pa, co=co, coplay=cop, cokey=kc, new_artist=new_artist,
                    set_size=set_size, set_key=set_key, acc_tmax=tmax)

    def _known_before(self, s_a: np.ndarray, ar_new: np.ndarray, acc: np.ndarray, ts: np.ndarray) -> None:
        """Date back to the model's start the artists (slots ``s_a`` (n,),
        ``ar_new`` (n,) bool: first met in this batch) that an account known
        for ``KNOWN_ACCOUNT_S`` or more brought in during the warm-up
        (``WARM_S``): the model had not seen them yet, they are not new. A
        niche listener's catalog shows up artist by artist in the model's
        first days: on held-out seed 53 (session 12) seven clones of one
        such listener alerted on ``new_artists`` on days 4-6 of the stream.
        A farm's accounts are new to the model, so its artists stay new."""
        if not ar_new.any() or ts.min() >= self.t0_ + WARM_S:
            return
        born = self.accounts.cols_["born"][acc]
        old = ar_new & (born > 0) & (ts - born >= KNOWN_ACCOUNT_S) & (ts < self.t0_ + WARM_S)
        if old.any():
            self.artists.table.cols_["first_seen"][s_a[old]] = self.t0_

    def _new(self, first_seen: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """bool (n,): entities first seen at ``first_seen`` (Unix s, (n,))
        that are new at ``ts`` (Unix s, (n,)): first seen less than
        ``NEW_S`` ago, after this model's own first ``NEW_S`` (a cold
        start's first sightings were played before the model started)."""
        return (ts - first_seen < NEW_S) & (first_seen > self.t0_ + NEW_S)

    def _coplay(self, cnt, tr, cnt_out, span, ts) -> np.ndarray:
        """Co-play test, bool (n,): ``cnt`` accounts in a play's window (its
        own included) are ``co_min``+ others and improbable (Poisson tail <
        ``co_p``) at the last-hour rate of the play's track (slots ``tr``:
        decayed plays ``n1``, tau 1 h) without the window's own ``cnt_out``
        accounts, over ``span`` seconds ending at the play's time ``ts``
        (Unix s) (float (n,) each).

        A track first seen in this model's first ``NEW_S`` (not new: it was
        played before the model started) has no co-plays while a window
        opens less than ``TAU_HOUR`` after its first sighting: its rate
        starts at zero, so it looked rare (session 14: on held-out seed 89,
        9-24 clones of a real listener who loops one track "co-played" it in
        the background's first 50 minutes, and two of them alerted on
        ``coplay_share``). A new track's rate before its first play is zero
        indeed: a farm's payload is judged from its first plays.

        On a new track the window's accounts must also be ``co_closed`` or
        more of the track's listeners of today and yesterday (session 14):
        a lockstep farm is most of its payload's audience (median 60 % at
        L2), six superfans replaying a new album in order in a crowd of 30
        of its listeners are a fifth of it, and their chance alignments
        (two fans share a 20-minute window of a 42-minute album half the
        time) gave one of them 32 nats of ``coplay_share``."""
        c = self.tracks.table.cols_
        ts = np.asarray(ts, np.float64)
        lam = np.maximum((np.asarray(c["n1"][tr], np.float64) - cnt_out) / TAU_HOUR * span, 0.0) + 0.05
        fs = c["first_seen"][tr]
        unknown = (fs <= self.t0_ + NEW_S) & (ts - span < fs + TAU_HOUR)
        cop = (cnt - 1 >= self.co_min) & ~unknown
        if cop.any():  # Poisson tail P(X >= cnt) = poisson.sf(cnt - 1, lam) = pdtrc(cnt - 1, lam)
            j = np.flatnonzero(cop)
            cop[j] = pdtrc((cnt[j] - 1).astype(np.float64), lam[j]) < self.co_p
        new = cop & self._new(fs, ts)
        if new.any():
            j = np.flatnonzero(new)
            listeners = self.tracks.hll[0].estimate(np.asarray(tr)[j], self.tracks.hll[1])
            cop[j] = cnt[j] >= self.co_closed * listeners
        return cop

    def _late_coplays(self, acc, ah, ts, kc, newcell) -> dict:
        """Judge each account's pending play (its last play, which was not a
        co-play when it arrived) again at the account's first play of this
        batch: the accounts that reached the pending play's cell since then
        count too. A farm's first three arrivals in a cell are never
        co-plays when they arrive (fewer than ``co_min`` others before them),
        though the cell fills within minutes; judged again at their next play
        they are (late co-plays, session 11). Causal: the count holds the
        arrivals before the account's first play of this batch, never later
        ones. Called before this batch's arrivals enter the cell counts.

        Pending plays are on new tracks only (:meth:`_settle_late` keeps no
        other): benign clones of one listener fill the cells of its
        long-known favourites one after another.

        Returns:
            dict: ``rows`` the table rows of the batch's accounts, ``first``
            their first play's index in the batch, ``hit`` the rows whose
            pending play is now a co-play.
        """
        c = self.accounts.cols_
        first = group_index(acc)[0]
        rows = acc[first]
        pend = np.flatnonzero(c["lc_bucket"][rows] > 0)
        if not len(pend):
            return {"rows": rows, "first": first, "hit": np.zeros(0, np.int64)}
        r = rows[pend]
        qt = ts[first[pend]]
        b = c["lc_bucket"][r].astype(np.int64)
        # only a cell still in the rotating counts (this hour or the last)
        fresh = (qt // self.bucket_s).astype(np.int64) - b <= 2
        r, qt, b, pend = r[fresh], qt[fresh], b[fresh], pend[fresh]
        tr = c["lc_track"][r].astype(np.int64)
        th = self.tracks.table.hash_[tr]
        qk = combine(th, b.astype(np.uint64))
        hour = b * self.bucket_s // 3600
        bp = b - 1
        hp = bp * self.bucket_s // 3600
        kp = combine(th, bp.astype(np.uint64))
        own_prev = self.coplay_acc.query(combine(kp, ah[first[pend]]), hp) > 0
        counted = self.coplay.query(qk, hour) + np.maximum(self.coplay.query(kp, hp) - own_prev, 0)
        co = self._judge_late(qk, qt, b, tr, counted, kc, ts, newcell)
        return {"rows": rows, "first": first, "hit": r[co]}

    def _judge_late(self, cells, q, b, tr, counted, kc, ts, newcell) -> np.ndarray:
        """Co-play test (:meth:`_coplay`), bool (m,), of m plays judged again
        at times ``q`` (s, (m,)): plays in ``cells`` (uint64 (m,)) of bucket
        ``b`` on track slots ``tr``, whose cells held ``counted`` accounts
        before this batch (the previous bucket's others included, int (m,)),
        plus this batch's arrivals (``newcell`` into ``kc`` / ``ts``) in the
        cell at or before ``q`` (only the arrivals in the judged cells are
        sorted)."""
        before = np.zeros(len(cells), np.int64)
        mine = newcell[np.isin(kc[newcell], cells)]
        if len(mine):
            before = _arrivals_before(np.r_[kc[mine], cells], np.r_[ts[mine], q], np.arange(len(mine)))[len(mine):]
        cnt = counted + before
        span = np.minimum(q, (b + 1) * self.bucket_s) - (b - 1) * self.bucket_s
        return self._coplay(cnt, tr, cnt, span, q)

    def _late_in_batch(self, acc, ts, kc, newcell, pre, prev, s_t, bucket, skip) -> np.ndarray:
        """Late co-plays inside a batch, bool (n,): a play (not ``skip``: a
        co-play on arrival, or not on a new track) judged again at the
        account's next play in the same batch, counting the accounts that
        reached its cell by then (``pre``: the cell's count before the batch,
        ``prev``: the previous bucket's other accounts, int (n,) each).
        With :meth:`_late_coplays` (a batch's last play judged at the
        account's first play of a later batch) every play is judged at the
        account's next play wherever the batch boundaries fall: the same
        counts as play-by-play processing. Until session 12 a play and the
        next one in the same batch were not judged against each other, so
        300-s batches (``playguard eval``) credited fewer late co-plays than
        the worker's micro-batches."""
        hit = np.zeros(len(ts), bool)
        o = np.lexsort((ts, acc))
        same = acc[o][1:] == acc[o][:-1]
        nxt = np.full(len(ts), -1, np.int64)
        nxt[o[:-1][same]] = o[1:][same]
        i = np.flatnonzero((nxt >= 0) & ~skip)
        # only a cell still in the rotating counts (this hour or the last)
        i = i[(ts[nxt[i]] // self.bucket_s).astype(np.int64) - bucket[i] <= 2]
        if not len(i):
            return hit
        hit[i] = self._judge_late(kc[i], ts[nxt[i]], bucket[i], s_t[i], pre[i] + prev[i], kc, ts, newcell)
        return hit

    def _settle_late(self, late, ua, uinv, ts, s_t, bucket, cop, new_track) -> None:
        """Credit late co-plays into ``co`` / ``co_new`` (decayed from their own
        time, as every play's counts) and keep each account's newest play of
        the batch as its pending play when it is on a new track and was not
        a co-play."""
        c = self.accounts.cols_
        hit = late["hit"]
        if len(hit):
            w = np.exp(-(c["t_ref"][hit] - c["lc_ts"][hit]) / TAU_DAY)
            c["co"][hit] += w
            c["co_new"][hit] += w
        c["lc_bucket"][late["rows"]] = 0
        o = np.lexsort((ts, uinv))
        last = o[np.r_[uinv[o][1:] != uinv[o][:-1], True]]
        keep = last[~cop[last] & new_track[last]]
        r = ua[uinv[keep]]
        c["lc_track"][r] = s_t[keep]
        c["lc_bucket"][r] = bucket[keep]
        c["lc_ts"][r] = ts[keep]

    def concentration_llr(self, heavy: np.ndarray, listeners: np.ndarray, p0: float, min_heavy: int) -> np.ndarray:
        """Binomial LLR that the heavy share of listeners exceeds ``p0``,
        0 below ``min_heavy`` heavy listeners (shape of ``heavy``)."""
        llr = binom_llr(heavy, np.maximum(listeners, heavy), p0)
        return np.where(heavy >= min_heavy, llr, 0.0)

    def expire(self, now: float) -> None:
        """Drop entities idle for ``ttl_s`` (and clear their listener sketches)."""
        for ent in (self.tracks, self.artists):
            ent.table.expire(now)
            for b in ent.hll:
                b.clear(ent.table.last_expired_)
        self.accounts.expire(now)

    def nbytes(self) -> int:
        """Bytes held, with sketches."""
        b = self.accounts.nbytes()
        for ent in (self.tracks, self.artists):
            b += ent.table.nbytes() + sum(h.reg_.nbytes for h in ent.hll)
        for r in (self.pair_track, self.pair_artist, self.coplay, self.coplay_acc):
            b += sum(x.nbytes() for x in r.banks)
        return b + self.trackset.nbytes()

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able)."""
        return {
            "tracks": self.tracks.table.state_dict(), "track_hll": [h.reg_ for h in self.tracks.hll],
            "artists": self.artists.table.state_dict(), "artist_hll": [h.reg_ for h in self.artists.hll],
            "accounts": self.accounts.state_dict(),
            "pair_track": self.pair_track.state_dict(), "pair_artist": self.pair_artist.state_dict(),
            "coplay": self.coplay.state_dict(), "coplay_acc": self.coplay_acc.state_dict(), "t0": self.t0_,
            "trackset": self.trackset.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.tracks.table.load_state_dict(state["tracks"])
        self.artists.table.load_state_dict(state["artists"])
        for h, r in zip(self.tracks.hll, state["track_hll"]):
            h.reg_ = np.asarray(r, np.uint8).copy()
        for h, r in zip(self.artists.hll, state["artist_hll"]):
            h.reg_ = np.asarray(r, np.uint8).copy()
        self.accounts.load_state_dict(state["accounts"])
        if "born" not in state["accounts"]["cols"]:
            # a snapshot from before session 11: its accounts' first sightings
            # are unknown, so they count as long known, never as new
            c = self.accounts.cols_
            c["born"][self.accounts.live_] = 1.0
        self.pair_track.load_state_dict(state["pair_track"])
        self.pair_artist.load_state_dict(state["pair_artist"])
        self.coplay.load_state_dict(state["coplay"])
        self.coplay_acc.load_state_dict(state["coplay_acc"])
        self.t0_ = float(state["t0"])
        if "trackset" in state:  # snapshots before the shared-set groups start empty
            self.trackset.load_state_dict(state["trackset"])
