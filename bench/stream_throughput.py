"""Stream throughput and alert latency on the embedded broker (not a test).

One run, same data, same broker:

1. ``full``: the worker with every play detector (two stages: account stage
   forwarding batches to the catalog stage), with ``--workers`` processes;
2. ``noop two-stage``: the same topology and worker with no-op models
   (CONVENTIONS.md, "compare like with like");
3. ``noop one-stage``: a single Faust agent that takes and acks;
4. ``aiokafka getmany``: a raw consumer.

Each run consumes the same backlog of real replayed plays; events/s is plays
divided by the time from the first to the last processed batch (read from
the worker's offset audit file). Then a paced run produces at ``--pace`` x the
measured full throughput and reads p50 / p99 of
``playguard_alert_latency_seconds`` from ``/metrics``.

Usage::

    python bench/stream_throughput.py [--plays 200000] [--workers 1] [--partitions 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from stream.adapters import load_listening  # noqa: E402
from stream.broker import EmbeddedBroker, free_port  # noqa: E402
from stream.config import Settings  # noqa: E402
from stream.replay import plan_replay, produce_plays  # noqa: E402
from stream.topics import ensure_topics  # noqa: E402


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """High watermarks from a fetch (ListOffsets under-reports on Tansu)."""
    c = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        out: dict[int, int] = {}
        deadline = time.monotonic() + 20
        while len(out) < len(tps) and time.monotonic() < deadline:
            await c.getmany(timeout_ms=200, max_records=1)
            for tp in tps:
                hw = c.highwater(tp)
                if hw is not None:
                    out[tp.partition] = hw
        return out
    finally:
        await c.stop()


def run_worker_backlog(settings: Settings, models: str, n_plays: int, workers: int, tmp: Path) -> dict:
    """Start ``workers`` worker processes on a pre-loaded topic set; time them."""
    audit = tmp / f"audit-{models}-{settings.topic_prefix}jsonl"
    env = {**os.environ, "PLAYGUARD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PLAYGUARD_TOPIC_PREFIX": settings.topic_prefix, "PLAYGUARD_PARTITIONS": str(settings.partitions),
           "PLAYGUARD_APP_ID": settings.topic_prefix + "bench", "PLAYGUARD_METRICS_HOST": "127.0.0.1"}
    procs = []
    for i in range(workers):
        e = {**env, "PLAYGUARD_METRICS_PORT": str(free_port())}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker", "--models", models, "--no-audio",
             "--audit", str(audit), "--loglevel", "error"],
            env=e, cwd=REPO, stdout=open(tmp / f"worker-{models}-{i}.log", "wb"), stderr=subprocess.STDOUT))
    plays_end = asyncio.run(end_offsets(settings, settings.topics.plays))
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            time.sleep(1.0)
            if not audit.exists():
                continue
            rows = [json.loads(x) for x in audit.read_text().splitlines() if x.strip()]
            acc = [r for r in rows if r["stage"] == "account"]
            cat = [r for r in rows if r["stage"] == "catalog"]
            done_acc = all(max((r["last"] for r in acc if r["partition"] == p), default=-1) >= end - 1
                           for p, end in plays_end.items())
            if not done_acc:
                continue
            fwd_end = asyncio.run(end_offsets(settings, settings.topics.plays_by_artist))
            done_cat = all(max((r["last"] for r in cat if r["partition"] == p), default=-1) >= end - 1
                           for p, end in fwd_end.items() if end > 0)
            if done_cat:
                t0 = min(r["t"] for r in acc)
                t1 = max(r["t"] for r in rows)
                first_batch = min(acc, key=lambda r: r["t"])["n"]
                plays = sum(r["valid"] for r in acc)
                return {"plays": plays, "seconds": t1 - t0,
                        "events_per_s": (plays - first_batch) / max(t1 - t0, 1e-9)}
        raise RuntimeError(f"{models}: backlog not drained in time; see {tmp}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


ONE_STAGE = r'''
import os, sys, time, faust
bs, topic, n, partitions, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.argv = [sys.argv[0]] + sys.argv[6:]
app = faust.App("noop1-" + topic, broker=f"kafka://{bs}", value_serializer="raw", key_serializer="raw",
                web_enabled=False, store="memory://", topic_disable_leader=True, topic_allow_declare=False,
                consumer_auto_offset_reset="earliest", broker_rebalance_timeout=10, broker_session_timeout=6,
                broker_heartbeat_interval=1, broker_max_poll_interval=300, stream_wait_empty=False,
                datadir="/tmp/playguard-noop1")
t = app.topic(topic, value_type=bytes, key_type=bytes, partitions=partitions)
seen = {"n": 0, "t0": None}
@app.agent(t)
async def noop(stream):
    async for evs in stream.noack().take_events(2000, within=0.2):
        if seen["t0"] is None:
            seen["t0"] = time.time(); seen["first"] = len(evs)
        seen["n"] += len(evs)
        for e in evs:
            e.ack()
        if seen["n"] >= n:
            open(out, "w").write(f"{seen['n'] - seen['first']} {time.time() - seen['t0']}")
            os._exit(0)
app.main()
'''


def run_one_stage(settings: Settings, n: int, tmp: Path) -> dict:
    """The one-stage no-op Faust agent on the plays topic."""
    script = tmp / "noop1.py"
    script.write_text(ONE_STAGE)
    out = tmp / "noop1.out"
    proc = subprocess.Popen([sys.executable, str(script), settings.bootstrap_servers, settings.topics.plays,
                             str(n), str(settings.partitions), str(out), "worker", "-l", "error"],
                            stdout=open(tmp / "noop1.log", "wb"), stderr=subprocess.STDOUT, cwd=tmp)
    proc.wait(timeout=600)
    k, secs = out.read_text().split()
    return {"plays": n, "seconds": float(secs), "events_per_s": int(k) / float(secs)}


async def run_getmany(settings: Settings, n: int) -> dict:
    """Raw aiokafka ``getmany`` over the same topic (no group)."""
    c = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        tps = [TopicPartition(settings.topics.plays, p) for p in range(settings.partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        got = 0
        t0 = None
        while got < n:
            r = await c.getmany(timeout_ms=500, max_records=5000)
            k = sum(len(v) for v in r.values())
            if k and t0 is None:
                t0 = time.perf_counter()
                first = k
            got += k
        secs = time.perf_counter() - t0
        return {"plays": got, "seconds": secs, "events_per_s": (got - first) / secs}
    finally:
        await c.stop()


def latency_run(settings: Settings, plan, rate: float, seconds: float, tmp: Path) -> dict:
    """Produce at ``rate`` plays/s for ``seconds`` to a live worker; read the
    latency histogram (p50, p99 by linear interpolation in buckets)."""
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request

    port = free_port()
    env = {**os.environ, "PLAYGUARD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PLAYGUARD_TOPIC_PREFIX": settings.topic_prefix, "PLAYGUARD_PARTITIONS": str(settings.partitions),
           "PLAYGUARD_APP_ID": settings.topic_prefix + "lat", "PLAYGUARD_METRICS_PORT": str(port),
           "PLAYGUARD_METRICS_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--no-audio", "--loglevel", "error"],
                            env=env, cwd=REPO, stdout=open(tmp / "worker-lat.log", "wb"), stderr=subprocess.STDOUT)
    try:
        # wait until the worker owns its partitions (the lag gauge appears on
        # assignment): group joins on the embedded broker wait for the
        # rebalance timeout, and a backlog would inflate the latency
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    if f'topic="{settings.topics.plays}"' in r.read().decode().split("playguard_consumer_lag_records", 1)[-1]:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        time.sleep(2)
        n = int(rate * seconds)
        part = plan.take(np.arange(min(n, len(plan))))
        span = float(part.ts[-1] - part.ts[0]) or 1.0
        asyncio.run(produce_plays(settings, part, speedup=span / seconds))
        time.sleep(5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    buckets = []
    count = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "playguard_alert_latency_seconds_bucket" and s.labels.get("kind") == "play_fraud":
                buckets.append((float(s.labels["le"]), s.value))
            if s.name == "playguard_alert_latency_seconds_count" and s.labels.get("kind") == "play_fraud":
                count = s.value
    buckets.sort()

    def q(p):
        if not count:
            return None
        target = p * count
        prev_le, prev_c = 0.0, 0.0
        for le, c in buckets:
            if c >= target:
                if le == float("inf"):
                    return prev_le
                return prev_le + (le - prev_le) * (target - prev_c) / max(c - prev_c, 1e-9)
            prev_le, prev_c = le, c
        return None

    return {"alerts": int(count), "p50_s": q(0.5), "p99_s": q(0.99), "rate": rate, "plays": len(part)}


def latency_plan(raw):
    """Real plays with labelled fraud injected (so that alerts are raised):
    the newest 7 days of every history, 200 benign accounts, L1 fraud."""
    plan = plan_replay(raw, time.time(), 7)
    try:
        from stream.fraud.simulate import simulate
    except ImportError:
        return plan
    return simulate(plan, n_accounts=200, fraud_share=0.03, levels=("L1",), seed=11).batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plays", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--pace", type=float, default=0.5, help="latency run rate as a share of full throughput")
    ap.add_argument("--latency-seconds", type=float, default=60.0)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--latency-rate", type=float, default=None,
                    help="only run the latency part, at this many plays/s")
    args = ap.parse_args()

    base = Settings()
    raw = load_listening(base.listening_path)
    plan = plan_replay(raw, time.time(), 365)
    plan = plan.take(np.arange(len(plan) - min(args.plays, len(plan)), len(plan)))
    n = len(plan)
    tmp = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}; plays: {n:,} real replayed; partitions: {args.partitions}; "
          f"workers (full, noop two-stage): {args.workers}")
    results = {}
    with EmbeddedBroker(log_path=tmp / "broker.log") as b:
        def settings_for(prefix):
            return Settings(bootstrap_servers=b.bootstrap, topic_prefix=prefix, partitions=args.partitions)

        sets = {k: settings_for(f"bench{k}.") for k in ("full", "noop", "one", "lat")}
        if args.latency_rate:
            asyncio.run(ensure_topics(sets["lat"]))
            lat = latency_run(sets["lat"], latency_plan(raw), args.latency_rate, args.latency_seconds, tmp)
            print(f"alert latency at {lat['rate']:,.0f} plays/s ({lat['plays']:,} plays, {lat['alerts']} alerts): "
                  f"p50 {lat['p50_s']} s, p99 {lat['p99_s']} s")
            return
        for key in ("full", "noop", "one"):
            s = sets[key]
            asyncio.run(ensure_topics(s))
            asyncio.run(produce_plays(s, plan))
        results["full pipeline (all play detectors)"] = run_worker_backlog(sets["full"], "full", n, args.workers, tmp)
        results["no-op two-stage (same topology)"] = run_worker_backlog(sets["noop"], "noop", n, args.workers, tmp)
        results["no-op one-stage Faust agent"] = run_one_stage(sets["one"], n, tmp)
        results["raw aiokafka getmany"] = asyncio.run(run_getmany(sets["one"], n))
        lat = None
        if not args.skip_latency:
            asyncio.run(ensure_topics(sets["lat"]))
            rate = args.pace * results["full pipeline (all play detectors)"]["events_per_s"]
            lat = latency_run(sets["lat"], latency_plan(raw), rate, args.latency_seconds, tmp)

    print(f"\n{'run':40s} {'plays':>9s} {'seconds':>8s} {'events/s':>10s}")
    for k, r in results.items():
        print(f"{k:40s} {r['plays']:9,d} {r['seconds']:8.1f} {r['events_per_s']:10,.0f}")
    full = results["full pipeline (all play detectors)"]["events_per_s"]
    noop = results["no-op two-stage (same topology)"]["events_per_s"]
    print(f"\nfull / no-op two-stage = {full / noop:.2f} (target >= 0.80)")
    if lat:
        p50 = f"{lat['p50_s']:.3f}" if lat["p50_s"] is not None else "n/a"
        p99 = f"{lat['p99_s']:.3f}" if lat["p99_s"] is not None else "n/a"
        print(f"alert latency at {lat['rate']:,.0f} plays/s ({lat['plays']:,} plays, {lat['alerts']} alerts): "
              f"p50 {p50} s, p99 {p99} s")
    (tmp / "results.json").write_text(json.dumps({"results": results, "latency": lat}, indent=2))
    print(f"raw results: {tmp / 'results.json'}")


if __name__ == "__main__":
    main()
