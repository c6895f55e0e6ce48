"""``playguard eval``: the play-fraud models against labelled streams.

:func:`evaluate` runs the worker's own core (``stream.pipeline.Pipeline(settings)
.process(batch)``, both stages) over micro-batches in event-time order, reads
each event's account score after its batch (the models' ``score_sink``) and
every alert, then reports per scenario and camouflage level:

* account-level and event-level PR-AUC (average precision, scikit-learn); an
  account's score is the highest score the core gave it: after each batch
  holding its plays, and when a model raised it without a play of it (the
  models' ``account_sink``: shared-set holders raised to their group's
  evidence); an event's score is its account's score after its batch;
* precision and recall at the operating threshold (an account is flagged when
  an alert names it: account alerts, or group / IP / track alerts listing it);
* median and p90 time to detect: event time from the account's first fraud
  event to the first alert naming it (alert time = the newest event time behind
  the alert, ``evidence["last_event_ts"]``);
* false alerts per 1,000 benign accounts per day (alerts naming benign accounts);

and the same figures for the three baselines (:mod:`stream.fraud.baselines`).
Positives of a scenario are its fraud accounts; negatives are every account
that emits no fraud event (hard negatives included). Account-level truth: an
account is fraudulent while it emits fraud events.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from sklearn.metrics import average_precision_score

from stream.batch import PlayBatch
from stream.config import Settings
from stream.fraud.baselines import iforest_baseline, river_hst_baseline, rules_baseline
from stream.fraud.simulate import Labelled
from stream.pipeline import Pipeline


def _alert_accounts(a) -> list[str]:
    if a.entity_type == "account":
        return [a.entity_id]
    ev = a.evidence or {}
    return list(ev.get("members") or ev.get("accounts") or [])


def batch_bounds(ts: np.ndarray, batch_size: int, batch_seconds: float | None) -> list[tuple[int, int]]:
    """Micro-batch index ranges over event-time-sorted ``ts``: at most
    ``batch_size`` events and, when ``batch_seconds`` is set, at most that much
    event time each (the worker's batches span well under a second of a live
    stream; a compressed replay needs the time cap to keep detection times
    honest)."""
    n = len(ts)
    cuts = set(range(0, n, batch_size))
    if batch_seconds:
        b = np.floor(ts / batch_seconds)
        cuts.update(np.flatnonzero(np.r_[True, b[1:] != b[:-1]]).tolist())
    cuts = sorted(c for c in cuts if c < n)
    out = []
    for i, c in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else n
        for o in range(c, end, batch_size):
            out.append((o, min(o + batch_size, end)))
    return out


def run_core(lab: Labelled, settings: Settings | None = None, batch_size: int = 2000,
             batch_seconds: float | None = 300.0, thresholds: dict | None = None) -> dict:
    """Run the core over ``lab`` in micro-batches (see :func:`batch_bounds`).

    Args:
        thresholds: optional ``{"threshold": nats, "catalog_threshold": nats}``
            set on the models' :class:`~stream.fraud.models.FraudParams`
            (e.g. from :func:`stream.fraud.calibrate.calibrate_thresholds`).

    Returns:
        dict: ``event_score`` (n,) (max over stages), ``stage_scores``
        (stage -> (n,) scores), ``account_raised`` (account id -> highest
        score a model gave it without a play of it, nats: shared-set holders
        raised to their group's evidence), ``alerts`` list of (alert, event
        time), ``batches`` list of :class:`PlayBatch`, ``seconds`` wall time.

    Raises:
        ValueError: if ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pipe = Pipeline(settings or Settings())
    for m in (pipe.account, pipe.catalog):
        if thresholds and hasattr(m, "params"):
            for k, v in thresholds.items():
                setattr(m.params, k, v)
    n = len(lab)
    ev = np.zeros(n)
    stage_ev: dict[str, np.ndarray] = {}
    cur = {"off": 0}

    def sink(stage, batch, scores):
        o = cur["off"]
        np.maximum(ev[o:o + len(batch)], scores, out=ev[o:o + len(batch)])
        st = stage_ev.setdefault(stage, np.zeros(n))
        np.maximum(st[o:o + len(batch)], scores, out=st[o:o + len(batch)])

    acc_raised: dict[str, float] = {}

    def account_sink(stage, accounts, scores):
        for a, v in zip(accounts, np.asarray(scores, np.float64).tolist()):
            if v > acc_raised.get(a, -np.inf):
                acc_raised[a] = v

    for m in (pipe.account, pipe.catalog):
        if hasattr(m, "score_sink"):
            m.score_sink = sink
        if hasattr(m, "account_sink"):
            m.account_sink = account_sink
    alerts, batches = [], []
    t_start = time.perf_counter()
    for o, e in batch_bounds(lab.batch.ts, batch_size, batch_seconds):
        b = lab.batch.take(np.arange(o, e))
        cur["off"] = o
        t = float(b.ts.max())
        for a in pipe.process(b):
            # detection time: newest event time behind the alert (the worker
            # raises it as soon as that event's micro-batch is processed)
            alerts.append((a, min(float(a.evidence.get("last_event_ts", t)), t)))
        batches.append(b)
    return {"event_score": ev, "stage_scores": stage_ev, "alerts": alerts, "batches": batches,
            "account_raised": acc_raised, "seconds": time.perf_counter() - t_start, "pipeline": pipe}


