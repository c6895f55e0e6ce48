"""Core throughput of the play-fraud models (in process, no Kafka).

Runs ``stream.pipeline.Pipeline(models="full")`` (both stages, all play
detectors) over the real replay (every account's newest 365-day piece shifted
onto one window, event-time order) in micro-batches of 2,000, and prints
events/s on one core, bytes of account-stage state per active account and
bytes of the catalog stage's account table per account it holds.

Timed: ``Pipeline.process`` only (not file parsing or batch slicing). Before
timing, the numba kernels are compiled the way the worker does at start-up
(:func:`stream.pipeline.warm_up`) and ``--warmup`` batches are run. Two
figures are printed: wall time (``perf_counter``) and CPU time of this process
(``process_time``); on a shared machine the CPU-time figure is the one-core
throughput, wall time also counts waiting for a core (quote ``uptime``).

Usage: ``.venv/bin/python bench/core_throughput.py [--max-accounts N] [--days D]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# bench/ holds a detectors.py script: keep it from shadowing the package
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in ("", _HERE)] + [str(Path(_HERE).parent)]

import numpy as np  # noqa: E402

from stream.adapters import load_listening  # noqa: E402
from stream.config import Settings  # noqa: E402
from stream.fraud.simulate import prepare_background  # noqa: E402
from stream.pipeline import Pipeline, warm_up  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-accounts", type=int, default=None)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--max-events", type=int, default=2_000_000)
    ap.add_argument("--warmup", type=int, default=50, help="batches run before timing (JIT)")
    args = ap.parse_args()
    s = Settings()
    raw = load_listening(s.listening_path, max_accounts=args.max_accounts)
    b = prepare_background(raw, days=args.days)
    n = min(len(b), args.max_events)
    b = b.take(np.arange(n))
    batches = [b.take(np.arange(o, min(o + args.batch, n))) for o in range(0, n, args.batch)]
    warm_up(s, "full")  # the worker compiles its kernels before consuming, too
    pipe = Pipeline(s, models="full")
    warm = min(args.warmup, len(batches) - 1)
    for x in batches[:warm]:  # numba JIT of detectors and calibrator merges
        pipe.process(x)
    t, c = time.perf_counter(), time.process_time()
    for x in batches[warm:]:
        pipe.process(x)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    n_timed = sum(len(x) for x in batches[warm:])
    acc = pipe.account
    n_acc = max(acc.entity_counts()["account"], 1)
    per_acc = acc.features.accounts.nbytes() / n_acc
    print(f"events timed: {n_timed:,} in {len(batches) - warm} batches of {args.batch:,}")
    print(f"wall seconds: {dt:.2f}  events/s (wall, both stages): {n_timed / dt:,.0f}")
    print(f"CPU seconds: {dc:.2f}  events/s (CPU time, one core, both stages): {n_timed / dc:,.0f}"
          f"  ({1000 * dc / max(len(batches) - warm, 1):.2f} ms per batch)")
    print(f"active accounts: {n_acc}; account-stage bytes per active account (account table): {per_acc:,.0f}")
    print(f"account-stage total bytes per account (with IP/device sketches): {acc.features.nbytes() / n_acc:,.0f}")
    print(f"catalog-stage bytes: {pipe.catalog.features.nbytes():,}")
    cat = pipe.catalog.features.accounts
    print(f"catalog-stage bytes per account (its account table, {len(cat)} accounts): "
          f"{cat.nbytes() / max(len(cat), 1):,.0f}")
    import os

    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
