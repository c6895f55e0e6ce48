"""Core throughput of the play-fraud models (in process, no Kafka).

Runs ``stream.pipeline.Pipeline(models="full")`` (both stages, all play
detectors) over the real replay (every account's newest 365-day piece shifted
onto one window, event-time order) in micro-batches of 2,000, and prints
events/s on one core and bytes of account-stage state per active account.

Usage: ``.venv/bin/python bench/core_throughput.py [--max-accounts N] [--days D]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stream.adapters import load_listening
from stream.config import Settings
from stream.fraud.simulate import prepare_background
from stream.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-accounts", type=int, default=None)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--max-events", type=int, default=600_000)
    args = ap.parse_args()
    s = Settings()
    raw = load_listening(s.listening_path, max_accounts=args.max_accounts)
    b = prepare_background(raw, days=args.days)
    n = min(len(b), args.max_events)
    b = b.take(np.arange(n))
    batches = [b.take(np.arange(o, min(o + args.batch, n))) for o in range(0, n, args.batch)]
    pipe = Pipeline(s, models="full")
    pipe.process(batches[0])  # JIT warm-up of numba detectors
    t = time.perf_counter()
    for x in batches[1:]:
        pipe.process(x)
    dt = time.perf_counter() - t
    acc = pipe.account
    n_acc = max(acc.entity_counts()["account"], 1)
    per_acc = acc.features.accounts.nbytes() / n_acc
    print(f"events: {n - len(batches[0]):,}  seconds: {dt:.2f}  events/s: {(n - len(batches[0])) / dt:,.0f}")
    print(f"account-stage bytes per active account (account table only): {per_acc:,.0f}")
    print(f"account-stage total bytes per account (with IP/device sketches): {acc.features.nbytes() / n_acc:,.0f}")
    print(f"catalog-stage bytes: {pipe.catalog.features.nbytes():,}")


if __name__ == "__main__":
    main()
