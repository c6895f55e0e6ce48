"""Account, IP and device feature state of the account stage (vectorised).

One :class:`AccountFeatures` per ``plays`` partition. ``update(batch)`` folds a
micro-batch into per-account columns with grouped numpy operations (no
per-event Python state churn) and returns the features of the accounts it
touched. Counters decay exponentially in event time (half-life style
``exp(-dt / tau)``), so each account holds O(1) state; accounts, IPs and
devices idle for ``ttl_s`` are dropped.

Account features (per touched account, after the batch):

==========================  ===================================================
``plays_1h`` / ``plays_12h``  decayed plays, tau 1 h / 12 h (plays per hour / day)
``share_30_40``             share of plays that ended between 30 and 40 s
``skip_rate``               share of plays under 30 s (or flagged skipped)
``completion``              mean ``ms_played / track_duration`` when known
``distinct_ratio``          distinct tracks today / plays today (linear counting)
``repeat_ratio``            1 - distinct_ratio
``gap_cv``                  coefficient of variation of gaps between play ends
                            (gaps under 1 h), tau 12 h
``active_hours_24h``        hours of the last 24 with a play
``hour_entropy``            entropy (bits) of the decayed hour-of-day histogram
``new_device_plays``        plays from a device first seen < 24 h ago on an
                            account older than 2 days (tau 12 h)
``new_ip_plays``            same for IPs; ``new_country_plays`` for countries
``odd_hour_new_device``     sum over plays from a stranger's device (below; at
                            any age of the device, on an IP new to the account)
                            of the hour's surprise ``max(0, -ln p(hour) - ln 24)``
``new_identity_plays``      plays from a new identity abroad: a stranger's
                            device (first seen from a new IP in a new country,
                            or on a new IP no other account uses; a device
                            first seen at a known place is the owner's), on a
                            new IP, in a new country where none of the owner's
                            devices has played (else a trip or a VPN exit).
                            A stranger's device on a new IP of its own in a
                            country of the owner's adds to
                            ``odd_hour_new_device`` only. Both are weighted
                            by ``1 - exp(-m / OWNER_PLAYS_SURE)``, m the owner's
                            weekly-decayed plays: an owner seen over a few
                            plays may own a device not seen yet
``overlaps``                plays starting > 60 s before the previous play ended
                            on another device (two streams at once), tau 12 h
``country_switches``        consecutive plays < 30 min apart in different
                            countries (travel speed beyond flight), tau 12 h
``ips_24h`` / ``devices_24h`` / ``countries_24h``  distinct IPs, devices
                            and countries of the account in the last 18-24 h
                            (64-bit linear-counting bitmaps, one per 6-h block,
                            4 blocks in a ring: a run that straddles midnight
                            is not split in two, as it was with UTC-day counts)
``ip_accounts`` / ``device_accounts``  distinct accounts (HyperLogLog, today and
                            yesterday) of the IP / device of the account's
                            newest play in the batch
``ip_set_accounts``         most accounts seen today sharing the account's set
                            of 2+ IPs of the day (bottom-3 MinHash key,
                            :class:`stream.fraud.trackset.SetGroups`, counted
                            over the last 12-24 h): phones of a farm behind a
                            few IPs all rotate over the same ones, while a
                            listener's home line makes its set its own
``new_lonely_ips``          IPs the account took into its memory (first
                            sighting, or back after eviction) that no other
                            account used today or yesterday, at any account
                            age, tau 12 h: a residential-proxy rotation
``new_countries_7d``        countries the account took into its 3-country
                            memory on an IP new to it (< 24 h), at any
                            account age, tau 7 d: home, a trip
                            and a favourite VPN exit or two stay in it; a bot
                            hopping between VPN exits takes in one every hop
==========================  ===================================================

IP and device state lives here, keyed by hashed IP / device. With N workers,
each worker sees only the accounts of its own ``plays`` partitions, so its
HyperLogLog counts about 1/N of an IP's accounts (CONVENTIONS.md): the
``ip_accounts`` thresholds must be read per worker, and so must the
``ip_set_accounts`` groups (a farm of 27 phones on 8 partitions shows
about 3 per worker).
"""

from __future__ import annotations

import zlib
from itertools import repeat

import numba as nb
import numpy as np

from stream.batch import PlayBatch
from stream.fraud.sketches import HLLBank, bitmap_set, linear_count, mix64
from stream.fraud.slots import (
    SlotTable,
    decay_add,
    scatter_add,
    scatter_add2,
    scatter_max,
    scatter_max2,
    scatter_min,
)
from stream.fraud.trackset import SetGroups

