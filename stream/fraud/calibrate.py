"""Alert thresholds from a false-positive budget on clean traffic (issue 11).

The issue asks that "the threshold comes from a false-positive budget ... set
on clean traffic, not from a hand-picked number". :func:`calibrate_thresholds`
runs the worker's core (both stages, :func:`stream.fraud.evaluate.run_core`)
over a stream with no fraud, takes each stage's daily maximum account score
(an account alerts at most once per detector and UTC day, so one score per
active account and day decides whether it alerts), feeds those maxima to a
:class:`detectors.calibration.QuantileCalibrator` (merging t-digest, Dunning &
Ertl 2019) per stage and sets each threshold with
:meth:`~detectors.calibration.QuantileCalibrator.set_budget`: the score that
``budget / 2`` alerts per 1,000 accounts per day would cross on that clean
traffic (the two account-alerting stages share the budget). A floor keeps a
threshold from falling below ``floor`` nats when the clean stream is small.

Example::

    from stream.fraud.simulate import simulate
    clean = simulate(background, n_accounts=1000, scenarios=[], seed=10_007)
    thr = calibrate_thresholds(clean, budget=0.5)
    # {"threshold": ..., "catalog_threshold": ..., "report": {...}}
"""

from __future__ import annotations

import numpy as np

from stream.config import Settings
from stream.fraud.simulate import Labelled

DAY = 86400.0

#: Stage name (``score_sink``) -> :class:`~stream.fraud.models.FraudParams` field.
STAGE_FIELD = {"account": "threshold", "catalog": "catalog_threshold"}


def account_day_maxima(account_id: list[str], ts: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Maximum score per (account, UTC day) with at least one play.

    Args:
        account_id: n account ids.
        ts: float64 (n,) event times, Unix seconds.
        scores: float64 (n,) scores (nats) the account had after each event's batch.

    Returns:
        float64 (k,) maxima, one per active account-day.

    Raises:
        ValueError: on unequal lengths.
    """
    ts = np.asarray(ts, np.float64)
    scores = np.asarray(scores, np.float64)
    if not (len(account_id) == len(ts) == len(scores)):
        raise ValueError(f"unequal lengths: {len(account_id)}, {len(ts)}, {len(scores)}")
    if not len(ts):
        return np.zeros(0)
    _, acc = np.unique(np.asarray(account_id, dtype=object), return_inverse=True)
    day = np.floor(ts / DAY).astype(np.int64)
    key = acc.astype(np.int64) * (int(day.max() - day.min()) + 1) + (day - day.min())
    uk, inv = np.unique(key, return_inverse=True)
    out = np.full(len(uk), -np.inf)
    np.maximum.at(out, inv, scores)
    return out


def calibrate_thresholds(clean: Labelled, settings: Settings | None = None, budget: float = 0.5,
                         floor: float = 6.0, batch_size: int = 2000,
                         batch_seconds: float | None = 300.0) -> dict:
    """Thresholds (nats) of the account-alerting detectors from a budget on clean traffic.

    Args:
        clean: a labelled stream; only its benign events are used (fraud
            events, if any, are dropped first).
        settings: PlayGuard settings for the core.
        budget: false alerts per 1,000 accounts per day allowed on ``clean``
            (over both stages; the issue's target is 1).
        floor: lowest threshold returned (nats).
        batch_size, batch_seconds: micro-batching, as in eval.

    Returns:
        dict: ``threshold`` and ``catalog_threshold`` (nats, for
        :class:`~stream.fraud.models.FraudParams`), and ``report`` with, per
        stage, the active account-days, the tail probability targeted and
        the raw calibrated threshold before the floor.

    Raises:
        ValueError: if ``budget`` <= 0 or the clean stream has no benign event.
    """
    from detectors.calibration import QuantileCalibrator
    from stream.fraud.evaluate import run_core

    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    if clean.is_fraud.any():
        clean = clean.take(~clean.is_fraud)
    if not len(clean):
        raise ValueError("clean stream has no benign event")
    core = run_core(clean, settings, batch_size, batch_seconds)
    b = clean.batch
    n_acc = len(set(b.account_id))
    days = max((float(b.ts.max()) - float(b.ts.min())) / DAY, 1.0 / 24)
    out: dict = {"report": {"accounts": n_acc, "days": days, "budget_per_1000_per_day": budget}}
    for stage, field in STAGE_FIELD.items():
        scores = core["stage_scores"].get(stage)
        if scores is None:
            continue
        mx = account_day_maxima(b.account_id, b.ts, scores)
        cal = QuantileCalibrator()
        cal.learn_many(mx)
        per_day = len(mx) / (n_acc * days)  # scores per account per day
        raw = cal.set_budget(budget / len(STAGE_FIELD), scores_per_entity_per_day=per_day)
        out[field] = float(max(raw, floor))
        out["report"][stage] = {"account_days": int(len(mx)), "tail_probability": cal.target_tail_probability_,
                                "raw_threshold": float(raw), "max_clean_score": float(mx.max())}
    return out