def _metrics(groups, acc_score, acc_first, alerted_pairs, fraud_start, benign, days, ev_score=None, ev_groups=None):
    out = {}
    neg = sorted(benign)
    flagged_benign = sum(1 for a in neg if a in acc_first)
    n_false = sum(1 for a, _ in alerted_pairs if a in benign)
    # time to detect (min) of every detected fraud account of every row
    every = sorted(set().union(*groups.values())) if groups else []
    ttd_of = {a: max(acc_first[a] - fraud_start[a], 0.0) / 60.0 for a in every if a in acc_first}
    for g, pos in groups.items():
        pos = sorted(pos)
        if not pos:
            continue
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        s = np.array([acc_score.get(a, -1e9) for a in pos + neg], float)
        s = np.nan_to_num(s, nan=-1e9, neginf=-1e9)
        tp = sum(1 for a in pos if a in acc_first)
        ttd = [ttd_of[a] for a in pos if a in ttd_of]
        r = {
            "accounts": len(pos),
            "pr_auc_account": float(average_precision_score(y, s)),
            "precision": tp / (tp + flagged_benign) if tp + flagged_benign else 0.0,
            "recall": tp / len(pos),
            "ttd_median_min": float(np.median(ttd)) if ttd else None,
            "ttd_p90_min": float(np.quantile(ttd, 0.9)) if ttd else None,
        }
        if ev_score is not None:
            pi, ni = ev_groups[g], ev_groups["__benign__"]
            ye = np.r_[np.ones(len(pi)), np.zeros(len(ni))]
            r["pr_auc_event"] = float(average_precision_score(ye, np.r_[ev_score[pi], ev_score[ni]]))
        out[g] = r
    # pooled over every fraud account (a scenario with 60 accounts weighs 15
    # times one with 4): the median over detected accounts, and the share of
    # all fraud accounts alerted within 15 min
    ttd_all = list(ttd_of.values())
    summary = {"false_alerts_per_1000_benign_per_day": 1000.0 * n_false / max(len(neg), 1) / max(days, 1e-9),
               "benign_accounts_flagged": flagged_benign,
               "ttd_median_min_all": float(np.median(ttd_all)) if ttd_all else None,
               "detected_within_15_min": sum(1 for t in ttd_all if t <= 15.0) / len(every) if every else None}
    return out, summary