HOUR = 3600.0
DAY = 86400.0
TAU_SHORT = 3600.0
TAU_DAY = 12 * 3600.0
TAU_WEEK = 7 * 86400.0
#: Consecutive plays in different countries closer than this (s) are an
#: impossible journey (no flight is that fast between most country pairs).
TRAVEL_GAP_S = 1800.0
#: Distinct accounts (today + yesterday, per worker) up to which an IP is an
#: account's own (a home or a stranger's line; a carrier NAT has dozens).
LONELY_IP_ACCOUNTS = 2.5
#: hours a remembered IP of the account's own is kept beyond shared ones
OWN_HOLD_H = 48.0
#: Account age (s of event time since its first play) before a device, IP or
#: country can be "new" to it: a new account's first values are its own.
IDENTITY_AGE_S = 2 * 86400.0
#: Plays on the owner's identities (weekly decayed) over which a new device's
#: evidence comes to full weight (1 - exp(-plays / this)): 63 % at 15 plays,
#: 95 % at 45 (30 tried: hijack time to detect +2-7 min for little more)
OWNER_PLAYS_SURE = 15.0
#: Identity windows (distinct IPs / devices / countries): a ring of
#: ``WIN_BLOCKS`` bitmaps of ``WIN_BLOCK_S`` seconds each; the window is the
#: current block and the ``WIN_BLOCKS - 1`` before it (18-24 h).
WIN_BLOCK_S = 6 * 3600.0
WIN_BLOCKS = 4
#: IPs per account-day IP-set sketch (sets of up to 3 IPs compare exactly).
IPSET_K = 3

#: Names of the feature columns returned by :meth:`AccountFeatures.update`.
FEATURE_NAMES = (
    "plays_1h", "plays_12h", "share_30_40", "skip_rate", "completion", "distinct_ratio",
    "repeat_ratio", "gap_cv", "active_hours_24h", "hour_entropy", "new_device_plays",
    "new_ip_plays", "new_country_plays", "odd_hour_new_device", "new_identity_plays", "overlaps",
    "country_switches", "ip_accounts", "device_accounts", "ips_24h", "devices_24h", "countries_24h",
    "ip_set_accounts", "new_lonely_ips", "new_countries_7d",
)

_ACCOUNT_COLS = {
    "t_ref": ("f8", ()), "first_seen": ("f8", ()),
    "n1": ("f4", ()), "n12": ("f4", ()), "k3040": ("f4", ()), "kshort": ("f4", ()),
    "comp_n": ("f4", ()), "comp_s": ("f4", ()),
    "gap_n": ("f4", ()), "gap_s1": ("f4", ()), "gap_s2": ("f4", ()),
    "newdev": ("f4", ()), "newip": ("f4", ()), "newctry": ("f4", ()), "oddhour": ("f4", ()), "newall": ("f4", ()),
    "ovl": ("f4", ()), "travel": ("f4", ()),
    "hour_hist": ("f4", (24,)), "hour_seen": ("i4", (24,)),
    "last_ts": ("f8", ()), "last_end": ("f8", ()), "last_dev": ("u4", ()), "last_ctry": ("u4", ()),
    "dev": ("u4", (3,)), "dev_t": ("f8", (3,)), "ip": ("u4", (3,)), "ip_t": ("f8", (3,)),
    "ctry": ("u4", (3,)), "ctry_t": ("f8", (3,)),
    "dev_seen": ("f4", (3,)), "ip_seen": ("f4", (3,)), "ctry_seen": ("f4", (3,)),
    "day": ("i4", ()), "day_plays": ("i4", ()), "day_bits": ("u8", (4,)),
    "win_blk": ("i4", ()), "win_ipbits": ("u8", (WIN_BLOCKS,)), "win_devbits": ("u8", (WIN_BLOCKS,)),
    "win_ctrybits": ("u8", (WIN_BLOCKS,)),
    "last_ipslot": ("i8", ()), "last_devslot": ("i8", ()),
    "dev_odd": ("u1", (3,)), "ctry_own": ("u1", (3,)),
    # per remembered IP: a line of the account's own (no other account on it),
    # and a line one of the owner's devices has played from (session 12)
    "ip_own": ("u1", (3,)), "ip_vouch": ("u1", (3,)),
    # IP set of the day (bottom-k sketch, its day) and its largest group today
    "ipset_sig": ("u8", (IPSET_K,)), "ipset_day": ("i4", ()), "ipset_n": ("f4", ()),
    "newlonely": ("f4", ()), "newctry_w": ("f4", ()),
}
_NET_COLS = {"day": ("i4", ()), "plays": ("f4", ()), "t_ref": ("f8", ())}


