"""Identity windows of the account stage: distinct IPs / devices / countries over
the last 18-24 h (a ring of 6-h bitmaps), not per UTC day (issue 11, session 5)."""

import numpy as np

from stream.batch import PlayBatch
from stream.config import Settings
from stream.fraud.features_account import FEATURE_NAMES, WIN_BLOCK_S, WIN_BLOCKS, AccountFeatures
from stream.fraud.models import AccountFraudModel

MIDNIGHT = 1_700_000_000.0 // 86400 * 86400 + 86400
COUNTRIES = ["US", "GB", "DE", "FR", "SE", "BR", "MX", "ES", "IT", "NL"]


def _hopper(t0, hours, hop_s, k0=0, acc="hopper"):
    """One play every 4 min; a new (VPN exit IP, country) every ``hop_s``."""
    ts = t0 + np.arange(0, hours * 3600, 240.0)
    hop = ((ts - t0) // hop_s).astype(int) + k0
    return [dict(event_id=f"{acc}-{t}", ts=float(t), account_id=acc, track_id=f"Geo::t{i % 10}", artist_id="Geo",
                 ms_played=200_000, ip=f"185.0.0.{h % 250}", device_id="d1", country=COUNTRIES[h % len(COUNTRIES)])
            for i, (t, h) in enumerate(zip(ts, hop))]


def _features(feat, rows):
    slots, X, _ = feat.update(PlayBatch.from_dicts(rows))
    return X


def test_a_run_across_midnight_counts_its_identities_in_one_window():
    # 8 exits in 8 countries between 20:00 and 04:00: a UTC-day count showed at
    # most 4 on each side of midnight
    rows = _hopper(MIDNIGHT - 4 * 3600, 8, 3600)
    feat = AccountFeatures()
    _features(feat, rows[:60])
    X = _features(feat, rows[60:])
    assert X[0, FEATURE_NAMES.index("countries_24h")] >= 7.5
    assert X[0, FEATURE_NAMES.index("ips_24h")] >= 7.5


def test_the_window_forgets_blocks_older_than_the_ring():
    feat = AccountFeatures()
    _features(feat, _hopper(MIDNIGHT, 4, 1800))  # 8 exits
    # next play 30 h later from one country: every old block is cleared
    X = _features(feat, _hopper(MIDNIGHT + 30 * 3600, 0.1, 3600, k0=3))
    assert X[0, FEATURE_NAMES.index("countries_24h")] < 1.5
    # a play 12 h after a run still sees it (same ring)
    feat = AccountFeatures()
    _features(feat, _hopper(MIDNIGHT, 4, 1800))
    X = _features(feat, _hopper(MIDNIGHT + 16 * 3600, 0.1, 3600, k0=3))
    assert X[0, FEATURE_NAMES.index("countries_24h")] >= 7.5
    assert WIN_BLOCKS * WIN_BLOCK_S == 86400


def test_vpn_hopper_across_midnight_scores_above_a_split_day_count():
    # 4 + 4 countries on each side of midnight: the account model sees 8, so the
    # country terms reach far above the alert threshold
    m = AccountFraudModel(Settings())
    rows = _hopper(MIDNIGHT - 4 * 3600, 8, 3600)
    best = 0.0
    for o in range(0, len(rows), 15):
        b = PlayBatch.from_dicts(rows[o:o + 15])
        slots, X, _ = m.features.update(b)
        t = m.terms(X, slots)
        best = max(best, float(t["countries_24h"][0]))
    assert best >= m.params.countries_weight * (7.5 - m.params.countries_free)
