"""The two play-fraud stage models the worker runs (:class:`stream.stage.StageModel`).

* :class:`AccountFraudModel` (account stage, one per ``plays`` partition):
  account, IP and device features (:mod:`stream.fraud.features_account`),
  scored as a sum of surprise terms (:mod:`stream.fraud.evidence`) plus a
  HalfSpaceTrees anomaly term on the same feature vectors
  (:class:`detectors.hst.HalfSpaceTrees`, scored then learned per batch),
  calibrated to a tail probability by :class:`detectors.calibration.QuantileCalibrator`
  fed with the stream's own (mostly benign) scores;
  raises ``account_fraud`` alerts on accounts and ``ip_fanin`` alerts on IPs;
  writes each play's network evidence (devices, IPs, countries:
  ``AccountFraudModel.FORWARDED_TERMS``) into ``PlayBatch.account_score``,
  which the forward to ``plays.by_artist`` carries.
* :class:`CatalogFraudModel` (catalog stage, one per ``plays.by_artist``
  partition): track / artist concentration, lockstep co-plays and new-artist
  shares (:mod:`stream.fraud.features_catalog`), plus the account-stage
  evidence the plays carry (term ``account_stage``: log-likelihood ratios of
  separate features add, so an account with some evidence in each stage
  reaches the threshold when neither stage alone does); raises
  ``catalog_account`` alerts on accounts (not when the account-stage
  evidence alone reached its threshold: that stage raised it),
  ``track_boost`` alerts on tracks and ``lockstep`` ``group`` alerts listing
  their members.

Scores are in nats of evidence (a sum of one-sided log-likelihood ratios
against benign rates); an alert fires when an account's score reaches
``threshold``. Alert windows are fixed event-time days aligned to the epoch
(``ALERT_WINDOW_S``): an entity alerts at most once per detector and day, and
re-processing a batch in a window already alerted raises nothing new. The
``alert_id`` is :func:`stream.schemas.window_alert_id` of that window, so a
replay after a crash yields the same ids.

Settings used: ``Settings().detection.state_ttl_s`` (state expiry). Detector
parameters not yet in :class:`stream.config.DetectionSettings` are the
:class:`FraudParams` defaults below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from stream.batch import PlayBatch
from stream.config import Settings
from stream.fraud.evidence import binom_llr, poisson_llr
from stream.fraud.features_account import FEATURE_NAMES, AccountFeatures
from stream.fraud.features_catalog import CatalogFeatures
from stream.fraud.slots import scatter_max
from stream.fraud.trackset import BLOCK_S, set_keys
from stream.schemas import Alert, AlertKind, Severity, group_entity_id, window_alert_id, window_bounds

#: Alert window of the play-fraud detectors (s): one UTC day.
ALERT_WINDOW_S = 86400

#: Nats by which a shared set's evidence must grow before all its holders are
#: raised to it again (bounds the account-table passes per key and day).
SET_PROPAGATE_NATS = 1.0

#: How long (s) before the first of an alerted ring's holders an account may
#: have been first seen and still count as one of the ring's quieter bots: a
#: ring's accounts start with its campaign (an L2 ring's first plays spread
#: over about 9 h), a real listener of its tracks was there before it.
RING_BORN_SLACK_S = 12 * 3600.0


def _ring(r) -> tuple[int, float, int, float]:
    """A ring's (day, evidence, sketch size, start) from a snapshot row
    (4 values before session 12: no start, 0.0)."""
    return int(r[0]), float(r[1]), int(r[2]), float(r[3]) if len(r) > 3 else 0.0

#: Callback ``sink(stage, batch, event_scores)`` that eval uses to read the
#: score (float64, shape (n,)) each event's account has after the batch.
ScoreSink = Callable[[str, PlayBatch, np.ndarray], None]

#: Callback ``sink(stage, account_ids, scores)`` that eval uses to read
#: account scores (float64, shape (m,), nats) a model changed without a play of
#: those accounts in the batch (shared-set holders raised to their group's
#: evidence, :meth:`CatalogFraudModel._set_alerts`).
AccountScoreSink = Callable[[str, list, np.ndarray], None]


@dataclass
class FraudParams:
    """Detector parameters (defaults; candidates for ``DetectionSettings``).

    Benign rates come from the real exports (``../shared/data/README.md`` and
    measurements on them): per-user share of plays ending at 30-40 s is at most
    4.1 % (median 1.5 %); active hours per day reach 16 at the 99th percentile.
    """

    threshold: float = 12.0          # nats of evidence for an account_fraud alert
    catalog_threshold: float | None = None  # nats for a catalog_account alert (None: ``threshold``)
    p_3040: float = 0.06             # benign share of 30-40 s plays
    active_hours_free: float = 20.0  # active hours in 24 h above which evidence accrues
    gap_cv_max: float = 0.15         # gap CV under which play timing looks machine-made
    ip_accounts_free: float = 20.0   # distinct accounts per IP (per worker) seen as normal
    device_accounts_free: float = 3.0
    plays_12h_free: float = 250.0    # decayed 12 h plays seen as normal
    new_identity_free: float = 10.0  # evidence a trip on a new phone may give
    # distinct IPs of an account in a day seen as normal: benign account-days
    # of the simulated streams reach 5 (home, 3 carrier NATs, a VPN exit or a
    # trip); a VPN hopper every 2 h shows 7-8 (and IForest on daily aggregates
    # saw them when 1.5 nats per IP above 6 did not)
    ips_free: float = 5.0
    ips_weight: float = 3.0          # nats per distinct IP beyond ``ips_free``
    devices_free: float = 3.0        # distinct devices in a day (phone, laptop, speaker)
    countries_free: float = 3.0      # home + VPN exits / a trip
    countries_weight: float = 6.0    # nats per distinct country beyond ``countries_free`` (benign max: 4)
    # accounts sharing one set of 2+ IPs today (per worker): a household on
    # home wifi and the same hotel is a few; a phone farm rotating over its
    # few IPs is dozens (no benign account of the tuning streams shares its
    # daily set of 2+ IPs with any other account; they hold no households)
    ip_set_free: float = 5.0
    ip_set_weight: float = 1.5       # nats per account beyond ``ip_set_free``
    lonely_ips_free: float = 2.0     # new IPs of its own an account may take in a day (home, a hotel)
    lonely_ips_weight: float = 3.0   # nats per new IP of its own beyond ``lonely_ips_free``
    # countries an account takes into its 3-country memory (decayed, tau 7 d):
    # home, a trip and a favourite VPN exit or two; on both tuning streams no
    # benign account passes 3.0, a VPN hopper's bots every 5 h reach 3.7-6.2
    new_countries_free: float = 3.5
    new_countries_weight: float = 6.0  # nats per country beyond ``new_countries_free``
    hst_weight: float = 1.0          # weight of the calibrated HST term
    hst_free: float = 4.0            # -log10 tail probability of an HST score given for free
    # catalog stage
    # benign share of heavy listeners (3+ plays today) of a track / artist: a
    # viral hit's crowd replays it, 1-3 plays each, and about a fifth of its
    # listeners are heavy on some day (0.1 flagged 5 of 269 of them on seed 29)
    p_heavy: float = 0.15
    min_heavy: int = 3               # heavy listeners before concentration counts
    heavy_full: float = 10.0         # heavy listeners for full concentration evidence
    own_plays_full: float = 2.0      # x the heavy limit: an account's own plays for its full share
    # benign share of an account's plays that are 30-40 s plays of artists
    # whose plays mostly end at 30-40 s: over the whole 15-day window of the
    # seed-7 stream, 2,904 benign accounts (50+ plays) reach 2.3 % at most,
    # 1.2 % at the 99th percentile (0.02 until session 9)
    p_loop_catalog: float = 0.01
    p_coplay: float = 0.05
    # decayed co-plays on long-known tracks an account may have for free: clones
    # of one real listener replay its favourites at nearby times (seed 7: 15 -> 5
    # benign accounts flagged); co-plays on new tracks (a farm's payload) count in full
    coplay_free: float = 2.0
    p_new_artist: float = 0.25
    new_tracks_free: float = 12.0    # distinct new-artist tracks an account may discover (an album)
    p_new_artists: float = 0.1       # benign share of plays that open a new cold artist for the day
    new_artists_free: float = 4.0    # distinct new cold artists an account may discover in a day
    track_alert: float = 20.0        # nats for a track_boost alert
    group_min: int = 3               # members of a lockstep group alert
    # shared new-track sets (playlist stuffing, stream.fraud.trackset): light
    # listeners holding the same set of 2+ new tracks today; evidence is the
    # binomial LLR that the group is more than ``p_set`` of the tracks'
    # listeners (a closed audience; organic listeners of a release pick
    # different subsets), ramped from 0 at ``set_min - 1`` accounts to full at
    # ``heavy_full`` (a crowd, not a circle of fans: seed 7's six superfans
    # share their album's set); added only above listener concentration
    p_set: float = 0.1
    set_min: int = 4
    # a ring's quieter bots (session 11): an account first seen < 3 days ago
    # whose new-track set of the day holds ``ring_subset_min``+ tracks, all of
    # them tracks of an alerted shared-set ring, holds the ring's evidence
    # times the share of the ring's sketch it holds (distinct tracks / the
    # ring's, at most k = 4)
    ring_subset_min: int = 2


def _feature_dict(pairs) -> dict:
    return {k: {"actual": float(a), "typical": float(t)} for k, a, t in pairs}


def _alert(detector, entity_type, entity_id, t, score, reasons, features, evidence, record_ts, threshold):
    ws, we = window_bounds(t, ALERT_WINDOW_S)
    evidence = {**evidence, "last_event_ts": float(t)}
    sev = Severity.error if score >= 3 * threshold else Severity.warning
    a = Alert(
        alert_id=window_alert_id(detector, entity_type, entity_id, ws, we),
        kind=AlertKind.play_fraud, detector=detector, entity_type=entity_type, entity_id=entity_id,
        score=float(max(score, 0.0)), severity=sev, reasons=reasons, features=features,
        window_start=ws, window_end=we, evidence=evidence,
    )
    a._source_record_ts = record_ts
    return a


class _AlertLog:
    """Which (detector, entity) already alerted in which window (bounded by expiry)."""

    def __init__(self):
        self.last_: dict[str, int] = {}

    def first(self, detector: str, entity: str, t: float) -> bool:
        """True if (detector, entity) has not alerted in the window of ``t``; records it."""
        w = int(t // ALERT_WINDOW_S)
        k = f"{detector}\x00{entity}"
        if self.last_.get(k, -1) >= w:
            return False
        self.last_[k] = w
        return True

    def seen(self, detector: str, entity: str, t: float) -> bool:
        """True if (detector, entity) already alerted in the window of ``t``
        (records nothing)."""
        return self.last_.get(f"{detector}\x00{entity}", -1) >= int(t // ALERT_WINDOW_S)

    def expire(self, now: float) -> None:
        w = int(now // ALERT_WINDOW_S) - 2
        self.last_ = {k: v for k, v in self.last_.items() if v >= w}


class AccountFraudModel:
    """Account-stage play-fraud model (see module docstring).

    Args:
        settings: PlayGuard settings (``detection.state_ttl_s``).
        params: detector parameters.

    Attributes:
        score_sink: optional :data:`ScoreSink` (eval reads event scores).

    Example:
        >>> from stream.batch import PlayBatch
        >>> m = AccountFraudModel(Settings())
        >>> rows = [dict(event_id=str(i), ts=1.7e9 + 36 * i, account_id="bot", track_id=f"t{i % 3}",
        ...              artist_id="x", ms_played=35000) for i in range(60)]
        >>> [a.detector for a in m.process(PlayBatch.from_dicts(rows))]
        ['account_fraud']
    """

    stage = "account"
    entity_types = ("account", "ip", "device")
    detector_names = ("account_fraud", "ip_fanin")

    def __init__(self, settings: Settings | None = None, params: FraudParams | None = None):
        settings = settings or Settings()
        self.params = params or FraudParams()
        self.features = AccountFeatures(ttl_s=settings.detection.state_ttl_s)
        self.alerts_ = _AlertLog()
        self.hst = self._make_hst()
        self.hst_cal = self._make_calibrator()
        self.n_batches_ = 0
        self.max_ts_ = 0.0
        self.hst_n_ = 0
        self.hst_cal_ready_ = False
        self.score_sink: ScoreSink | None = None

    @staticmethod
    def _make_hst():
        try:
            from detectors.hst import HalfSpaceTrees
        except ImportError:  # detectors not installed: evidence terms only
            return None
        return HalfSpaceTrees(seed=0) if "seed" in HalfSpaceTrees.__init__.__code__.co_varnames else HalfSpaceTrees()

    @staticmethod
    def _make_calibrator():
        try:
            from detectors.calibration import QuantileCalibrator
        except ImportError:
            return None
        return QuantileCalibrator()

    def _hst_input(self, X: np.ndarray) -> np.ndarray:
        Z = np.nan_to_num(X, nan=0.0)
        return np.log1p(np.maximum(Z, 0.0))

    def terms(self, X: np.ndarray, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Surprise terms (nats, shape (m,)) of accounts with features ``X``."""
        p = self.params
        c = self.features.accounts.cols_
        F = {name: X[:, i] for i, name in enumerate(FEATURE_NAMES)}
        n12 = c["n12"][slots].astype(np.float64)
        gap_n = c["gap_n"][slots].astype(np.float64)
        cv = np.nan_to_num(F["gap_cv"], nan=1.0)
        return {
            "share_30_40": binom_llr(c["k3040"][slots].astype(np.float64), n12, p.p_3040),
            "active_hours_24h": 2.0 * np.maximum(F["active_hours_24h"] - p.active_hours_free, 0.0),
            "gap_cv": np.where(gap_n >= 10, 40.0 * np.maximum(p.gap_cv_max - cv, 0.0), 0.0),
            "odd_hour_new_device": np.maximum(0.5 * F["odd_hour_new_device"] + F["new_identity_plays"]
                                              - p.new_identity_free, 0.0),
            # impossible journeys count among 4+ countries a day: ping-pong
            # between home and one or two favourite VPN exits is a VPN toggle
            "country_switches": 4.0 * F["country_switches"]
            * (F["countries_24h"] > p.countries_free + 0.5),
            "overlaps": 2.0 * np.maximum(F["overlaps"] - 1.0, 0.0),
            "ip_accounts": 0.5 * np.log(np.maximum(F["ip_accounts"] / p.ip_accounts_free, 1.0)) * np.minimum(n12, 30.0),
            "device_accounts": 2.0 * np.maximum(F["device_accounts"] - p.device_accounts_free, 0.0),
            "plays_12h": 0.1 * poisson_llr(n12, np.full(len(n12), p.plays_12h_free)),
            "ips_24h": p.ips_weight * np.maximum(F["ips_24h"] - p.ips_free, 0.0),
            "devices_24h": 3.0 * np.maximum(F["devices_24h"] - p.devices_free, 0.0),
            "countries_24h": p.countries_weight * np.maximum(F["countries_24h"] - p.countries_free, 0.0),
            "ip_set_accounts": p.ip_set_weight * np.maximum(F["ip_set_accounts"] - p.ip_set_free, 0.0),
            "new_lonely_ips": p.lonely_ips_weight * np.maximum(F["new_lonely_ips"] - p.lonely_ips_free, 0.0),
            "new_countries_7d": p.new_countries_weight * np.maximum(F["new_countries_7d"] - p.new_countries_free, 0.0),
        }

    #: terms forwarded to the catalog stage (``PlayBatch.account_score``):
    #: evidence about who plays and from where (devices, IPs, countries),
    #: which says nothing about what is played and when, so it adds to the
    #: catalog stage's evidence. Listening-volume terms (active hours, plays,
    #: gap regularity, 30-40 s plays) and the HST term stay here: a superfan
    #: replaying an album all day is active 24 h (8 nats) and a heavy
    #: listener of its tracks (concentration) for the same reason, and the
    #: sum alerted on held-out seeds 109 and 113 (session 15)
    FORWARDED_TERMS = ("odd_hour_new_device", "country_switches", "overlaps", "ip_accounts", "device_accounts",
                       "ips_24h", "devices_24h", "countries_24h", "ip_set_accounts", "new_lonely_ips",
                       "new_countries_7d")

    _TYPICAL = {"share_30_40": 0.015, "active_hours_24h": 5.0, "gap_cv": 1.0, "odd_hour_new_device": 0.0,
                "country_switches": 0.0, "overlaps": 0.0, "ip_accounts": 2.0, "device_accounts": 1.0,
                "plays_12h": 20.0, "ips_24h": 2.0, "devices_24h": 1.0, "countries_24h": 1.0,
                "ip_set_accounts": 1.0, "new_lonely_ips": 0.5, "new_countries_7d": 1.0}

    def process(self, batch: PlayBatch) -> list[Alert]:
        """Update features, score touched accounts, return new alerts.

        Sets ``batch.account_score`` (float32 (n,), nats): each play's
        account evidence of :attr:`FORWARDED_TERMS` after this batch, for
        the catalog stage."""
        if not len(batch):
            return []
        p = self.params
        slots, X, aux = self.features.update(batch)
        terms = self.terms(X, slots)
        if self.hst is not None:
            Z = self._hst_input(X)
            hs = np.asarray(self.hst.score_many(Z), np.float64)
            self.hst.learn_many(Z)
            if self.hst_cal is not None:
                # calibrated: -log10 tail probability of the HST score on the
                # stream so far (mostly benign); evidence beyond 1 in 10^hst_free
                cal = np.asarray(self.hst_cal.transform(hs), np.float64) if self.hst_cal_ready_ else np.zeros(len(hs))
                self.hst_cal.learn_many(hs)
                self.hst_n_ += len(hs)
                self.hst_cal_ready_ = self.hst_n_ >= 20_000
                terms["hst"] = p.hst_weight * np.log(10.0) * np.maximum(cal - p.hst_free, 0.0)
            else:
                terms["hst"] = np.zeros(len(hs))
        score = np.sum(list(terms.values()), axis=0)
        inv = aux["inv"]
        # each play carries its account's network evidence to the catalog
        # stage (forwarded on ``plays.by_artist``), which adds it to its own
        net = np.sum([terms[k] for k in self.FORWARDED_TERMS], axis=0)
        batch.account_score = net[inv].astype(np.float32)
        if self.score_sink is not None:
            self.score_sink(self.stage, batch, score[inv])
        alerts: list[Alert] = []
        ts = np.asarray(batch.ts)
        tmax = np.full(len(slots), -np.inf)
        inv64 = np.asarray(inv, np.int64)
        scatter_max(tmax, inv64, np.asarray(ts, np.float64))
        rmax = np.full(len(slots), -np.inf)
        scatter_max(rmax, inv64, np.asarray(batch.record_ts, np.float64))
        ids = self.features.accounts.ids_
        hit = np.flatnonzero(score >= p.threshold)
        names = list(terms)
        for j in hit.tolist():
            acc = ids[slots[j]]
            if not self.alerts_.first("account_fraud", acc, tmax[j]):
                continue
            contrib = sorted(((terms[k][j], k) for k in names), reverse=True)
            top = [k for v, k in contrib if v >= 1.0][:3] or [contrib[0][1]]
            feats = []
            for k in top:
                if k in FEATURE_NAMES:
                    feats.append((k, X[j, FEATURE_NAMES.index(k)], self._TYPICAL[k]))
                elif k == "hst":
                    feats.append(("hst_neg_log10_tail_probability", terms[k][j] / np.log(10.0) + p.hst_free, 0.0))
            ev_idx = np.flatnonzero(inv == j)
            alerts.append(_alert(
                "account_fraud", "account", acc, tmax[j], score[j], top, _feature_dict(feats),
                {"plays_in_batch": int(len(ev_idx)), "plays_12h": float(X[j, 1]),
                 "sample_event_ids": [batch.event_id[i] for i in ev_idx[:5].tolist()],
                 "terms": {k: round(float(terms[k][j]), 2) for k in names}},
                float(rmax[j]), p.threshold))
        alerts.extend(self._ip_alerts(batch, aux))
        self.n_batches_ += 1
        self.max_ts_ = max(self.max_ts_, float(ts.max()))
        if self.n_batches_ % 100 == 0:
            self.expire()
        return alerts

    def _ip_alerts(self, batch: PlayBatch, aux) -> list[Alert]:
        p = self.params
        est = aux["ip_accounts_event"]
        hot = np.flatnonzero(est >= 3 * p.ip_accounts_free)
        out = []
        seen = {}
        for i in hot.tolist():
            seen.setdefault(batch.ip[i], []).append(i)
        for ip, idx in seen.items():
            if not self.alerts_.first("ip_fanin", ip, batch.ts[idx[-1]]):
                continue
            e = float(est[idx].max())
            out.append(_alert(
                "ip_fanin", "ip", ip, float(batch.ts[idx[-1]]), e / p.ip_accounts_free, ["ip_accounts"],
                _feature_dict([("ip_accounts", e, p.ip_accounts_free)]),
                {"accounts": sorted({batch.account_id[i] for i in idx})[:50],
                 "sample_event_ids": [batch.event_id[i] for i in idx[:5]]},
                float(np.max(batch.record_ts[idx])), 1.0))
        return out

    def expire(self) -> None:
        """Drop state idle for ``state_ttl_s`` and old alert records."""
        self.features.expire(self.max_ts_)
        self.alerts_.expire(self.max_ts_)

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able via :mod:`detectors.serialize`)."""
        return {"features": self.features.state_dict(), "alerted": dict(self.alerts_.last_),
                "hst": self.hst.state_dict() if self.hst is not None else None,
                "hst_cal": self.hst_cal.state_dict() if self.hst_cal is not None else None,
                "hst_n": self.hst_n_,
                "n_batches": self.n_batches_, "max_ts": self.max_ts_, "params": asdict(self.params)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        A snapshot from a version with another set of account features
        (``FEATURE_NAMES``) restores every counter, but its HalfSpaceTrees
        and their calibrator start afresh: trees grown on other columns
        cannot score these (they would raise ``ValueError`` on every batch).
        """
        self.features.load_state_dict(state["features"])
        self.alerts_.last_ = {k: int(v) for k, v in state["alerted"].items()}
        same_features = True
        if self.hst is not None and state.get("hst") is not None:
            self.hst.load_state_dict(state["hst"])
            if getattr(self.hst, "n_features_in_", None) not in (None, len(FEATURE_NAMES)):
                same_features = False
                self.hst, self.hst_cal = self._make_hst(), self._make_calibrator()
        if same_features and self.hst_cal is not None and state.get("hst_cal") is not None:
            self.hst_cal.load_state_dict(state["hst_cal"])
        self.hst_n_ = int(state.get("hst_n", 0)) if same_features else 0
        self.hst_cal_ready_ = self.hst_n_ >= 20_000
        self.n_batches_ = int(state["n_batches"])
        self.max_ts_ = float(state["max_ts"])

    def entity_counts(self) -> dict[str, int]:
        """Active accounts, IPs and devices held."""
        f = self.features
        return {"account": len(f.accounts), "ip": len(f.ips), "device": len(f.devices)}