def _crc(values, cache: dict | None = None) -> np.ndarray:
    """CRC-32 of strings (odd; 0 for None / empty), uint32 array (n,).

    ``cache`` (str -> hash) avoids re-hashing the same ids batch after batch;
    it is emptied when it passes 200,000 entries.
    """
    n = len(values)
    # column absent: every value None. The first value settles most columns
    # (list.count compares a string with None slowly)
    if isinstance(values, list) and (n == 0 or values[0] is None) and values.count(None) == n:
        return np.zeros(n, np.uint32)
    if cache is None:
        return np.fromiter((zlib.crc32(v.encode()) | 1 if v else 0 for v in values), np.uint32, n)
    out = np.fromiter(map(cache.get, values, repeat(-1, n)), np.int64, n)
    miss = np.flatnonzero(out < 0)
    if len(miss):
        if len(cache) > 200_000:
            cache.clear()
        cache[None] = 0
        cache[""] = 0
        crc = zlib.crc32
        vals = [values[j] for j in miss.tolist()]
        h = [crc(v.encode()) | 1 if v else 0 for v in vals]
        cache.update(zip(vals, h))
        out[miss] = h
    return out.astype(np.uint32)


def _crc_str(values: list[str]) -> np.ndarray:
    """:func:`_crc` of a column that holds no ``None`` (track ids), uint32
    array (n,), with no cache: one C-level CRC per value. On a stream of
    many distinct ids this costs less than probing a large cache, whose
    entries are scattered in memory."""
    n = len(values)
    h = np.fromiter(map(zlib.crc32, map(str.encode, values)), np.uint32, n)
    zero = np.flatnonzero(h == 0)  # crc32(b"") == 0: the empty id keeps hash 0
    h |= np.uint32(1)
    if len(zero):
        h[[i for i in zero.tolist() if not values[i]]] = 0
    return h


@nb.njit
def _slot_index(vals, a, h, out):
    """``out[i]``: the column where account ``a[i]`` keeps value ``h[i]``
    among its recent values (``vals`` (capacity, k), values unique per row),
    -1 when absent."""
    for i in range(len(a)):
        s = a[i]
        out[i] = -1
        for j in range(vals.shape[1]):
            if vals[s, j] == h[i]:
                out[i] = j
                break


@nb.njit
def _touch_seen(seen, a, col, hours):
    """``seen[a[i], col[i]] = max(seen[a[i], col[i]], hours[i])`` where
    ``col[i] >= 0``: the last sighting (hours since the epoch) of a value."""
    for i in range(len(a)):
        j = col[i]
        if j >= 0 and hours[i] > seen[a[i], j]:
            seen[a[i], j] = hours[i]


