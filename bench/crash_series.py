"""The crash scenario five times in a row (issue 13; not in CI).

Each run is :func:`tests.test_reliability_crash.run_crash_scenario`: two
``playguard worker`` processes in one consumer group on the embedded broker, a
paced replay of 12k real plays, one worker SIGKILLed mid-stream and restarted.
Every run uses fresh topics and a fresh consumer group on one broker.

Printed per run: offsets left unprocessed (must be 0), snapshots that do not
cover their partition's last offset (0), alerts expected / unique / raw, lost
and invented alert ids (0), alert ids whose copies disagree (0), partitions
whose recovered state differs from the in-process reference (0), records read
again after the crash, partitions handed over, and wall times.

Usage::

    python bench/crash_series.py [--runs 5] [--events 12000] [--rate 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.broker import EmbeddedBroker  # noqa: E402
from tests.test_reliability_crash import run_crash_scenario  # noqa: E402


def verdict(r: dict) -> bool:
    """True when a run kept every guarantee."""
    return (not r.get("uncovered") and not r.get("snapshots_behind") and not r.get("missing")
            and not r.get("unexpected") and not r.get("inconsistent") and not r.get("state_mismatch")
            and bool(r.get("moved")) and all(c == 0 for c in r.get("exit_codes", [])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--events", type=int, default=12_000)
    ap.add_argument("--rate", type=float, default=400.0)
    ap.add_argument("--kill-at", type=float, default=0.35)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="playguard-crash-"))
    broker = EmbeddedBroker(log_path=work / "broker.log").start()
    rows = []
    try:
        for i in range(a.runs):
            t0 = time.monotonic()
            load = os.getloadavg()[0]
            try:
                r = run_crash_scenario(broker.bootstrap, work / f"run{i + 1}", n_events=a.events, rate=a.rate,
                                       kill_at=a.kill_at, log=lambda m: None)
            except Exception as exc:  # noqa: BLE001 - a failed run is a result
                r = {"error": f"{type(exc).__name__}: {exc}"}
            r["run"], r["wall_s"], r["load1"] = i + 1, time.monotonic() - t0, load
            r["ok"] = "error" not in r and verdict(r)
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k not in ("missing", "unexpected")}, default=str),
                  file=sys.stderr, flush=True)
    finally:
        broker.stop()

    hdr = ("run", "ok", "uncov", "snap_behind", "alerts exp/uniq/raw", "lost", "invented", "incons",
           "state_diff", "reread", "moved", "wall_s", "load1")
    print(" | ".join(hdr))
    print(" | ".join("---" for _ in hdr))
    for r in rows:
        if "error" in r:
            print(f"{r['run']} | FAIL | {r['error']}")
            continue
        print(" | ".join(str(x) for x in (
            r["run"], "yes" if r["ok"] else "NO", sum(r["uncovered"].values()), len(r["snapshots_behind"]),
            f"{r['alerts_expected']}/{r['alerts_unique']}/{r['alerts_raw']}", len(r["missing"]),
            len(r["unexpected"]), len(r["inconsistent"]), len(r["state_mismatch"]), r["reread"],
            len(r.get("moved", [])), f"{r['wall_s']:.0f}", f"{r['load1']:.1f}")))
    n_ok = sum(r["ok"] for r in rows)
    print(f"\n{n_ok}/{len(rows)} runs kept every guarantee")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0 if n_ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
