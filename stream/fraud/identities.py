"""Synthetic network identities (IP, device, country) for every account.

The real exports carry no IP or device and only the extended one a country,
so a simulator that gave these fields to injected accounts alone would leak
the label. Every account, benign or not, gets stable values from here:

* a home country (the account's most common real ``conn_country`` when it has
  one, else drawn from a listener-weighted list), a residential home IP and one
  or two devices;
* mobile sessions (about 20 %) through one of three carrier-grade NAT IPs
  (per session), shared with other accounts;
* benign travel (about 5 % of accounts: a few days abroad, same device, new IP
  and country) and benign VPN use (about 3 %: some sessions through one or two
  favourite shared VPN exits in other countries).

Fraud scenarios draw from the same generators (plus datacenter / proxy pools),
so no field's presence or format tells fraud from benign.
"""

from __future__ import annotations

import numpy as np

COUNTRIES = np.array(["US", "GB", "DE", "FR", "SE", "BR", "MX", "ES", "IT", "NL", "PL", "CA", "AU", "JP", "IN"])
COUNTRY_P = np.array([25, 10, 9, 8, 6, 8, 5, 5, 4, 4, 4, 4, 3, 3, 2], float)
COUNTRY_P /= COUNTRY_P.sum()
PLATFORMS = ["android", "ios", "windows", "osx", "web_player", "linux"]


def rand_ip(rng: np.random.Generator, first_octets=None) -> str:
    """A public-looking IPv4 address (string)."""
    a = int(rng.choice(first_octets)) if first_octets is not None else int(rng.integers(24, 223))
    return f"{a}.{int(rng.integers(0, 256))}.{int(rng.integers(0, 256))}.{int(rng.integers(1, 255))}"


def rand_device(rng: np.random.Generator) -> str:
    """A device id (16 hex digits)."""
    return "d" + "".join(rng.choice(list("0123456789abcdef"), 16))


def rand_account(rng: np.random.Generator) -> str:
    """An account id in the pseudonymised format of the real data (``u_`` + 10 hex)."""
    return "u_" + "".join(rng.choice(list("0123456789abcdef"), 10))


class IdentityPool:
    """Shared pools of mobile CGNAT, VPN, datacenter and proxy IPs.

    Args:
        rng: random generator.
        n_accounts: background size (pool sizes scale with it).
    """

    def __init__(self, rng: np.random.Generator, n_accounts: int):
        self.rng = rng
        self.cgnat = [rand_ip(rng, [100, 172, 176, 188]) for _ in range(max(20, n_accounts // 4))]
        self.vpn = [(rand_ip(rng, [45, 89, 185, 193]), str(c)) for c in rng.choice(COUNTRIES, 40)]
        self.datacenter = [rand_ip(rng, [34, 35, 52, 104, 138, 159]) for _ in range(60)]

    def home(self, country: str | None = None) -> dict:
        """A new residential identity: country, home IP, devices, platform, style."""
        rng = self.rng
        c = country or str(rng.choice(COUNTRIES, p=COUNTRY_P))
        ndev = 1 + int(rng.random() < 0.5)
        return {"country": c, "home_ip": rand_ip(rng), "devices": [rand_device(rng) for _ in range(ndev)],
                "platforms": [str(rng.choice(PLATFORMS)) for _ in range(ndev)],
                "cgnat": [str(x) for x in rng.choice(self.cgnat, 3)]}


def assign_network(rng: np.random.Generator, ts: np.ndarray, ident: dict, pool: IdentityPool,
                   travel: bool = False, vpn: bool = False):
    """Per-play IP, device, platform and country of one benign account.

    Args:
        ts: play end times (Unix s), shape (n,), sorted.
        ident: from :meth:`IdentityPool.home`.
        travel, vpn: whether this account travels once / uses a VPN sometimes.

    Returns:
        (ip, device, platform, country) lists of length n.
    """
    n = len(ts)
    sess = np.cumsum(np.r_[0, np.diff(ts) > 1800])  # sessions split at 30-min gaps
    nsess = int(sess[-1]) + 1 if n else 0
    mobile = rng.random(nsess) < 0.2
    dev_i = (rng.random(nsess) < 0.3).astype(int) % len(ident["devices"])
    carrier = [ident["cgnat"][int(i)] for i in rng.integers(0, len(ident["cgnat"]), nsess)]
    ip = np.where(mobile, np.array(carrier, dtype=object), ident["home_ip"]).astype(object)
    ctry = np.full(nsess, ident["country"], object)
    if vpn:  # a favourite exit or two, some sessions
        exits = [pool.vpn[int(i)] for i in rng.integers(0, len(pool.vpn), 2)]
        on = rng.random(nsess) < 0.15
        for s in np.flatnonzero(on):
            vip, vc = exits[int(rng.random() < 0.3)]
            ip[s], ctry[s] = vip, vc
    if travel and n:
        t0 = ts[0] + rng.random() * max(ts[-1] - ts[0] - 4 * 86400, 1)
        away = str(rng.choice(COUNTRIES))
        trip_ip = rand_ip(rng)
        sess_t = np.array([ts[sess == s][0] for s in range(nsess)])
        in_trip = (sess_t >= t0) & (sess_t < t0 + 4 * 86400)
        ip[in_trip] = trip_ip
        ctry[in_trip] = away
    return (ip[sess].tolist(), [ident["devices"][d] for d in dev_i[sess]],
            [ident["platforms"][d] for d in dev_i[sess]], ctry[sess].tolist())
