"""The simple rules detector: the industry baseline of play fraud.

Two rules, per account, over fixed event-time windows aligned to the epoch:

* ``rule_track_day``: more than ``track_plays_per_day`` plays (default 100) of
  one track by one account in one UTC day (distributors treat that as bots);
* ``rule_account_month``: more than ``plays_per_month`` plays (default 1,000)
  by one account in one 30-day window.

It is the baseline that ``playguard eval`` reports beside the real detectors,
and its known weakness is documented in ``../shared/data/README.md``: many real
heavy listeners exceed these counts. Memory: one counter per (account, track,
day) and per (account, month) seen in the last window; old windows are dropped.

Source: distributor guidance quoted in the play-fraud issue; CONVENTIONS.md
(fixed windows, deterministic ``alert_id``).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from stream.batch import PlayBatch, UNKNOWN_IDS
from stream.schemas import Alert, AlertKind, Severity, window_alert_id, window_bounds

DAY_S = 86400
MONTH_S = 30 * DAY_S


class RulesAccountModel:
    """Account-stage model applying the two count rules.

    Args:
        track_plays_per_day: alert when an account plays one track more often
            than this in one UTC day.
        plays_per_month: alert when an account plays more than this in one
            30-day window.

    Each (rule, entity, window) alerts once: when its count first crosses the
    threshold. The ``alert_id`` is deterministic, so re-processing after a crash
    gives the same id.

    Example:
        >>> from stream.batch import PlayBatch
        >>> m = RulesAccountModel(track_plays_per_day=2)
        >>> rows = [dict(event_id=str(i), ts=1.7e9 + i, account_id="a", track_id="t",
        ...              artist_id="x", ms_played=31000) for i in range(3)]
        >>> [a.detector for a in m.process(PlayBatch.from_dicts(rows))]
        ['rule_track_day']
    """

    stage = "account"
    entity_types = ("account",)
    detector_names = ("rule_track_day", "rule_account_month")

    def __init__(self, track_plays_per_day: int = 100, plays_per_month: int = 1000):
        self.track_plays_per_day = track_plays_per_day
        self.plays_per_month = plays_per_month
        self.track_day_: Counter = Counter()  # (account, track, day) -> plays
        self.month_: Counter = Counter()  # (account, month) -> plays
        self.alerted_days_: set[tuple[str, int]] = set()  # (account, day) already alerted
        self.max_ts_ = 0.0

    def process(self, batch: PlayBatch) -> list[Alert]:
        """Count then alert; see class docstring."""
        alerts: list[Alert] = []
        if not len(batch):
            return alerts
        days = (batch.ts // DAY_S).astype(np.int64).tolist()
        months = (batch.ts // MONTH_S).astype(np.int64).tolist()
        rts = batch.record_ts.tolist()
        for i, (acc, trk, art) in enumerate(zip(batch.account_id, batch.track_id, batch.artist_id)):
            if trk not in UNKNOWN_IDS and art not in UNKNOWN_IDS:
                k = (acc, trk, days[i])
                c = self.track_day_[k] + 1
                self.track_day_[k] = c
                if c == self.track_plays_per_day + 1 and (acc, days[i]) not in self.alerted_days_:
                    # one alert per account and day (its alert_id has no track),
                    # for the first track that crosses the limit
                    self.alerted_days_.add((acc, days[i]))
                    alerts.append(
                        self._alert("rule_track_day", acc, days[i] * DAY_S, DAY_S, c,
                                    self.track_plays_per_day, batch.event_id[i], rts[i], track=trk)
                    )
            k2 = (acc, months[i])
            c2 = self.month_[k2] + 1
            self.month_[k2] = c2
            if c2 == self.plays_per_month + 1:
                alerts.append(
                    self._alert("rule_account_month", acc, months[i] * MONTH_S, MONTH_S, c2,
                                self.plays_per_month, batch.event_id[i], rts[i])
                )
        self.max_ts_ = max(self.max_ts_, float(batch.ts.max()))
        self._expire()
        return alerts

    def _alert(self, detector, account, ts, window_s, count, limit, event_id, record_ts, track=None):
        ws, we = window_bounds(ts, window_s)
        feat_name = "track_plays_per_day" if detector == "rule_track_day" else "plays_per_month"
        a = Alert(
            alert_id=window_alert_id(detector, "account", account, ws, we),
            kind=AlertKind.play_fraud,
            detector=detector,
            entity_type="account",
            entity_id=account,
            score=float(count) / float(limit),
            severity=Severity.warning,
            reasons=[detector],
            features={feat_name: {"actual": float(count), "typical": float(limit)}},
            window_start=ws,
            window_end=we,
            evidence={"count": count, "track_id": track, "sample_event_ids": [event_id]},
        )
        a._source_record_ts = record_ts
        return a

    def _expire(self) -> None:
        day_cut = int(self.max_ts_ // DAY_S) - 1
        month_cut = int(self.max_ts_ // MONTH_S) - 1
        if len(self.track_day_) > 50_000:
            self.track_day_ = Counter({k: v for k, v in self.track_day_.items() if k[2] >= day_cut})
            self.alerted_days_ = {k for k in self.alerted_days_ if k[1] >= day_cut}
        if len(self.month_) > 50_000:
            self.month_ = Counter({k: v for k, v in self.month_.items() if k[1] >= month_cut})

    def state_dict(self) -> dict:
        """Counters as lists (msgpack-able)."""
        return {
            "track_day": [[a, t, d, c] for (a, t, d), c in self.track_day_.items()],
            "month": [[a, m, c] for (a, m), c in self.month_.items()],
            "alerted_days": [[a, d] for a, d in sorted(self.alerted_days_)],
            "max_ts": self.max_ts_,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.track_day_ = Counter({(a, t, d): c for a, t, d, c in state["track_day"]})
        self.month_ = Counter({(a, m): c for a, m, c in state["month"]})
        self.alerted_days_ = {(a, d) for a, d in state.get("alerted_days", [])}
        self.max_ts_ = float(state["max_ts"])

    def entity_counts(self) -> dict[str, int]:
        """Distinct accounts with live counters."""
        return {"account": len({k[0] for k in self.month_})}


class NullCatalogModel:
    """Catalog-stage model that raises nothing (used until catalog detectors
    are configured, and as the no-op stage in benchmarks). It counts the
    distinct tracks it has seen, so state and metrics still move."""

    stage = "catalog"
    entity_types = ("track", "artist")
    detector_names: tuple[str, ...] = ()

    def __init__(self):
        self.tracks_: set[str] = set()
        self.artists_: set[str] = set()

    def process(self, batch: PlayBatch) -> list[Alert]:
        """Record the tracks and artists seen; no alerts."""
        self.tracks_.update(batch.track_id)
        self.artists_.update(batch.artist_id)
        return []

    def state_dict(self) -> dict:
        """Seen ids."""
        return {"tracks": sorted(self.tracks_), "artists": sorted(self.artists_)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.tracks_ = set(state["tracks"])
        self.artists_ = set(state["artists"])

    def entity_counts(self) -> dict[str, int]:
        """Tracks and artists seen."""
        return {"track": len(self.tracks_), "artist": len(self.artists_)}