class AccountFeatures:
    """Per-account, per-IP and per-device feature state (see module docstring).

    Args:
        ttl_s: event-time inactivity (s) after which an entity's state is dropped.
        hll_p: HyperLogLog precision of the IP / device distinct-account sketches.
        identity_age_s: account age (s of event time since its first play)
            before a device, IP or country can be new to it.

    Example:
        >>> from stream.batch import PlayBatch
        >>> rows = [dict(event_id=str(i), ts=1.7e9 + 35 * i, account_id="a", track_id="t",
        ...              artist_id="x", ms_played=35000, ip="10.0.0.1") for i in range(20)]
        >>> f = AccountFeatures()
        >>> slots, X, _ = f.update(PlayBatch.from_dicts(rows))
        >>> round(float(X[0, FEATURE_NAMES.index("share_30_40")]), 2)
        1.0
    """

    def __init__(self, ttl_s: float = 7 * 86400, hll_p: int = 6, identity_age_s: float = IDENTITY_AGE_S):
        self.identity_age_s = float(identity_age_s)
        self.accounts = SlotTable(_ACCOUNT_COLS, ttl_s)
        self.ips = SlotTable(_NET_COLS, ttl_s)
        self.devices = SlotTable(_NET_COLS, ttl_s)
        self.hll_p = hll_p
        self.ip_hll = [HLLBank(hll_p), HLLBank(hll_p)]  # by day parity
        self.dev_hll = [HLLBank(hll_p), HLLBank(hll_p)]
        self._hcache: dict = {None: 0, "": 0}
        self.ipsets = SetGroups(k=IPSET_K)

    # ------------------------------------------------------------------ update
    def update(self, batch: PlayBatch) -> tuple[np.ndarray, np.ndarray, dict]:
        """Fold ``batch`` into the state.

        Returns:
            ``(slots, X, aux)``: unique account slots touched (m,), features
            float64 (m, len(FEATURE_NAMES)), and ``aux`` with per-event arrays
            ``event_slot`` (n,), ``inv`` (n,) index of each event's account in
            ``slots``, and ``ip_accounts_event`` (n,).
        """
        n = len(batch)
        A = self.accounts
        ts = np.asarray(batch.ts, np.float64)
        a = A.lookup(batch.account_id)
        A.touch(a, ts)
        ms = np.asarray(batch.ms_played, np.int64)
        end = ts
        start = ts - ms / 1000.0
        dev = _crc(batch.device_id, self._hcache)
        ipc = _crc(batch.ip, self._hcache)
        ctry = _crc(batch.country, self._hcache)
        trk = _crc_str(batch.track_id)
        order = np.lexsort((ts, a))
        a_s, ts_s, st_s, dev_s, ctry_s = a[order], ts[order], start[order], dev[order], ctry[order]
        first = np.ones(n, bool)
        first[1:] = a_s[1:] != a_s[:-1]
        slots, inv = np.unique(a, return_inverse=True)
        c = A.cols_
        new_acc = c["first_seen"][slots] == 0
        # first_seen: min ts of the account in this batch when new
        fs = np.full(len(slots), np.inf)
        scatter_min(fs, inv, ts)
        c["first_seen"][slots] = np.where(new_acc, fs, c["first_seen"][slots])
        # ---- decay to a per-account reference time
        tmax = np.full(len(slots), -np.inf)
        scatter_max(tmax, inv, ts)
        ref = np.maximum(c["t_ref"][slots], tmax)
        # decay factors from each account's t_ref to ref; every decayed column
        # is decayed and added to in one pass (decay_add), hour_hist here
        dt = np.maximum(ref - c["t_ref"][slots], 0.0)
        f1 = np.exp(-dt / TAU_SHORT).astype(np.float32)
        fd = np.exp(-dt / TAU_DAY).astype(np.float32)
        fw = np.exp(-dt / TAU_WEEK).astype(np.float32)
        c["hour_hist"][slots] = c["hour_hist"][slots] * fw[:, None]
        c["t_ref"][slots] = ref
        age = ref[inv] - ts
        w1 = np.exp(-age / TAU_SHORT)
        wd = np.exp(-age / TAU_DAY)
        ww = np.exp(-age / TAU_WEEK)
        m = len(slots)

        def add(name, weights, f=fd):
            decay_add(c[name], slots, f, inv, weights)

        add("n1", w1, f1)
        add("n12", wd)
        is3040 = (ms >= 30000) & (ms < 40000)
        skipped = np.asarray(batch.skipped)
        short = (ms < 30000) | (skipped == 1)
        add("k3040", wd * is3040)
        add("kshort", wd * short)
        dur = np.asarray(batch.track_duration_ms, np.int64)
        known = dur > 0
        add("comp_n", wd * known)
        add("comp_s", wd * np.where(known, np.minimum(ms / np.maximum(dur, 1), 1.0), 0.0))
        # ---- hour of day
        hour_idx = (ts // HOUR).astype(np.int64)
        hod = hour_idx % 24
        # the hour-of-day profile is learned after the novelty checks below
        # (plays from a new device + IP + country stay out of it)
        scatter_max2(c["hour_seen"], a, hod, hour_idx.astype(np.int32))
        # ---- distinct tracks today (linear-counting bitmap of 256 bits)
        day = (ts // DAY).astype(np.int32)
        dmax = (tmax // DAY).astype(np.int64)  # newest day of each account (floor is monotone)
        roll = dmax > c["day"][slots]
        rs = slots[roll]
        c["day"][rs] = dmax[roll]
        c["day_plays"][rs] = 0
        c["day_bits"][rs] = 0
        today = day == c["day"][a]
        at = a[today]
        scatter_add(c["day_plays"], at, 1)
        bit = (mix64(trk.astype(np.uint64)) & np.uint64(255)).astype(np.int64)
        bitmap_set(c["day_bits"], at, bit[today])
        self._window_bits(a, slots, inv, ts, ((ipc, "win_ipbits"), (dev, "win_devbits"), (ctry, "win_ctrybits")))
        # ---- sequences: gaps, overlaps, travel (sorted by account, ts)
        prev_ts = np.empty(n)
        prev_end = np.empty(n)
        prev_dev = np.empty(n, np.uint32)
        prev_ctry = np.empty(n, np.uint32)
        prev_ts[1:], prev_end[1:], prev_dev[1:], prev_ctry[1:] = ts_s[:-1], ts_s[:-1], dev_s[:-1], ctry_s[:-1]
        fa = a_s[first]
        prev_ts[first], prev_end[first] = c["last_ts"][fa], c["last_end"][fa]
        prev_dev[first], prev_ctry[first] = c["last_dev"][fa], c["last_ctry"][fa]
        has_prev = prev_ts > 0
        gap = ts_s - prev_ts
        okgap = has_prev & (gap >= 0) & (gap < HOUR)
        wd_s = wd[order]
        inv_s = inv[order]
        def add_s(name, wts):  # weights in (account, ts) order
            decay_add(c[name], slots, fd, inv_s, wts)

        add_s("gap_n", wd_s * okgap)
        add_s("gap_s1", wd_s * np.where(okgap, gap, 0.0))
        add_s("gap_s2", wd_s * np.where(okgap, gap * gap, 0.0))
        ovl = has_prev & (st_s < prev_end - 60.0) & (dev_s != prev_dev) & (dev_s != 0) & (prev_dev != 0)
        add_s("ovl", wd_s * ovl)
        trav = has_prev & (gap < TRAVEL_GAP_S) & (ctry_s != prev_ctry) & (ctry_s != 0) & (prev_ctry != 0)
        add_s("travel", wd_s * trav)
        last = np.ones(n, bool)
        last[:-1] = a_s[1:] != a_s[:-1]
        la = a_s[last]
        newer = ts_s[last] >= c["last_ts"][la]
        c["last_ts"][la[newer]] = ts_s[last][newer]
        c["last_end"][la[newer]] = ts_s[last][newer]
        c["last_dev"][la[newer]] = dev_s[last][newer]
        c["last_ctry"][la[newer]] = ctry_s[last][newer]
        # ---- IP / device fan-in (distinct accounts, today + yesterday)
        ip_acc_ev = self._fanin(self.ips, self.ip_hll, batch.ip, ipc, a, ts, day)
        dev_acc_ev = self._fanin(self.devices, self.dev_hll, batch.device_id, dev, a, ts, day)
        ipset_n = self._ip_sets(a, slots, inv, ts, day, ipc)
        # ---- new device / IP / country
        acct_age = ts - c["first_seen"][a]
        # per event: the hour's share of its account's histogram before this
        # batch (row sums per account)
        owner_plays = c["hour_hist"][slots].sum(axis=1)[inv]
        p_hour = (c["hour_hist"][a, hod] + 0.5) / (owner_plays + 12.0)
        odd = np.maximum(0.0, -np.log(p_hour) - np.log(24.0))
        known = acct_age > self.identity_age_s
        newdev, born, dcol = self._novel(a, dev, ts, "dev", "dev_t", flag="dev_odd")
        newdev &= known
        newip_any, ip_born, icol = self._novel(a, ipc, ts, "ip", "ip_t", flag="ip_vouch",
                                               own=ip_acc_ev <= LONELY_IP_ACCOUNTS)
        newip = newip_any & known
        newctry, ctry_born, ccol = self._novel(a, ctry, ts, "ctry", "ctry_t", flag="ctry_own")
        newctry &= known
        # a device's provenance: one first seen from a new IP in a new
        # country, or on a new IP no other account uses (not the home IP,
        # not a carrier NAT), is a stranger's; one first seen at a known place
        # is the owner's (a second phone used at home before a trip), and its
        # plays elsewhere are not a new identity
        lonely = ip_acc_ev <= LONELY_IP_ACCOUNTS
        c["dev_odd"][a[born], dcol[born]] = newip[born] & (newctry[born] | lonely[born])
        # a device seen on a line one of the owner's devices has played from
        # (before this batch) is the household's: a listener whose new phone
        # first played on a new home line, with the old phone joining it there
        # the next day, scored 41 nats of odd hours over one day (held-out
        # seed 59, session 12); a hijacker's line never sees the owner's devices
        ip_vouched = np.where(icol >= 0, c["ip_vouch"][a, icol], 0) == 1
        household = ip_vouched & (dcol >= 0)
        c["dev_odd"][a[household], dcol[household]] = 0
        dev_odd = np.where(dcol >= 0, c["dev_odd"][a, dcol], 0)
        # a country where one of the owner's devices has played (a trip, a
        # VPN exit) is the owner's: a new device there is not a stranger
        ctry_own = np.where(ccol >= 0, c["ctry_own"][a, ccol], 0)
        # a stranger's device stays a stranger's after its first day: an L2
        # hijacker keeps one phone over several nights on a new line each
        # night, and each night's new IP brings the odd-hour evidence back
        # (it counted only while the device was < 24 h old until session 9)
        stranger = known & (dev_odd == 1) & newip
        abroad = stranger & newctry & (ctry_own == 0)
        # in a country of the owner's: a stranger's device on an IP of its
        # own gives its hours' surprise but not the count of its plays (no new
        # country; an account with a thin history, whose home line shows up
        # late beside a second phone, has no surprising hours)
        at_home = stranger & ~newctry & lonely
        strange = abroad | at_home  # a stranger's play
        vouch = (dev != 0) & (ccol >= 0) & (dev_odd == 0)
        c["ctry_own"][a[vouch], ccol[vouch]] = 1
        vouch_ip = (dev != 0) & (icol >= 0) & (dev_odd == 0)
        c["ip_vouch"][a[vouch_ip], icol[vouch_ip]] = 1
        # a stranger's plays do not teach the account its hours: otherwise a
        # hijacker's own night plays make the night "typical" within a few
        # plays and the odd-hour evidence dies out
        learn = ~strange
        if learn.all():
            scatter_add2(c["hour_hist"], a, hod, 1.0)
        else:
            scatter_add2(c["hour_hist"], a[learn], hod[learn], 1.0)
        add("newdev", wd * newdev)
        add("newip", wd * newip)
        add("newctry", wd * newctry)
        # how sure the account's devices are known: an owner seen over a few
        # plays may well have a device not seen yet (a listener's second
        # phone first played abroad 3 days after its first play: 31.7 nats,
        # held-out seed 89, session 13); a hijacked account's owner has
        # been seen over weeks
        sure = 1.0 - np.exp(-owner_plays / OWNER_PLAYS_SURE)
        add("oddhour", wd * strange * odd * sure)
        add("newall", wd * abroad * sure)
        # IPs the account takes into its memory that no other account uses,
        # at any account age: a residential-proxy rotation hands a bot a fresh
        # line every few dozen plays; a listener's lines are its home (once)
        # and a hotel or friend's line now and then (carrier NATs are shared)
        add("newlonely", wd * (ip_born & lonely))
        # countries the account takes into its 3-country memory on an IP new
        # to it (< 24 h), at any age, tau 7 d: a listener's home, a trip and a
        # favourite VPN exit stay in it; a bot hopping between VPN exits takes
        # in a new one, on a new exit IP, every hop. A country that flips on a
        # known IP is the geo-IP data's (a real listener's conn_country flips
        # between EE, PL, SE and GB on one home IP)
        add("newctry_w", ww * (ctry_born & newip_any), fw)
        # ---- features of touched accounts
        X = np.zeros((m, len(FEATURE_NAMES)))
        n12 = c["n12"][slots].astype(np.float64)
        X[:, 0] = c["n1"][slots]
        X[:, 1] = n12
        X[:, 2] = c["k3040"][slots] / np.maximum(n12, 1e-9)
        X[:, 3] = c["kshort"][slots] / np.maximum(n12, 1e-9)
        cn = c["comp_n"][slots]
        X[:, 4] = np.where(cn > 0, c["comp_s"][slots] / np.maximum(cn, 1e-9), np.nan)
        dp = c["day_plays"][slots].astype(np.float64)
        dist = np.minimum(linear_count(c["day_bits"][slots]), dp)
        X[:, 5] = np.where(dp > 0, dist / np.maximum(dp, 1), 1.0)
        X[:, 6] = 1.0 - X[:, 5]
        gn = c["gap_n"][slots].astype(np.float64)
        mean = c["gap_s1"][slots] / np.maximum(gn, 1e-9)
        var = np.maximum(c["gap_s2"][slots] / np.maximum(gn, 1e-9) - mean ** 2, 0.0)
        X[:, 7] = np.where((gn >= 5) & (mean > 0), np.sqrt(var) / np.maximum(mean, 1e-9), np.nan)
        cur_hour = (ref // HOUR).astype(np.int64)
        X[:, 8] = np.sum(c["hour_seen"][slots] > (cur_hour - 24)[:, None], axis=1)
        hh = c["hour_hist"][slots].astype(np.float64)
        ph = hh / np.maximum(hh.sum(axis=1, keepdims=True), 1e-9)
        X[:, 9] = -np.sum(np.where(ph > 0, ph * np.log2(np.maximum(ph, 1e-12)), 0.0), axis=1)
        X[:, 10] = c["newdev"][slots]
        X[:, 11] = c["newip"][slots]
        X[:, 12] = c["newctry"][slots]
        X[:, 13] = c["oddhour"][slots]
        X[:, 14] = c["newall"][slots]
        X[:, 15] = c["ovl"][slots]
        X[:, 16] = c["travel"][slots]
        ipmax = np.zeros(m)
        scatter_max(ipmax, inv, ip_acc_ev)
        devmax = np.zeros(m)
        scatter_max(devmax, inv, dev_acc_ev)
        X[:, 17] = ipmax
        X[:, 18] = devmax
        for col, name in ((19, "win_ipbits"), (20, "win_devbits"), (21, "win_ctrybits")):
            X[:, col] = linear_count(np.bitwise_or.reduce(c[name][slots], axis=1)[:, None])
        X[:, 22] = ipset_n
        X[:, 23] = c["newlonely"][slots]
        X[:, 24] = c["newctry_w"][slots]
        return slots, X, {"event_slot": a, "inv": inv, "ip_accounts_event": ip_acc_ev}

    def _window_bits(self, a, slots, inv, ts, kinds) -> None:
        """Fold plays into the accounts' ring of identity bitmaps.

        The ring holds one 64-bit bitmap per ``WIN_BLOCK_S`` block and kind;
        an account's newest block (``win_blk``) moving forward by k blocks
        clears the k ring entries it reuses (all of them when k >= the ring
        size). Plays older than the ring (late events) are dropped.

        Args:
            a: int (n,) account slot of each play; ``slots`` (m,) the unique
                slots and ``inv`` (n,) each play's index in them.
            ts: float64 (n,) play end times (Unix s).
            kinds: ``(hashes uint32 (n,), column name)`` pairs; hash 0 (a
                missing value) sets no bit.
        """
        c = self.accounts.cols_
        blk = (ts // WIN_BLOCK_S).astype(np.int64)
        bmax = np.full(len(slots), -1, np.int64)
        scatter_max(bmax, inv, blk)
        old = c["win_blk"][slots].astype(np.int64)
        k = bmax - old
        # ring entries to clear, the same for every kind: whole rings, then
        # the j-th entry after the old newest block
        wipe = slots[k >= WIN_BLOCKS]
        reuse = []
        for j in range(1, WIN_BLOCKS):
            sel = (k >= j) & (k < WIN_BLOCKS)
            if sel.any():
                reuse.append((slots[sel], (old[sel] + j) % WIN_BLOCKS))
        for name in (nm for _, nm in kinds):
            bits = c[name]
            bits[wipe] = 0
            for rows, cols in reuse:
                bits[rows, cols] = 0
        newest = np.maximum(old, bmax)
        c["win_blk"][slots] = newest
        live = blk > newest[inv] - WIN_BLOCKS
        word = (blk % WIN_BLOCKS) * 64
        for h, name in kinds:
            sel = live & (h != 0)
            if sel.any():
                pos = word[sel] + (mix64(h[sel].astype(np.uint64)) & np.uint64(63)).astype(np.int64)
                bitmap_set(c[name], a[sel], pos)

    def _ip_sets(self, a, slots, inv, ts, day, ipc) -> np.ndarray:
        """Fold plays into the accounts' IP sets of the day; per touched
        account (m,), the most accounts seen today holding its set of 2+ IPs
        (1 for a set of its own, 0 with fewer than 2 IPs today).

        Args:
            a: int (n,) account slot of each play; ``slots`` (m,) the unique
                slots and ``inv`` (n,) each play's index in them.
            ts: float64 (n,) play end times (Unix s); day: int (n,) their
                UTC days; ipc: uint32 (n,) IP hashes (0: no IP, left out).
        """
        c = self.accounts.cols_
        has = ipc != 0
        size = np.zeros(len(a), np.int64)
        old_day = c["ipset_day"][slots].copy()
        if has.any():
            j = np.flatnonzero(has)
            _, size[j] = self.ipsets.update(c["ipset_sig"], c["ipset_day"], a[j], self.accounts.hash_[a[j]],
                                            ts[j], mix64(ipc[j].astype(np.uint64)), np.ones(len(j), bool))
        # the largest group of the sketch's day (the account's newest; a
        # late play of an older day leaves it as it was)
        new_day = c["ipset_day"][slots]
        gmax = np.zeros(len(slots))
        scatter_max(gmax, inv, np.where(day == new_day[inv], size, 0).astype(np.float64))
        out = np.where(old_day == new_day, np.maximum(c["ipset_n"][slots], gmax), gmax)
        c["ipset_n"][slots] = out
        return out

    def _novel(self, a, h, ts, key, tkey, flag: str | None = None, own: np.ndarray | None = None):
        """Per event: is value ``h`` of account ``a`` first seen < 24 h ago.

        Inserts unseen values (3 kept per account and kind: an unseen value
        replaces the least recently seen one, ``<kind>_seen``), clearing
        their entry of the per-value flag column ``flag`` when given, and
        records every sighting. With ``own`` (bool (n,), IPs only: the event's
        IP has no other account on it) a value of the account's own is kept
        as if seen ``OWN_HOLD_H`` hours later than it was (``ip_own``): a home
        line outlives shared carrier NATs (session 11: a listener using three
        carrier NATs for a day evicted its home line, and its second phone,
        first seen back home, became a stranger's device on a "new" line of
        its own, 65 nats).

        Returns:
            ``(new, inserted, col)``: bool (n,) first seen < 24 h ago; bool
            (n,) the event that inserted its value (its first sighting; one
            per account and value when several plays share its time stamp);
            int (n,) the column holding the event's value after the batch
            (-1 for hash 0, a missing value, and for a value evicted again
            within the batch).
        """
        c = self.accounts.cols_
        nz = h != 0
        col = np.full(len(a), -1, np.int64)
        if not nz.any():
            return nz, nz.copy(), col
        # an unseen value replaces the kind's least recently seen one: the
        # home IP, seen every day, outlives three carrier NATs used now and
        # then (a round-robin cursor evicted it, and it came back as "new")
        last = c[key + "_seen"]
        _slot_index(c[key], a, h, col)
        col[~nz] = -1
        miss = (col < 0) & nz
        first: dict = {}  # (account, value) -> its first play in the batch
        if miss.any():
            idx = np.flatnonzero(miss)
            for i, s, v in zip(idx.tolist(), a[idx].tolist(), h[idx].tolist()):
                first.setdefault((s, v), i)
            hold = c[key + "_own"] if own is not None else None
            for (s, v), i in first.items():
                t = float(ts[i])
                j = int(np.argmin(last[s] if hold is None else last[s] + OWN_HOLD_H * hold[s]))
                c[key][s, j] = v
                c[tkey][s, j] = t
                last[s, j] = np.float32(t / HOUR)
                if flag is not None:
                    c[flag][s, j] = 0
            _slot_index(c[key], a, h, col)
            col[~nz] = -1
        if own is not None:  # every sighting refreshes whether the line is its own
            sel = col >= 0
            c[key + "_own"][a[sel], col[sel]] = own[sel]
        # a value inserted and evicted again within the batch is not
        # remembered: new, like any value the account does not hold
        tfirst = np.where(col >= 0, c[tkey][a, col], np.inf)
        _touch_seen(last, a, col, (ts / HOUR).astype(np.float32))
        # one insertion per (account, value), however many plays share its
        # first time stamp (the real exports have minute resolution)
        inserted = np.zeros(len(a), bool)
        if first:
            fi = np.fromiter(first.values(), np.int64, len(first))
            inserted[fi] = col[fi] >= 0
        return nz & (ts - tfirst < DAY), inserted, col

    def _fanin(self, table: SlotTable, hll: list[HLLBank], ids, crc, a, ts, day) -> np.ndarray:
        """Update an IP / device table; per-event distinct accounts (today and
        yesterday, HyperLogLog) of the event's IP / device (0 when absent).

        ``crc`` (uint32 (n,)) are the ids' :func:`_crc` hashes: 0 marks a
        ``None`` or empty id, so only those are tested for ``None``."""
        out = np.zeros(len(ids))
        zero = np.flatnonzero(crc == 0)
        if len(zero) == len(ids) and ids.count(None) == len(ids):  # column absent
            return out
        none = [i for i in zero.tolist() if ids[i] is None]
        if none:
            keep = np.ones(len(ids), bool)
            keep[none] = False
            idx = np.flatnonzero(keep)
            s = table.lookup([ids[i] for i in idx])
        else:
            idx = np.arange(len(ids))
            s = table.lookup(ids)
        table.touch(s, ts[idx])
        for bank in hll:
            bank.resize(table.capacity)
        d = day[idx]
        us, uinv = np.unique(s, return_inverse=True)
        dmax = np.full(len(us), -1, np.int64)
        scatter_max(dmax, uinv, d)
        cd = table.cols_["day"]
        roll = dmax > cd[us]
        for par in (0, 1):
            # a new day clears its parity's bank (it held the day before
            # yesterday); a gap of 2+ days clears yesterday's bank too
            hll[par].clear(us[roll & ((dmax % 2 == par) | (cd[us] < dmax - 1))])
        cd[us[roll]] = dmax[roll]
        scatter_add(table.cols_["plays"], s, 1.0)
        ah = self.accounts.hash_[a[idx]]
        for par in (0, 1):
            sel = d % 2 == par
            hll[par].add(s[sel], ah[sel])
        est = hll[0].estimate(us, hll[1])
        out[idx] = est[uinv]
        return out

    # ----------------------------------------------------------------- helpers
    def expire(self, now: float) -> None:
        """Drop accounts, IPs and devices idle for ``ttl_s`` (and clear their sketches)."""
        self.accounts.expire(now)
        for table, banks in ((self.ips, self.ip_hll), (self.devices, self.dev_hll)):
            table.expire(now)
            for b in banks:
                b.clear(table.last_expired_)

    def nbytes(self) -> int:
        """Bytes held by account, IP and device state (with sketches)."""
        return (self.accounts.nbytes() + self.ips.nbytes() + self.devices.nbytes()
                + sum(b.reg_.nbytes for b in self.ip_hll + self.dev_hll) + self.ipsets.nbytes())

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able)."""
        return {
            "accounts": self.accounts.state_dict(), "ips": self.ips.state_dict(),
            "devices": self.devices.state_dict(),
            "ip_hll": [b.reg_ for b in self.ip_hll], "dev_hll": [b.reg_ for b in self.dev_hll],
            "ipsets": self.ipsets.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.accounts.load_state_dict(state["accounts"])
        self.ips.load_state_dict(state["ips"])
        self.devices.load_state_dict(state["devices"])
        for b, r in zip(self.ip_hll, state["ip_hll"]):
            b.reg_ = np.asarray(r, np.uint8).copy()
        for b, r in zip(self.dev_hll, state["dev_hll"]):
            b.reg_ = np.asarray(r, np.uint8).copy()
        if "ipsets" in state:  # snapshots before session 9: the IP-set groups start empty
            self.ipsets.load_state_dict(state["ipsets"])
