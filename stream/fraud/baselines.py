"""The three baselines ``playguard eval`` reports beside the play-fraud models.

* **rules**: :class:`stream.rules.RulesAccountModel` run on the same
  micro-batches (more than 100 plays of one track by one account in a day, or
  more than 1,000 plays in a 30-day window); its account score is the largest
  count over its limit, so PR-AUC has a ranking.
* **river HalfSpaceTrees** (Tan et al., 2011; ``river.anomaly``) streamed over
  per-account daily aggregates in event-time order (score then learn), behind
  river's ``MinMaxScaler``.
* **PyOD IForest** (Liu et al., 2008) fitted on the per-account daily
  aggregates (transductive, unsupervised).

Daily aggregates per (account, UTC day): plays, distinct-track ratio, share of
30-40 s plays, share of plays under 30 s, active hours, most plays of one
track, distinct IPs, devices and countries, share of night plays (0-6 h UTC).

Operating threshold of the two learnt baselines: the 99.9th percentile of their
scores on the first quarter of the stream's time (no labels used).
"""

from __future__ import annotations

import numpy as np

from stream.batch import PlayBatch
from stream.rules import RulesAccountModel

AGG_NAMES = ("plays", "distinct_ratio", "share_30_40", "share_short", "active_hours", "max_track_plays",
             "ips", "devices", "countries", "night_share")


def _codes(values) -> np.ndarray:
    _, inv = np.unique(np.asarray([("" if v is None else v) for v in values], dtype=object).astype(str),
                       return_inverse=True)
    return inv.astype(np.int64)


def daily_aggregates(batch: PlayBatch) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per (account, day) aggregates.

    Returns:
        (accounts (m,), day index (m,) in Unix days, X float64 (m, 10)) with
        columns :data:`AGG_NAMES`.
    """
    acc = _codes(batch.account_id)
    day = (batch.ts // 86400).astype(np.int64)
    key = acc * 100000 + (day - day.min())
    uk, inv = np.unique(key, return_inverse=True)
    m = len(uk)
    ms = batch.ms_played
    plays = np.bincount(inv, minlength=m).astype(float)

    def n_distinct(codes):
        pk = np.unique(inv.astype(np.int64) * (codes.max() + 1) + codes)
        return np.bincount(pk // (codes.max() + 1), minlength=m).astype(float)

    trk = _codes(batch.track_id)
    hours = (batch.ts // 3600).astype(np.int64) - int(batch.ts.min() // 3600)
    X = np.column_stack([
        plays,
        n_distinct(trk) / plays,
        np.bincount(inv, (ms >= 30000) & (ms < 40000), m) / plays,
        np.bincount(inv, ms < 30000, m) / plays,
        n_distinct(hours),
        _max_pair(inv, trk, m),
        n_distinct(_codes(batch.ip)),
        n_distinct(_codes(batch.device_id)),
        n_distinct(_codes(batch.country)),
        np.bincount(inv, ((batch.ts // 3600) % 24) < 6, m) / plays,
    ])
    names = np.asarray(batch.account_id, dtype=object)
    first = np.zeros(m, np.int64)
    first[inv[::-1]] = np.arange(len(inv))[::-1]
    return names[first].tolist(), day[first], X


def _max_pair(inv, codes, m) -> np.ndarray:
    pk, cnt = np.unique(inv.astype(np.int64) * (codes.max() + 1) + codes, return_counts=True)
    out = np.zeros(m)
    np.maximum.at(out, pk // (codes.max() + 1), cnt)
    return out


def rules_baseline(batches: list[PlayBatch], settings) -> dict:
    """Run the rules model over ``batches``; per-account score and first alert time.

    Returns:
        ``{"score": {account: float}, "first_alert": {account: event time},
        "alerts": [(account, event time)]}``.
    """
    m = RulesAccountModel(settings.detection.rule_track_plays_per_day, settings.detection.rule_plays_per_month)
    first, alerts = {}, []
    for b in batches:
        t = float(b.ts.max())
        for a in m.process(b):
            alerts.append((a.entity_id, t))
            first.setdefault(a.entity_id, t)
    full = PlayBatch.concat(batches)
    accs, days, X = daily_aggregates(full)
    score: dict[str, float] = {}
    month = (full.ts // (30 * 86400)).astype(np.int64)
    acc = np.asarray(full.account_id, dtype=object)
    ac = _codes(full.account_id)
    pk, cnt = np.unique(ac * 10000 + (month - month.min()), return_counts=True)
    mmax = np.zeros(ac.max() + 1)
    np.maximum.at(mmax, pk // 10000, cnt)
    names = {}
    for a, c in zip(acc.tolist(), ac.tolist()):
        names.setdefault(c, a)
    for a, x in zip(accs, X):
        score[a] = max(score.get(a, 0.0), x[5] / settings.detection.rule_track_plays_per_day)
    for c, v in enumerate(mmax):
        a = names[c]
        score[a] = max(score.get(a, 0.0), v / settings.detection.rule_plays_per_month)
    return {"score": score, "first_alert": first, "alerts": alerts}


def _threshold(scores: np.ndarray, days: np.ndarray) -> float:
    early = days <= days.min() + max(1, (days.max() - days.min()) // 4)
    return float(np.quantile(scores[early], 0.999)) if early.any() else float(np.quantile(scores, 0.999))


def iforest_baseline(batch: PlayBatch, seed: int = 0) -> dict:
    """PyOD IForest on daily aggregates; per-account max score and first
    flagged day end (event time)."""
    from pyod.models.iforest import IForest

    accs, days, X = daily_aggregates(batch)
    Z = np.log1p(X)
    det = IForest(n_estimators=100, random_state=seed)
    det.fit(Z)
    s = det.decision_function(Z)
    return _summarise(accs, days, s, _threshold(s, days))


def river_hst_baseline(batch: PlayBatch, seed: int = 0) -> dict:
    """river HalfSpaceTrees streamed over daily aggregates in day order."""
    from river import anomaly, compose, preprocessing

    accs, days, X = daily_aggregates(batch)
    model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=seed, n_trees=25, height=8,
                                                                                 window_size=250))
    order = np.argsort(days, kind="stable")
    s = np.zeros(len(accs))
    Z = np.log1p(X)
    for i in order.tolist():
        x = dict(zip(AGG_NAMES, Z[i].tolist()))
        s[i] = model.score_one(x)
        model.learn_one(x)
    return _summarise(accs, days, s, _threshold(s, days))


def _summarise(accs, days, s, thr) -> dict:
    score: dict[str, float] = {}
    first: dict[str, float] = {}
    alerts = []
    for a, d, v in zip(accs, days.tolist(), s.tolist()):
        score[a] = max(score.get(a, -np.inf), v)
        if v > thr:
            t = (d + 1) * 86400.0
            alerts.append((a, t))
            first[a] = min(first.get(a, np.inf), t)
    return {"score": score, "first_alert": first, "alerts": alerts, "threshold": thr}