def evaluate(lab: Labelled, settings: Settings | None = None, batch_size: int = 2000,
             baselines: bool = True, seed: int = 0, batch_seconds: float | None = 300.0,
             thresholds: dict | None = None) -> dict:
    """Evaluate the core (and baselines) on ``lab``; returns the JSON-able result.

    ``thresholds`` (e.g. :func:`stream.fraud.calibrate.calibrate_thresholds`)
    overrides the models' alert thresholds; it is stored in the result.

    Raises:
        ValueError: if ``lab`` has no fraud or no benign event.
    """
    if not lab.is_fraud.any() or lab.is_fraud.all():
        raise ValueError("labelled stream needs both fraud and benign events")
    b = lab.batch
    acc = np.asarray(b.account_id, dtype=object)
    fraud_accounts = set(acc[lab.is_fraud].tolist())
    benign = set(acc.tolist()) - fraud_accounts
    groups: dict[str, set] = defaultdict(set)
    fraud_start: dict[str, float] = {}
    ev_groups: dict[str, list] = defaultdict(list)
    for i in np.flatnonzero(lab.is_fraud).tolist():
        s = lab.scenario[i] or "unlabelled"
        groups[s].add(acc[i])
        ev_groups[s].append(i)
        fraud_start.setdefault(acc[i], float(b.ts[i]))
    ev_groups["__benign__"] = np.flatnonzero(~lab.is_fraud)
    ev_groups = {k: np.asarray(v, np.int64) for k, v in ev_groups.items()}
    days = (float(b.ts.max()) - float(b.ts.min())) / 86400.0
    thr_over = {k: v for k, v in (thresholds or {}).items() if k != "report"}
    core = run_core(lab, settings, batch_size, batch_seconds, thresholds=thr_over)
    ev = core["event_score"]
    acc_score: dict[str, float] = {}
    order = np.argsort(ev)
    for a, s in zip(acc[order].tolist(), ev[order].tolist()):
        acc_score[a] = s  # ascending: last write is the max
    # an account's score is the highest the core gave it: after each batch
    # holding its plays, and when a model raised it without a play of it (a
    # shared-set holder that stopped before its group grew keeps, in the
    # model, the group's evidence; session 7)
    for a, s in core["account_raised"].items():
        if a in acc_score:
            acc_score[a] = max(acc_score[a], s)
    acc_first: dict[str, float] = {}
    pairs = []
    by_detector = defaultdict(int)
    thr = core["pipeline"].account.params.threshold if hasattr(core["pipeline"].account, "params") else 1.0
    for a, t in core["alerts"]:
        by_detector[a.detector] += 1
        for x in _alert_accounts(a):
            pairs.append((x, t))
            acc_first[x] = min(acc_first.get(x, np.inf), t)
            acc_score[x] = max(acc_score.get(x, 0.0), thr)
    res, summ = _metrics(groups, acc_score, acc_first, pairs, fraud_start, benign, days, ev, ev_groups)
    hard = defaultdict(lambda: [0, 0])
    for a_, s in zip(acc.tolist(), lab.scenario):
        if s.startswith("hardneg:"):
            hard[s][0] += 0
    hn_acc = defaultdict(set)
    for a_, s in zip(acc.tolist(), lab.scenario):
        if s.startswith("hardneg:") and a_ in benign:
            hn_acc[s].add(a_)
    result = {
        "events": len(lab), "accounts": len(set(acc.tolist())), "days": days,
        "batch_size": batch_size, "batch_seconds": batch_seconds,
        "fraud_event_share": float(lab.is_fraud.mean()),
        "fraud_account_share": len(fraud_accounts) / max(len(fraud_accounts) + len(benign), 1),
        "thresholds": {"account": core["pipeline"].account.params.threshold,
                       "catalog": (core["pipeline"].catalog.params.catalog_threshold
                                   if core["pipeline"].catalog.params.catalog_threshold is not None
                                   else core["pipeline"].catalog.params.threshold),
                       "calibration": (thresholds or {}).get("report")}
        if hasattr(core["pipeline"].account, "params") and hasattr(core["pipeline"].catalog, "params") else None,
        "core": {"per_scenario": res, **summ, "alerts_by_detector": dict(by_detector),
                 "events_per_second": len(lab) / max(core["seconds"], 1e-9)},
        "hard_negatives": {k: {"accounts": len(v), "flagged": sum(1 for a in v if a in acc_first)}
                           for k, v in sorted(hn_acc.items())},
        "baselines": {},
    }
    result["_timeline"] = {"alerts": [(t, x in fraud_accounts) for x, t in pairs]}
    result["_curves"] = {g: ([acc_score.get(a, -1e9) for a in sorted(p)], [acc_score.get(a, -1e9) for a in sorted(benign)])
                         for g, p in groups.items()}
    if baselines:
        s_ = settings or Settings()
        runs = {"rules": lambda: rules_baseline(core["batches"], s_),
                "river_hst": lambda: river_hst_baseline(b, seed),
                "pyod_iforest": lambda: iforest_baseline(b, seed)}
        for name, fn in runs.items():
            r = fn()
            per, sm = _metrics(groups, r["score"], r["first_alert"], r["alerts"], fraud_start, benign, days)
            result["baselines"][name] = {"per_scenario": per, **sm}
    return result


def mean_pr_auc(per_scenario: dict, levels=("L1", "L2")) -> float | None:
    """Mean account-level PR-AUC over scenario groups at ``levels``."""
    v = [r["pr_auc_account"] for g, r in per_scenario.items() if g.split(":")[-1] in levels]
    return float(np.mean(v)) if v else None
