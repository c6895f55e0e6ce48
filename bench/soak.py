"""Soak test: a steady replay at 80% of the measured maximum throughput (not a test).

Issue 13, "Load". Steps, on the embedded broker (or ``--bootstrap``):

1. plan a replay of the real listening data with ``playguard replay --loop N``
   semantics (every pass has fresh event ids and tiles the time before the
   start, so nothing is dropped as a duplicate). One pass is planned with
   :func:`stream.replay.plan_replay` and the N passes are generated from it
   as they are sent (:class:`LazyPasses`, the same plays, times and ids as
   ``plan_replay(..., loop=N)``), so memory does not grow with N; N is at
   least ``--loop`` and at least :data:`MIN_PASSES`, because the worker's
   maximum (17k plays/s on 2 loaded cores) needs several passes for 10 minutes;
2. **maximum throughput**: start one worker (``--models``, default ``full``)
   and send the first ``--backlog`` planned plays as fast as possible; the
   maximum is the backlog divided by the time from the first consumed play
   until both stages are done with it (``plays`` all consumed, no lag and no
   more records on ``plays.by_artist``), with the producer running beside the
   worker (on a 2-core machine they share the CPUs, as in the soak). The
   account stage's rate over its batches is reported too. ``--rate`` skips
   this step;
3. **soak**: send the following plays at ``--load`` (default 0.8) x that rate
   for ``--minutes`` (default 10), sampling every ``--every`` seconds the
   worker's RSS (``/proc/<pid>/status``), consumer lag
   (``playguard_consumer_lag_records`` on ``plays`` and, as ``lag_fwd``, on
   ``plays.by_artist``, from fetch high watermarks), the
   ``playguard_alert_latency_seconds`` histogram and the CPU used by the
   worker, the broker and this process (the producer), as a share of one core
   (``/proc/<pid>/stat``), so a run on a shared machine shows whether the
   worker got the CPU the rate needs;
4. report RSS growth after the warm-up (first ``--warmup`` fraction of the
   soak), p50/p99 alert latency over the soak window (bucket counts at the end
   minus those at the start, interpolated as PromQL ``histogram_quantile``
   does), lag, achieved rate and the machine load (``os.getloadavg``).

Targets (issue 13): RSS growth <= 10% after warm-up; p99 latency <= 1 s.

With ``--split-stages`` the worker is two processes, ``playguard worker
--stages account`` and ``--stages catalog`` (each in its own consumer
group); RSS and CPU are their sums, metrics are scraped from both and added
up, and each writes its own trace.

With ``--trace`` the worker writes its latency trace
(``PLAYGUARD_TRACE_PATH``, :class:`stream.driver.LatencyTrace`) and the
summary adds, over the window after the warm-up: exact alert-latency
quantiles (the histogram's are interpolated within buckets), where the
slowest alerts spent their time (waiting before the driver vs. in the
batch), batch, snapshot and event-loop-stall figures, and the lag at the
slow alerts.

Usage::

    python bench/soak.py [--minutes 10] [--rate R] [--load 0.8] [--loop N] [--trace] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaProducer  # noqa: E402

from stream.adapters import load_listening  # noqa: E402
from stream.batch import PlayBatch  # noqa: E402
from stream.broker import EmbeddedBroker  # noqa: E402
from stream.config import Settings  # noqa: E402
from stream.replay import encode_rows, plan_replay  # noqa: E402
from stream.runtime import kafka_partition  # noqa: E402
from tests.kafka_helpers import WorkerProcess  # noqa: E402

LATENCY = "playguard_alert_latency_seconds"
#: Fewest replay passes planned (1.7M plays each on the real data; ``--loop``
#: may ask for more). Pass 1 lies MIN_PASSES years back: after 2000-01-01,
#: the oldest time a play may carry. 24 passes (40.8M plays) cover the maximum
#: measurement (~8M) and 10 minutes at 50k plays/s; 16 ran out at 33k/s.
MIN_PASSES = 24


class LazyPasses:
    """``plan_replay(batch, start, loop=N)`` generated slice by slice.

    Pass k (1..N) is the one-pass plan with ``ts`` moved back by (N - k)
    windows of ``window_days`` and the ``:p1`` id suffix replaced by
    ``:p<k>``, which is what :func:`stream.replay.plan_replay` gives for
    ``loop=N`` (passes tile the time before the start and sort pass by pass).

    Args:
        one_pass: ``plan_replay(batch, start, window_days=..., loop=1)``.
        passes: N (>= 1).
        window_days: the replay window L, days.

    Raises:
        ValueError: if ``passes`` < 1 or an event id lacks the ``:p1`` suffix.
    """

    def __init__(self, one_pass: PlayBatch, passes: int, window_days: int = 365):
        if passes < 1:
            raise ValueError("passes must be at least 1")
        if any(not e.endswith(":p1") for e in one_pass.event_id[:100]):
            raise ValueError("one_pass must come from plan_replay(..., loop=1)")
        self.base, self.passes, self.window_s = one_pass, passes, window_days * 86400.0
        self.stem = [e[:-3] for e in one_pass.event_id]

    def __len__(self) -> int:
        return self.passes * len(self.base)

    def take(self, idx) -> PlayBatch:
        """Rows ``idx`` (ints in ``[0, len)``) of the N-pass plan."""
        idx = np.asarray(idx, np.int64)
        n = len(self.base)
        k, j = idx // n, idx % n  # k: 0-based pass
        part = self.base.take(j)
        part.ts = part.ts - (self.passes - 1 - k) * self.window_s
        part.record_ts = part.ts.copy()
        part.event_id = [f"{self.stem[i]}:p{kk + 1}" for i, kk in zip(j.tolist(), k.tolist())]
        return part


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_s(pids) -> float:
    """User + system CPU seconds so far of ``pids`` (one pid or a list),
    summed (``/proc/<pid>/stat``)."""
    total = 0.0
    for pid in [pids] if isinstance(pids, int) else pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Workers:
    """The soak's worker processes (one, or one per play stage): started and
    stopped together; a scrape is the concatenation of their ``/metrics``
    texts, so :func:`metric` and :func:`histogram` add them up."""

    def __init__(self, workers: list):
        self.workers = workers

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def scrape(self) -> str:
        return "\n".join(w.scrape() for w in self.workers)

    def check(self) -> None:
        """Raises RuntimeError if a worker exited."""
        for w in self.workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {w.proc.returncode}")

    def stop(self, sig, timeout: float) -> None:
        for w in self.workers:
            w.stop(sig, timeout)


def histogram(text: str, name: str, **labels) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of histogram ``name`` in a scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name + "_bucket" and all(s.labels.get(k) == v for k, v in labels.items()):
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + s.value
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Quantile ``q`` from cumulative buckets, linear within a bucket (as
    PromQL ``histogram_quantile``). None when the histogram is empty.

    Args:
        q: quantile in [0, 1].
        buckets: ``{upper bound: cumulative count}``, including ``+Inf``.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if b == float("inf"):
                return prev_b
            if c == prev_c:
                return b
            return prev_b + (b - prev_b) * (rank - prev_c) / (c - prev_c)
        prev_b, prev_c = b, c
    return bounds[-1]


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` matching ``labels`` in a scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    tot = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                tot += s.value
    return tot


class Producer:
    """Sends planned plays in order from a background thread at a settable rate
    (plays/s; 0 = as fast as possible), in steps of ``every`` seconds.

    It shares the 2 cores with the worker and the broker, so it builds one
    record batch per destination partition (aiokafka ``create_batch`` /
    ``send_batch``; partition = murmur2 of the account id, as Kafka's default
    partitioner, :func:`stream.runtime.kafka_partition`) instead of one
    ``send`` per play; each record's timestamp is set when it is appended
    (CreateTime, the start of ``playguard_alert_latency_seconds``).

    ``every`` sets how many record batches the broker stores: one per
    destination partition and step. The embedded broker's fetch cost grows
    with the batches stored in a partition (RELIABILITY.md, "The embedded
    broker's fetch cost"), so 50 ms steps (20 batches/s per partition) made
    its CPU grow 3x faster than 250 ms steps in the same 2 minutes.
    ``batch_bytes`` caps a record batch (960 KiB, under the workers' 1-MiB
    fetch size): with 512 KiB, a 250-ms step at 36k plays/s (~520 KB per
    partition) wrote two batches per partition. ``nice`` (> 0) lowers the
    priority of the sending thread, which stands for clients on other
    machines.

    Raises:
        ValueError: if ``every`` or ``batch_bytes`` is not positive.
    """

    def __init__(self, s: Settings, batch: PlayBatch, every: float = 0.25, batch_bytes: int = 960 * 1024,
                 nice: int = 0):
        if every <= 0 or batch_bytes <= 0:
            raise ValueError("every and batch_bytes must be positive")
        self.s, self.batch, self.every, self.batch_bytes, self.nice = s, batch, every, batch_bytes, nice
        self._part: dict[str, int] = {}
        self.sent = 0
        self.limit = 0
        self.rate = 0.0
        self.stop = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            if self.nice:
                # this thread only (Linux: a thread is a task with its own nice value)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    async def _main(self):
        p = AIOKafkaProducer(bootstrap_servers=self.s.bootstrap_servers, linger_ms=10,
                             max_batch_size=self.batch_bytes, max_request_size=2 * self.batch_bytes + 65536,
                             acks=1, **self.s.kafka_client_kwargs())
        await p.start()
        try:
            topic = self.s.topics.plays
            t_last, credit = time.monotonic(), 0.0
            while not self.stop:
                now = time.monotonic()
                if self.rate > 0:
                    credit = min(credit + (now - t_last) * self.rate, self.rate)  # at most 1 s of burst
                    n = int(credit)
                else:
                    n = 5000
                t_last = now
                n = min(n, self.limit - self.sent)
                if n <= 0:
                    await asyncio.sleep(self.every)
                    continue
                part = self.batch.take(np.arange(self.sent, self.sent + n))
                await self._send(p, topic, part)
                self.sent += n
                credit = credit - n if self.rate > 0 else 0.0
                if self.rate > 0:
                    await asyncio.sleep(self.every)
        finally:
            await p.stop()


    async def _send(self, p: AIOKafkaProducer, topic: str, part: PlayBatch) -> None:
        """Send ``part`` (in order within each partition) and await the acks."""
        by_dest: dict[int, list] = {}
        cache, n = self._part, self.s.partitions
        for acc, v in zip(part.account_id, encode_rows(part)):
            dest = cache.get(acc)
            if dest is None:
                dest = cache[acc] = kafka_partition(acc, n)
            by_dest.setdefault(dest, []).append((acc.encode(), v))
        futs = []
        for dest, recs in by_dest.items():
            b = p.create_batch()
            for k, v in recs:
                if b.append(key=k, value=v, timestamp=None) is None:  # full: send it, start another
                    futs.append(await p.send_batch(b, topic, partition=dest))
                    b = p.create_batch()
                    b.append(key=k, value=v, timestamp=None)
            futs.append(await p.send_batch(b, topic, partition=dest))
        await asyncio.gather(*futs)


def audit_rate(path: Path, n: int) -> tuple[float, int]:
    """Plays/s over the account-stage batches of the audit file (first to last
    batch, the first batch's plays excluded), and plays seen."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if '"account"' in x]
    rows.sort(key=lambda r: r["t"])
    seen = sum(r["n"] for r in rows)
    if len(rows) < 2:
        return 0.0, seen
    return (seen - rows[0]["n"]) / max(1e-9, rows[-1]["t"] - rows[0]["t"]), seen


def sustained_max(prod, w, s: Settings, start: float, probe_s: float, probes: int) -> tuple[float, list]:
    """Maximum sustainable throughput: the highest rate the pipeline holds
    without a growing backlog (Karimov et al., "Benchmarking Distributed
    Stream Data Processing Systems", ICDE 2018: sustainable throughput, as
    opposed to the peak rate of a burst).

    Probes ``start``, then 85% of the previous rate after each failure, for
    ``probe_s`` seconds each (at most ``probes``). A probe passes when the
    records waiting on ``plays`` + ``plays.by_artist`` at its end are at most
    one second of its rate and not above their level a third of the way in
    plus half a second of it (a backlog that keeps growing fails). Between
    probes the producer pauses until the backlog is drained. Returns the
    passing rate (or the last probed one if none passed) and the probes as
    ``[{"rate", "lag_mid", "lag_end", "ok"}]``.
    """
    def lag() -> float:
        text = w.scrape()
        return (metric(text, "playguard_consumer_lag_records", topic=s.topics.plays)
                + metric(text, "playguard_consumer_lag_records", topic=s.topics.plays_by_artist))

    def drain(timeout: float = 300.0) -> None:
        prod.limit = prod.sent  # pause
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and lag() > 0:
            time.sleep(1.0)
        time.sleep(2.0)

    out = []
    rate = start
    for _ in range(max(1, probes)):
        drain()
        prod.rate, prod.limit = rate, len(prod.batch)
        t0 = time.monotonic()
        lag_mid = None
        while time.monotonic() - t0 < probe_s:
            time.sleep(2.0)
            if lag_mid is None and time.monotonic() - t0 >= probe_s / 3:
                lag_mid = lag()
        lag_end = lag()
        ok = lag_end <= rate and lag_end <= (lag_mid or 0.0) + 0.5 * rate
        out.append({"rate": rate, "lag_mid": lag_mid, "lag_end": lag_end, "ok": ok})
        print(f"  sustained probe {rate:,.0f} plays/s for {probe_s:.0f} s: lag {lag_mid:,.0f} -> {lag_end:,.0f} "
              f"{'held' if ok else 'backlog grows'}", flush=True)
        if ok:
            break
        rate *= 0.85
    drain()
    return out[-1]["rate"], out


def _q(xs, q: float) -> float | None:
    return float(np.quantile(xs, q)) if len(xs) else None


def trace_summary(paths, t_from: float) -> dict:
    """Figures of worker latency traces (rows written at Unix time >= ``t_from``;
    ``paths``: one trace file or several, one per worker process).

    Returns:
        dict with ``alerts`` (count, exact p50/p99/max latency, the 5 slowest
        with their split and the ``plays`` lag of the batch before them),
        ``batches`` per stage (count, records p50/max, ``handle_s`` /
        ``process_s`` / ``produce_s`` / ``age_oldest_s`` p50/p99/max),
        ``snapshots`` per stage (count, ``lock_s`` p50/max, ``state_s`` max,
        bytes max) and ``stalls`` (count, total and max seconds).
    """
    rows = []
    stalls_by_file = {}
    for path in [paths] if isinstance(paths, Path) else list(paths):
        if not path.exists():
            continue
        n0 = len(rows)
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("t", 0) >= t_from:
                rows.append(r)
        st = [r["s"] for r in rows[n0:] if r["ev"] == "stall"]
        stalls_by_file[path.name] = {"n": len(st), "total_s": float(sum(st)), "max_s": max(st) if st else 0.0}
    rows.sort(key=lambda r: r.get("t", 0))
    out: dict = {}
    al = [r for r in rows if r["ev"] == "alert"]
    lat = np.array([r["latency_s"] for r in al])
    batches = [r for r in rows if r["ev"] == "batch"]
    acc_b = [r for r in batches if r["stage"] == "account"]
    acc_t = np.array([r["t"] for r in acc_b])

    def lag_before(t):
        i = int(np.searchsorted(acc_t, t)) - 1
        return sum(acc_b[i]["lag"].values()) if i >= 0 and acc_b[i]["lag"] else None

    slow = sorted(al, key=lambda r: -r["latency_s"])[:5]
    out["alerts"] = {
        "n": len(al), "p50_s": _q(lat, 0.5), "p99_s": _q(lat, 0.99), "max_s": float(lat.max()) if len(lat) else None,
        "by_stage": {st: len([r for r in al if r["stage"] == st]) for st in ("account", "catalog")},
        "slowest": [{"stage": r["stage"], "detector": r["detector"], "latency_s": r["latency_s"],
                     "before_driver_s": r["age_at_entry_s"], "in_batch_s": r["handle_s"],
                     "plays_lag": lag_before(r["t"])} for r in slow],
    }
    out["batches"] = {}
    for st in ("account", "catalog"):
        b = [r for r in batches if r["stage"] == st]
        if not b:
            continue
        d = {"n": len(b), "records_p50": _q([r["n"] for r in b], 0.5), "records_max": max(r["n"] for r in b)}
        for k in ("handle_s", "process_s", "produce_s", "snapshot_s", "age_oldest_s"):
            v = [r[k] for r in b if r.get(k) is not None]
            d[k] = [_q(v, 0.5), _q(v, 0.99), max(v) if v else None]
        out["batches"][st] = d
    out["snapshots"] = {}
    for st in ("account", "catalog"):
        sn = [r for r in rows if r["ev"] == "snapshot" and r["stage"] == st]
        if sn:
            out["snapshots"][st] = {"n": len(sn), "lock_s_p50": _q([r["lock_s"] for r in sn], 0.5),
                                    "lock_s_max": max(r["lock_s"] for r in sn),
                                    "total_s_max": max(r["lock_s"] + r["send_s"] for r in sn),
                                    "state_s_max": max(r["state_s"] for r in sn),
                                    "bytes_max": max(r["bytes"] for r in sn)}
    st = [r["s"] for r in rows if r["ev"] == "stall"]
    out["stalls"] = {"n": len(st), "total_s": float(sum(st)), "max_s": max(st) if st else 0.0}
    if len(stalls_by_file) > 1:
        out["stalls_by_process"] = stalls_by_file
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=0.0, help="plays/s to hold (skips the max-throughput step)")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the measured maximum to hold")
    ap.add_argument("--loop", type=int, default=MIN_PASSES,
                    help=f"replay passes (playguard replay --loop); at least {MIN_PASSES}, generated lazily")
    ap.add_argument("--backlog", type=int, default=200_000, help="plays used to measure the maximum")
    ap.add_argument("--models", default="full")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the soak treated as warm-up")
    ap.add_argument("--every", type=float, default=15.0, help="sampling period, s")
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--trace", action="store_true", help="worker latency trace; adds its figures to the summary")
    ap.add_argument("--max-method", choices=("sustained", "burst"), default="sustained",
                    help="maximum: the highest probed rate held without a growing backlog (default), "
                         "or the backlog drain rate alone")
    ap.add_argument("--probe-s", type=float, default=45.0, help="seconds each sustained-rate probe holds its rate")
    ap.add_argument("--probes", type=int, default=5, help="at most this many sustained-rate probes")
    ap.add_argument("--produce-batch-kb", type=int, default=960,
                    help="largest record batch the load generator builds, KiB (one per partition and step "
                         "while a step's plays fit)")
    ap.add_argument("--producer-nice", type=int, default=0,
                    help="nice value of the load generator's thread (it stands for clients on other machines)")
    ap.add_argument("--produce-every", type=float, default=0.25,
                    help="seconds between the load generator's sends (one record batch per partition each)")
    ap.add_argument("--split-stages", action="store_true",
                    help="run the account and catalog stages in two worker processes (playguard worker --stages)")
    a = ap.parse_args(argv)

    base = Settings()
    work = Path(tempfile.mkdtemp(prefix="playguard-soak-"))
    broker = None
    if a.bootstrap is None:
        broker = EmbeddedBroker(log_path=work / "broker.log").start()
    bootstrap = a.bootstrap or broker.bootstrap
    prefix = f"soak{int(time.time()) % 10**7}."
    s = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=a.partitions, app_id=prefix + "w")
    env = {"PLAYGUARD_BOOTSTRAP_SERVERS": bootstrap, "PLAYGUARD_TOPIC_PREFIX": prefix,
           "PLAYGUARD_PARTITIONS": str(a.partitions), "PLAYGUARD_APP_ID": prefix + "w"}
    procs = [("account", "catalog")] if not a.split_stages else [("account",), ("catalog",)]
    traces = [work / f"trace.{'-'.join(st)}.jsonl" for st in procs]
    out: dict = {"models": a.models, "minutes": a.minutes, "load_fraction": a.load, "loop": a.loop,
                 "split_stages": a.split_stages, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    w = None
    try:
        t0 = time.monotonic()
        batch = load_listening(base.listening_path)
        passes = max(a.loop, MIN_PASSES)
        plan = LazyPasses(plan_replay(batch, time.time() - 3600, loop=1), passes)
        del batch
        out["passes"] = passes
        print(f"planned {len(plan):,} plays ({passes} passes of {len(plan.base):,}) in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        prod = Producer(s, plan, every=a.produce_every, batch_bytes=a.produce_batch_kb * 1024,
                        nice=a.producer_nice)
        audit = work / "audit.jsonl"
        workers = []
        for st, tr in zip(procs, traces):
            e = dict(env, PLAYGUARD_TRACE_PATH=str(tr)) if a.trace else env
            workers.append(WorkerProcess(e, ["--models", a.models, "--no-audio", "--audit", str(audit),
                                             "--stages", ",".join(st)], log=work / f"worker.{'-'.join(st)}.log"))
        w = Workers(workers)
        w.start()
        prod.thread.start()
        warm_n = 0
        if a.rate <= 0:
            # maximum throughput of the closed system: the producer sends the
            # backlog as fast as it can while the worker drains it, so the
            # worker is saturated and shares the CPUs with the producer, as in
            # the soak. Measured over the window in which both run.
            prod.rate, prod.limit = 0.0, a.backlog
            c_first = t_first = None
            # Both stages must be done: the catalog stage lags the account
            # stage during a burst, so counting `plays` alone over the first
            # seconds overstated the maximum (23.5k/s measured against 16.6k/s
            # draining). The window ends when every backlog play is consumed
            # and the catalog stage has no lag and has stopped consuming.
            deadline = time.monotonic() + 900
            fwd_prev = -1.0
            while time.monotonic() < deadline:
                if prod.error:
                    raise prod.error
                text = w.scrape()
                done = metric(text, "playguard_events_consumed_total", topic=s.topics.plays)
                fwd = metric(text, "playguard_events_consumed_total", topic=s.topics.plays_by_artist)
                lag_fwd = metric(text, "playguard_consumer_lag_records", topic=s.topics.plays_by_artist)
                now = time.monotonic()
                if t_first is None and done > 0:
                    c_first, t_first = done, now
                if done >= a.backlog and fwd > 0 and fwd == fwd_prev and lag_fwd == 0:
                    break
                fwd_prev = fwd
                time.sleep(0.25)
            max_rate = (done - c_first) / (now - t_first)
            drain_rate, seen = audit_rate(audit, a.backlog)
            out.update(max_rate=max_rate, max_rate_drain_only=drain_rate, max_rate_window_s=now - t_first)
            print(f"maximum with the producer running (both stages done): {max_rate:,.0f} plays/s over "
                  f"{now - t_first:.1f} s; account stage draining alone: {drain_rate:,.0f} plays/s over "
                  f"{seen:,} plays", flush=True)
            if a.max_method == "sustained":
                sustained, probes = sustained_max(prod, w, s, 0.9 * max_rate, a.probe_s, a.probes)
                out.update(max_rate_burst=max_rate, max_rate=sustained, sustained_probes=probes)
                max_rate = sustained
            rate = a.load * max_rate
            warm_n = prod.sent
            print(f"holding {rate:,.0f} plays/s ({a.load:.0%} of {max_rate:,.0f}, {a.max_method} maximum)", flush=True)
        else:
            rate = a.rate
        out["target_rate"] = rate
        need = warm_n + int(rate * a.minutes * 60 * 1.05)
        if need > len(plan):
            print(f"warning: plan holds {len(plan):,} plays, {need:,} needed; raise --loop", flush=True)
        prod.limit, prod.rate = min(len(plan), need), rate

        samples = []
        t_start = time.monotonic()
        sent0 = prod.sent
        text0 = w.scrape()
        h0 = histogram(text0, LATENCY, kind="play_fraud")
        consumed0 = metric(text0, "playguard_events_consumed_total", topic=s.topics.plays)
        t_warm = t_start + a.warmup * a.minutes * 60
        t_warm_unix = time.time() + a.warmup * a.minutes * 60
        h_warm = None
        pids = {"worker": w.pids, "soak": [os.getpid()]}
        if len(w.pids) > 1:  # per-process shares as well
            for st, pid in zip(procs, w.pids):
                pids["worker_" + "-".join(st)] = [pid]
        if broker is not None and broker.proc is not None:
            pids["broker"] = [broker.proc.pid]
        cpu0 = {k: cpu_s(v) for k, v in pids.items()}
        cpu_prev, t_prev = dict(cpu0), time.monotonic()
        print(f"{'t_s':>6} {'sent':>10} {'consumed':>10} {'lag':>8} {'lag_fwd':>8} {'rss_MiB':>8} {'alerts':>8} "
              f"{'load1':>6} {'cpu_w':>6} {'cpu_b':>6} {'cpu_p':>6}", flush=True)
        while time.monotonic() - t_start < a.minutes * 60:
            time.sleep(a.every)
            if prod.error:
                raise prod.error
            w.check()
            text = w.scrape()
            row = {"t": time.monotonic() - t_start, "sent": prod.sent - sent0,
                   "consumed": metric(text, "playguard_events_consumed_total", topic=s.topics.plays) - consumed0,
                   "lag": metric(text, "playguard_consumer_lag_records", topic=s.topics.plays),
                   "lag_fwd": metric(text, "playguard_consumer_lag_records", topic=s.topics.plays_by_artist),
                   "rss": sum(rss_mb(pid) for pid in w.pids), "alerts": metric(text, "playguard_alerts_total"),
                   "load1": os.getloadavg()[0]}
            cpu_now, t_now = {k: cpu_s(v) for k, v in pids.items()}, time.monotonic()
            for k in pids:  # CPU share of one core over the sample: worker, broker, producer (soak)
                row[f"cpu_{k}"] = (cpu_now[k] - cpu_prev[k]) / (t_now - t_prev)
            cpu_prev, t_prev = cpu_now, t_now
            if h_warm is None and time.monotonic() >= t_warm:
                h_warm = histogram(text, LATENCY, kind="play_fraud")
                row["warm"] = True
            samples.append(row)
            print(f"{row['t']:6.0f} {row['sent']:10,.0f} {row['consumed']:10,.0f} {row['lag']:8,.0f} "
                  f"{row['lag_fwd']:8,.0f} "
                  f"{row['rss']:8.1f} {row['alerts']:8,.0f} {row['load1']:6.2f} {row['cpu_worker']:6.2f} "
                  f"{row.get('cpu_broker', 0.0):6.2f} {row['cpu_soak']:6.2f}", flush=True)
        h1 = histogram(w.scrape(), LATENCY, kind="play_fraud")
        dur = samples[-1]["t"]
        warm_rows = [r for r in samples if r["t"] >= a.warmup * a.minutes * 60] or samples
        rss_w = warm_rows[0]["rss"]
        win = {le: h1.get(le, 0) - (h_warm or h0).get(le, 0) for le in h1}
        win_all = {le: h1.get(le, 0) - h0.get(le, 0) for le in h1}
        out.update(
            duration_s=dur, sent=samples[-1]["sent"], consumed=samples[-1]["consumed"],
            achieved_rate=samples[-1]["consumed"] / dur,
            rss_start_mib=samples[0]["rss"], rss_after_warmup_mib=rss_w, rss_end_mib=samples[-1]["rss"],
            rss_max_mib=max(r["rss"] for r in samples),
            rss_growth_after_warmup=(samples[-1]["rss"] - rss_w) / rss_w,
            latency_alerts=win.get(float("inf"), 0.0),
            latency_p50_s=histogram_quantile(0.5, win), latency_p99_s=histogram_quantile(0.99, win),
            latency_p99_whole_soak_s=histogram_quantile(0.99, win_all),
            lag_mean=float(np.mean([r["lag"] for r in warm_rows])), lag_max=max(r["lag"] for r in samples),
            lag_end=samples[-1]["lag"], lag_fwd_mean=float(np.mean([r["lag_fwd"] for r in warm_rows])),
            lag_fwd_max=max(r["lag_fwd"] for r in samples), loadavg_end=os.getloadavg(), samples=samples,
        )
        cpu_end = {k: cpu_s(v) for k, v in pids.items()}
        consumed = samples[-1]["consumed"]
        out["worker_cpu_share"] = (cpu_end["worker"] - cpu0["worker"]) / dur
        out["worker_cpu_us_per_play"] = 1e6 * (cpu_end["worker"] - cpu0["worker"]) / max(1.0, consumed)
        out["broker_cpu_share"] = (cpu_end["broker"] - cpu0["broker"]) / dur if "broker" in pids else None
        out["producer_cpu_share"] = (cpu_end["soak"] - cpu0["soak"]) / dur
        for k in pids:
            if k.startswith("worker_"):
                out[f"{k}_cpu_share"] = (cpu_end[k] - cpu0[k]) / dur
        print("\nsummary")
        for k in ("max_rate", "max_rate_drain_only", "target_rate", "achieved_rate", "rss_after_warmup_mib", "rss_end_mib", "rss_max_mib",
                  "rss_growth_after_warmup", "latency_alerts", "latency_p50_s", "latency_p99_s",
                  "latency_p99_whole_soak_s", "lag_mean", "lag_max", "lag_end", "lag_fwd_mean", "lag_fwd_max", "worker_cpu_share",
                  "worker_cpu_us_per_play", "worker_account_cpu_share", "worker_catalog_cpu_share",
                  "broker_cpu_share", "producer_cpu_share", "loadavg_start", "loadavg_end"):
            v = out.get(k)
            print(f"  {k:28s} {v:,.3f}" if isinstance(v, float) else f"  {k:28s} {v}")
        if a.trace and any(tr.exists() for tr in traces):
            out["trace"] = trace_summary(traces, t_warm_unix)
            print("  trace (after warm-up):")
            for k, v in out["trace"].items():
                print(f"    {k}: {json.dumps(v, default=str)}")
        ok_rss = out["rss_growth_after_warmup"] <= 0.10
        ok_lat = out["latency_p99_s"] is not None and out["latency_p99_s"] <= 1.0
        print(f"  target RSS growth <= 10%: {'met' if ok_rss else 'NOT met'}; "
              f"p99 <= 1 s: {'met' if ok_lat else 'NOT met'}")
        if a.json:
            a.json.write_text(json.dumps(out, indent=1, default=str))
        prod.stop = True
        return 0
    finally:
        if w is not None:
            w.stop(signal.SIGTERM, 30)
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