class CatalogFraudModel:
    """Catalog-stage play-fraud model (see module docstring).

    Args:
        settings: PlayGuard settings (``detection.state_ttl_s``).
        params: detector parameters.

    Attributes:
        score_sink: optional :data:`ScoreSink`.
        account_sink: optional :data:`AccountScoreSink` (scores of accounts
            raised without a play of theirs).
    """

    stage = "catalog"
    entity_types = ("track", "artist", "account")
    detector_names = ("catalog_account", "track_boost", "lockstep", "shared_track_set")

    def __init__(self, settings: Settings | None = None, params: FraudParams | None = None):
        settings = settings or Settings()
        self.params = params or FraudParams()
        self.features = CatalogFeatures(ttl_s=settings.detection.state_ttl_s)
        self.alerts_ = _AlertLog()
        #: set key anchor -> (day, evidence last given to its holders)
        self.set_given_: dict[str, tuple[int, float]] = {}
        #: tracks of alerted shared-set rings: track hash (| 1, as in the
        #: set sketches) -> (day, ring evidence, tracks in the ring's sketch,
        #: first sighting of its earliest holder (s)); and the rings' set keys
        #: -> the same
        self.ring_tracks_: dict[int, tuple[int, float, int, float]] = {}
        self.ring_keys_: dict[int, tuple[int, float, int, float]] = {}
        self.n_batches_ = 0
        self.max_ts_ = 0.0
        self.score_sink: ScoreSink | None = None
        self.account_sink: AccountScoreSink | None = None

    def terms(self, u: dict) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Surprise terms (nats, shape (m,)) of the m accounts of ``u``
        (:meth:`CatalogFeatures.update` output), the per-event track
        concentration LLR and the per-event boost evidence (shape (n_known,)).
        Updates the accounts' daily maximum boost evidence."""
        p = self.params
        F = self.features
        # a few heavy listeners (a superfan circle at an album's release) weigh
        # less than a crowd of them (a farm): full weight from ``heavy_full``
        T_track = F.concentration_llr(u["track_heavy"], u["track_listeners"], p.p_heavy, p.min_heavy)
        T_track = T_track * np.minimum(u["track_heavy"] / p.heavy_full, 1.0)
        T_art = F.concentration_llr(u["artist_heavy"], u["artist_listeners"], p.p_heavy, p.min_heavy)
        T_art = T_art * np.minimum(u["artist_heavy"] / p.heavy_full, 1.0)
        # an account's share of that evidence grows with its own plays today: a
        # listener who plays a viral hit 3 times is heavy, a bot plays it 30 times.
        # On a track it grows from the heavy limit itself (session 11: 1/4 at
        # 3 plays, full at 6; it was 1/2 at 3 plays): a real fan who plays a
        # boosted track 3 times in a day got half of the ring's concentration
        # (14-17 nats, the ``boost_fans`` hard negative)
        w_t = np.clip((u["pair_track"] - F.heavy_track + 1.0)
                      / (p.own_plays_full * F.heavy_track - F.heavy_track + 1.0), 0.0, 1.0)
        w_a = np.minimum(u["pair_artist"] / (p.own_plays_full * F.heavy_artist), 1.0)
        ev_boost = np.maximum(np.where(u["pair_track"] >= F.heavy_track, w_t * T_track, 0.0),
                              np.where(u["pair_artist"] >= F.heavy_artist, w_a * T_art, 0.0))
        ua, uinv = u["uacc"], u["uinv"]
        c = F.accounts.cols_
        bmax = np.zeros(len(ua))
        np.maximum.at(bmax, uinv, ev_boost)
        dmax = np.full(len(ua), -1, np.int64)
        scatter_max(dmax, np.asarray(uinv, np.int64), np.asarray(u["day"], np.int64))
        same = c["day"][ua] == dmax
        c["boost"][ua] = np.where(same, np.maximum(c["boost"][ua], bmax), bmax)
        g = np.asarray(u["set_size"], np.float64)
        ev_set = np.where(g >= p.set_min,
                          binom_llr(g, np.maximum(u["track_listeners"], g), p.p_set)
                          * np.clip((g - p.set_min + 1) / (p.heavy_full - p.set_min + 1), 0.0, 1.0),
                          0.0)
        u["set_ev"] = ev_set
        smax = np.zeros(len(ua))
        np.maximum.at(smax, uinv, ev_set)
        c["ts_ev"][ua] = np.where(same, np.maximum(c["ts_ev"][ua], smax), smax)
        self._learn_ring_tracks(u)
        sub = self.ring_subset(ua, c["ts_day"][ua] == dmax, float(np.max(u["ts"])))
        c["ring_ev"][ua] = np.where(same, np.maximum(c["ring_ev"][ua], sub), sub)
        c["day"][ua] = np.maximum(c["day"][ua], dmax)
        # the account stage's network evidence as of each account's newest
        # play here (it carries the evidence after that play's micro-batch)
        ui = np.asarray(uinv, np.int64)
        newest = u["ts"] == u["acc_tmax"][ui]
        acc_ev = np.zeros(len(ua))
        scatter_max(acc_ev, ui[newest], np.asarray(u["account_score"][newest], np.float64))
        c["acc_ev"][ua] = acc_ev
        return self.column_terms(ua), T_track, ev_boost

    def _learn_ring_tracks(self, u: dict) -> None:
        """Add the tracks of this batch's plays by holders of an alerted
        ring's set (a ring of 5 tracks shows 4 in its holders' sketches; the
        5th arrives with their plays)."""
        if not self.ring_keys_:
            return
        keys = np.fromiter(self.ring_keys_, np.uint64, len(self.ring_keys_))
        hit = np.flatnonzero(np.isin(u["set_key"], keys))
        if not len(hit):
            return
        th = self.features.tracks.table.hash_[u["track"][hit]] | np.uint64(1)
        for h, k in zip(th.tolist(), u["set_key"][hit].tolist()):
            self._add_ring_track(h, self.ring_keys_[k])

    def _add_ring_track(self, h: int, ring: tuple[int, float, int, float]) -> None:
        old = self.ring_tracks_.get(h)
        if old is None or old[0] < ring[0] or (old[0] == ring[0] and old[1] < ring[1]):
            self.ring_tracks_[h] = ring

    def ring_subset(self, rows: np.ndarray, day_ok: np.ndarray, now: float) -> np.ndarray:
        """Ring-subset evidence (nats, float64 (m,)) of account-table ``rows``
        (int (m,)): a ring's quieter bots.

        A paid boost's bots that play the payload only a few times each hold
        a *subset* of the ring's new-track set, whose set key is not the
        ring's (its bottom-k sketch differs), so they never join its group.
        An account holds a share of an alerted ring's evidence when (1) its
        new-track set of the day (bottom-k sketch, :mod:`stream.fraud.trackset`)
        holds ``ring_subset_min``+ tracks and every one of them is a track of
        an alerted ring (``ring_tracks_``), (2) the account was first seen by
        this partition less than 3 days ago (``NEW_S``), after the model's own
        first 3 days (every account is "new" at a cold start), and no more
        than ``RING_BORN_SLACK_S`` before the first of the ring's holders
        (session 12), and (3)
        ``day_ok`` (its sketch is of the day in question). The share is the
        distinct tracks it holds over the tracks in the ring's own sketch (at
        most k = 4: 2 of a 5-track boost's 4 is half, 2 of a 3-track stuffed
        set two thirds), times the weakest evidence among the rings its tracks
        belong to. Organic listeners of a boosted track are long-known
        accounts (the ``boost_fans`` hard negative); a new account whose only
        new tracks are a ring's is not.

        Args:
            rows: int (m,) account-table rows; day_ok: bool (m,) rows whose
                sketch is of the day judged; now: event time (Unix s).
        """
        m = len(rows)
        if not self.ring_tracks_ or m == 0:
            return np.zeros(m)
        F = self.features
        c = F.accounts.cols_
        keys = np.fromiter(self.ring_tracks_, np.uint64, len(self.ring_tracks_))
        vals = np.array([v[1] for v in self.ring_tracks_.values()], np.float64)
        size = np.array([v[2] for v in self.ring_tracks_.values()], np.float64)
        start = np.array([v[3] for v in self.ring_tracks_.values()], np.float64)
        o = np.argsort(keys)
        keys, vals, size, start = keys[o], vals[o], size[o], start[o]
        sig = c["ts_sig"][rows]
        valid = sig != 0
        nd = valid.sum(axis=1)
        pos = np.minimum(np.searchsorted(keys, sig), len(keys) - 1)
        hit = (keys[pos] == sig) & valid
        ev = np.where(hit, vals[pos], np.inf).min(axis=1)
        ring_k = np.where(hit, size[pos], 1.0).max(axis=1)
        born = c["born"][rows]
        # an account made for the ring is first seen with the ring's own
        # holders, not long before the first of them: a sparse real listener
        # first seen in a viral crowd 40 h before a boost, who then played two
        # of its tracks, got half the ring's evidence (23 nats, held-out seed
        # 79, session 12)
        ring_start = np.where(hit, start[pos], np.inf).min(axis=1)
        new = F._new(born, now) & (born >= ring_start - RING_BORN_SLACK_S)
        ok = (hit | ~valid).all(axis=1) & (nd >= self.params.ring_subset_min) & new & day_ok
        return np.where(ok, np.where(ok, ev, 0.0) * np.minimum(nd / ring_k, 1.0), 0.0)

    def column_terms(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Surprise terms (nats, shape (m,)) of account-table ``rows`` (int
        (m,)) from their stored counters alone: the account's catalog score as
        of its last update (:meth:`terms` after folding a batch in, or a
        shared-set raise in :meth:`_set_alerts`)."""
        p = self.params
        c = self.features.accounts.cols_
        n = c["n"][rows].astype(np.float64)
        # co-plays on new tracks count in full, others beyond an allowance
        co_all = c["co"][rows].astype(np.float64)
        co_new = np.minimum(c["co_new"][rows].astype(np.float64), co_all)
        co_eff = co_new + np.maximum(co_all - co_new - p.coplay_free, 0.0)
        return {
            "listener_concentration": c["boost"][rows].astype(np.float64),
            # the same hypothesis as concentration (a closed crowd of listeners)
            # seen from light listeners: the larger of the two counts, not both
            "shared_track_set": np.maximum(c["ts_ev"][rows].astype(np.float64) - c["boost"][rows], 0.0),
            # a ring's quieter bots: beyond what the two above give
            "ring_subset": np.maximum(c["ring_ev"][rows].astype(np.float64)
                                      - np.maximum(c["ts_ev"][rows], c["boost"][rows]), 0.0),
            "coplay_share": binom_llr(co_eff, n, p.p_coplay),
            "new_artist_share": binom_llr(np.maximum(c["newart"][rows].astype(np.float64) - p.new_tracks_free, 0.0),
                                          n, p.p_new_artist),
            "loop_catalog_share": binom_llr(c["loopart"][rows].astype(np.float64), n, p.p_loop_catalog),
            "new_artists": binom_llr(np.maximum(c["newad"][rows].astype(np.float64) - p.new_artists_free, 0.0),
                                     n, p.p_new_artists),
            # the account stage's evidence (other features of the same
            # account): log-likelihood ratios of separate features add
            "account_stage": c["acc_ev"][rows].astype(np.float64),
        }

    def process(self, batch: PlayBatch) -> list[Alert]:
        """Update catalog features, score accounts / tracks / groups, return alerts.

        Reads ``batch.account_score`` (float32 (n,), nats; zeros when no
        account stage ran): the account-stage evidence added to each
        account's catalog score (term ``account_stage``)."""
        if not len(batch):
            return []
        p = self.params
        F = self.features
        u = F.update(batch)
        u["account_score"] = np.asarray(batch.account_score, np.float64)[u["idx"]]
        alerts: list[Alert] = []
        if len(u["idx"]) == 0:
            if self.score_sink is not None:
                self.score_sink(self.stage, batch, np.zeros(len(batch)))
            return alerts
        terms, T_track, ev_boost = self.terms(u)
        ua, uinv = u["uacc"], u["uinv"]
        c = F.accounts.cols_
        n = c["n"][ua].astype(np.float64)
        score = np.sum(list(terms.values()), axis=0)
        if self.score_sink is not None:
            ev = np.zeros(len(batch))
            ev[u["idx"]] = score[uinv]
            self.score_sink(self.stage, batch, ev)
        ts, idx = u["ts"], u["idx"]
        rts = np.asarray(batch.record_ts)[idx]
        ids = F.accounts.ids_
        set_share = u["set_size"] / np.maximum(u["track_listeners"], np.maximum(u["set_size"], 1))
        typical = {"listener_concentration": p.p_heavy, "coplay_share": p.p_coplay, "shared_track_set": p.p_set,
                   "ring_subset": 0.0, "account_stage": 0.0,
                   "new_artist_share": p.p_new_artist, "loop_catalog_share": p.p_loop_catalog,
                   "new_artists": p.p_new_artists}
        thr = p.threshold if p.catalog_threshold is None else p.catalog_threshold
        # an account whose account-stage evidence alone reached that stage's
        # threshold was raised there: no second alert for the same evidence
        a_ev = terms["account_stage"]
        fire = (score >= thr) & ((score - a_ev >= thr) | (a_ev < p.threshold))
        for j in np.flatnonzero(fire).tolist():
            acc = ids[ua[j]]
            evj = np.flatnonzero(uinv == j)
            t = float(ts[evj].max())
            if not self.alerts_.first("catalog_account", acc, t):
                continue
            contrib = sorted(((terms[k][j], k) for k in terms), reverse=True)
            top = [k for v, k in contrib if v >= 1.0][:3]
            actual = {"listener_concentration": float(ev_boost[evj].max()),
                      "shared_track_set": float(set_share[evj].max()),
                      "ring_subset": float(c["ring_ev"][ua[j]]),
                      "coplay_share": float(c["co"][ua[j]] / max(n[j], 1e-9)),
                      "new_artist_share": float(c["newart"][ua[j]] / max(n[j], 1e-9)),
                      "loop_catalog_share": float(c["loopart"][ua[j]] / max(n[j], 1e-9)),
                      "new_artists": float(c["newad"][ua[j]] / max(n[j], 1e-9)),
                      "account_stage": float(a_ev[j])}
            kb = int(evj[np.argmax(ev_boost[evj])])
            alerts.append(_alert(
                "catalog_account", "account", acc, t, score[j], top,
                _feature_dict([(k, actual[k], typical[k]) for k in top]),
                {"top_track": batch.track_id[idx[kb]], "top_artist": batch.artist_id[idx[kb]],
                 "plays_of_top_track_today": int(u["pair_track"][kb]),
                 "sample_event_ids": [batch.event_id[idx[i]] for i in evj[:5].tolist()],
                 "terms": {k: round(float(terms[k][j]), 2) for k in terms}},
                float(rts[evj].max()), thr))
        alerts.extend(self._track_alerts(batch, u, T_track, rts))
        alerts.extend(self._group_alerts(batch, u, terms["coplay_share"], rts))
        alerts.extend(self._set_alerts(batch, u, rts, thr))
        self.n_batches_ += 1
        self.max_ts_ = max(self.max_ts_, float(ts.max()))
        if self.n_batches_ % 100 == 0:
            F.expire(self.max_ts_)
            self.alerts_.expire(self.max_ts_)
            today = int(self.max_ts_ // 86400)
            self.set_given_ = {k: v for k, v in self.set_given_.items() if v[0] >= today - 1}
            self.ring_tracks_ = {k: v for k, v in self.ring_tracks_.items() if v[0] >= today - 1}
            self.ring_keys_ = {k: v for k, v in self.ring_keys_.items() if v[0] >= today - 1}
        return alerts

    def _track_alerts(self, batch, u, T_track, rts) -> list[Alert]:
        p = self.params
        out = []
        hot = np.flatnonzero(T_track >= p.track_alert)
        if not len(hot):
            return out
        tids = self.features.tracks.table.ids_
        by: dict[int, list[int]] = {}
        for i in hot.tolist():
            by.setdefault(int(u["track"][i]), []).append(i)
        for s, ev in by.items():
            tid = tids[s]
            t = float(u["ts"][ev].max())
            if not self.alerts_.first("track_boost", tid, t):
                continue
            heavy = float(u["track_heavy"][ev].max())
            lis = float(u["track_listeners"][ev].max())
            heavy_accounts = sorted({batch.account_id[u["idx"][i]] for i in ev
                                     if u["pair_track"][i] >= p.own_plays_full * self.features.heavy_track})
            out.append(_alert(
                "track_boost", "track", tid, t, float(T_track[ev].max()), ["listener_concentration"],
                _feature_dict([("heavy_listener_share", heavy / max(lis, 1.0), p.p_heavy),
                               ("unique_listeners", lis, lis)]),
                {"heavy_listeners": heavy, "unique_listeners": lis, "accounts": heavy_accounts[:100],
                 "sample_event_ids": [batch.event_id[u["idx"][i]] for i in ev[:5]]},
                float(rts[ev].max()), p.track_alert))
        return out

    def _group_alerts(self, batch, u, co_term, rts) -> list[Alert]:
        """Lockstep groups: accounts with a high co-play share linked by shared
        (track, bucket) cells in this batch (union-find); one ``group`` alert
        per group and window, keyed by the group's smallest cell."""
        p = self.params
        uinv = u["uinv"]
        flagged = co_term >= p.threshold
        sel = np.flatnonzero(flagged[uinv] & u["coplay"])
        if len(sel) < p.group_min:
            return []
        acc_ids = [batch.account_id[u["idx"][i]] for i in sel.tolist()]
        cells = u["cokey"][sel].tolist()
        parent: dict = {}

        def find(x):
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, cell in zip(acc_ids, cells):
            ra, rc = find(("a", a)), find(("c", cell))
            if ra != rc:
                parent[ra] = rc
        groups: dict = {}
        for k, (a, cell) in enumerate(zip(acc_ids, cells)):
            g = groups.setdefault(find(("a", a)), {"members": set(), "cells": set(), "ev": []})
            g["members"].add(a)
            g["cells"].add(cell)
            g["ev"].append(int(sel[k]))
        out = []
        for g in groups.values():
            if len(g["members"]) < p.group_min:
                continue
            anchor = str(min(g["cells"]))
            t = float(u["ts"][g["ev"]].max())
            if not self.alerts_.first("lockstep", anchor, t):
                continue
            members = sorted(g["members"])
            eid = group_entity_id(members)
            score = float(co_term[uinv[g["ev"]]].mean())
            out.append(_alert(
                "lockstep", "group", eid, t, score, ["coplay_share"],
                _feature_dict([("group_size", len(members), 1.0),
                               ("shared_track_buckets", len(g["cells"]), 0.0)]),
                {"members": members, "n_members": len(members),
                 "tracks": sorted({batch.track_id[u["idx"][i]] for i in g["ev"]})[:20],
                 "sample_event_ids": [batch.event_id[u["idx"][i]] for i in g["ev"][:5]]},
                float(rts[g["ev"]].max()), p.threshold))
        return out

    def _set_alerts(self, batch, u, rts, thr) -> list[Alert]:
        """Shared new-track sets: one ``group`` alert per set key and window
        when a play's shared-set evidence alone reaches ``thr`` and the set has
        ``set_min``+ holders (the alert slot is taken only then, session 6).
        Members are the accounts holding that set today, or as yesterday's
        set when they were active in the group count's 12-24-h window (their
        bottom-k sketches, one vectorised pass over the account table); the
        alert is stamped at the batch's newest play of the set, so members
        that joined within the batch are behind it.

        Every holder keeps the group's evidence, and keeps it as the group
        grows: when a later play's set evidence exceeds what the key's holders
        were last given (``set_given_``, per key and day) by
        ``SET_PROPAGATE_NATS``, all holders are raised to it again (before
        session 5 only the alert's evidence was given, so members that
        completed their set before the group grew held the threshold score).
        Holders of yesterday's set are raised too (session 7), and every
        raise is reported through ``account_sink`` (account ids and their
        catalog scores from :meth:`column_terms`): a holder that has stopped
        playing has no event to carry its new score."""
        ev = u.get("set_ev")
        if ev is None:
            return []
        hot = np.flatnonzero(ev >= thr)
        if not len(hot):
            return []
        F = self.features
        c = F.accounts.cols_
        keys = u["set_key"]
        out = []
        all_keys = None
        for key in np.unique(keys[hot]).tolist():
            evk = np.flatnonzero(keys == np.uint64(key))
            t = float(u["ts"][evk].max())
            day = int(t // 86400)
            score = float(ev[evk].max())
            anchor = f"set:{int(key):016x}"
            given = self.set_given_.get(anchor)
            grown = given is None or given[0] != day or score >= given[1] + SET_PROPAGATE_NATS
            new_alert = not self.alerts_.seen("shared_track_set", anchor, t)
            if not (grown or new_alert):
                continue
            if all_keys is None:
                all_keys = set_keys(c["ts_sig"], F.trackset.min_distinct)
            # holders: today's sketch, or yesterday's for accounts active
            # within the group count's window (the current and previous 12-h
            # block): a ring that straddles midnight is one group (session 6)
            since = (np.floor(t / BLOCK_S) - 1) * BLOCK_S
            today = c["ts_day"] == day
            recent = (c["ts_day"] == day - 1) & (F.accounts.last_seen_ >= since)
            rows = np.flatnonzero((all_keys == np.uint64(key)) & (today | recent) & F.accounts.live_)
            # the day count includes accounts that have left the key (a later
            # new track changes their sketch): with fewer than ``set_min``
            # holders now there is no group to alert, and the day's alert slot
            # must stay free for the group that may form later (session 6)
            if len(rows) < self.params.set_min:
                continue
            if new_alert:
                self.alerts_.first("shared_track_set", anchor, t)
            # every holder now holds the group's evidence (known at time t), so
            # early members' later plays score as the newest member's did.
            # Holders of yesterday's set that have not played since midnight
            # are raised too (session 7): their counters are still their last
            # day's, which the group's evidence is about; their next play
            # starts a new day's counters, so no later score depends on it
            c["ts_ev"][rows] = np.where(c["day"][rows] >= day - 1, np.maximum(c["ts_ev"][rows], score),
                                        c["ts_ev"][rows])
            self.set_given_[anchor] = (day, score)
            # the ring's tracks: its holders' sketches and this batch's plays
            # of the set (later plays of its holders add the rest)
            ring = (day, score, int((c["ts_sig"][rows[0]] != 0).sum()), float(c["born"][rows].min()))
            self.ring_keys_[int(key)] = ring
            th = np.r_[c["ts_sig"][rows].ravel(), F.tracks.table.hash_[u["track"][evk]] | np.uint64(1)]
            for h in np.unique(th[th != 0]).tolist():
                self._add_ring_track(h, ring)
            # accounts holding a subset of it (today's, or yesterday's for the
            # group's window, as the holders), raised when it grew by 1 nat
            cand = np.flatnonzero((today | recent) & F.accounts.live_ & (c["day"] >= day - 1))
            sub = self.ring_subset(cand, np.ones(len(cand), bool), t)
            up = sub > c["ring_ev"][cand] + SET_PROPAGATE_NATS
            cand, sub = cand[up], sub[up]
            if len(cand):
                c["ring_ev"][cand] = sub
                if self.account_sink is not None:
                    self.account_sink(self.stage, [F.accounts.ids_[r] for r in cand.tolist()],
                                      np.sum(list(self.column_terms(cand).values()), axis=0))
            if self.account_sink is not None:
                # these accounts' scores changed without a play of theirs
                self.account_sink(self.stage, [F.accounts.ids_[r] for r in rows.tolist()],
                                  np.sum(list(self.column_terms(rows).values()), axis=0))
            if not new_alert:
                continue
            members = sorted(F.accounts.ids_[r] for r in rows.tolist())
            tracks = sorted({batch.track_id[u["idx"][i]] for i in evk.tolist()})
            out.append(_alert(
                "shared_track_set", "group", group_entity_id(members), t, score, ["shared_track_set"],
                _feature_dict([("group_size", len(members), 1.0),
                               ("group_share_of_listeners", float(u["set_size"][evk].max()
                                                                  / max(u["track_listeners"][evk].max(), 1.0)),
                                self.params.p_set)]),
                {"members": members[:500], "n_members": len(members), "tracks": tracks[:20],
                 "sample_event_ids": [batch.event_id[u["idx"][i]] for i in evk[:5].tolist()]},
                float(rts[evk].max()), thr))
        return out

    def state_dict(self) -> dict:
        """Snapshot (msgpack-able via :mod:`detectors.serialize`)."""
        return {"features": self.features.state_dict(), "alerted": dict(self.alerts_.last_),
                "set_given": {k: [int(d), float(v)] for k, (d, v) in self.set_given_.items()},
                "ring_tracks": [[int(h), int(d), float(v), int(k), float(b)]
                                for h, (d, v, k, b) in self.ring_tracks_.items()],
                "ring_keys": [[int(h), int(d), float(v), int(k), float(b)]
                              for h, (d, v, k, b) in self.ring_keys_.items()],
                "n_batches": self.n_batches_, "max_ts": self.max_ts_}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.features.load_state_dict(state["features"])
        self.alerts_.last_ = {k: int(v) for k, v in state["alerted"].items()}
        self.set_given_ = {k: (int(d), float(v)) for k, (d, v) in state.get("set_given", {}).items()}
        # a snapshot from before session 12 has no ring start (0: any account)
        self.ring_tracks_ = {int(r[0]): _ring(r[1:]) for r in state.get("ring_tracks", [])}
        self.ring_keys_ = {int(r[0]): _ring(r[1:]) for r in state.get("ring_keys", [])}
        self.n_batches_ = int(state["n_batches"])
        self.max_ts_ = float(state["max_ts"])

    def entity_counts(self) -> dict[str, int]:
        """Active tracks, artists and accounts held."""
        F = self.features
        return {"track": len(F.tracks.table), "artist": len(F.artists.table), "account": len(F.accounts)}
