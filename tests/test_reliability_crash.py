"""Crash test on the embedded broker (issue 13, "Delivery guarantees").

Two ``playguard worker`` processes share one consumer group. A steady, paced
replay of real plays (the newest 12k plays of the extended Spotify export,
every history piece as its own account, CONVENTIONS.md "Replay") goes to
``plays``; one worker is killed with SIGKILL mid-stream and restarted. Then:

1. **every input offset is processed at least once**: the union of the
   processed-offset ranges in the workers' audit files (``--audit``) covers
   every offset of every ``plays`` and ``plays.by_artist`` partition;
2. **no alert is lost**: the set of ``alert_id``s on ``alerts`` equals that of
   an in-process reference run of the same records with the same partition
   split (:class:`stream.runtime.PartitionRuntime`, one per partition, records
   in offset order: the account stage is deterministic per partition);
3. **after dedupe by alert_id no alert appears twice**: records sharing an
   ``alert_id`` carry the same detector, entity and window, and every
   reference alert is there exactly once after dedupe;
4. **state after recovery matches the run without the crash**: the newest
   ``changelog`` snapshot of every partition covers its last offset and equals
   the reference state exactly (account stage: model, watermark, dedupe memory;
   catalog stage: model). Tolerance 0: records below a restored snapshot's
   ``next_offset`` are skipped, so re-processing never double-counts state.

Models: ``--models rules`` with thresholds lowered (4 plays of a track a day,
300 plays a month) so that the 12k plays raise dozens of alerts.
:func:`run_crash_scenario` is shared with ``bench/crash_series.py``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from stream.batch import PlayBatch
from stream.config import Settings
from stream.driver import read_snapshots
from stream.ingest import Record
from stream.pipeline import build_account_model, build_catalog_model
from stream.replay import encode_rows, plan_replay
from stream.runtime import account_partition_factory, catalog_partition_factory, encode_forwards, kafka_partition
from stream.schemas import Alert
from tests.conftest import require_data
from tests.kafka_helpers import WorkerProcess, read_all

pytestmark = pytest.mark.integration

RULE_ENV = {"PLAYGUARD_DETECTION__RULE_TRACK_PLAYS_PER_DAY": "4",
            "PLAYGUARD_DETECTION__RULE_PLAYS_PER_MONTH": "300"}


def crash_settings(bootstrap: str, prefix: str, partitions: int = 4) -> tuple[Settings, dict]:
    """Settings and worker environment of one scenario run (unique prefix/group)."""
    env = {"PLAYGUARD_BOOTSTRAP_SERVERS": bootstrap, "PLAYGUARD_TOPIC_PREFIX": prefix,
           "PLAYGUARD_PARTITIONS": str(partitions), "PLAYGUARD_APP_ID": prefix + "group",
           "PLAYGUARD_SNAPSHOT_INTERVAL_S": "2", "PLAYGUARD_COMMIT_INTERVAL_S": "1", **RULE_ENV}
    s = Settings(_env_file=None, bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=partitions,
                 app_id=prefix + "group", snapshot_interval_s=2.0,
                 detection={"rule_track_plays_per_day": 4, "rule_plays_per_month": 300})
    return s, env


def replay_events(n_events: int, loop: int = 1) -> PlayBatch:
    """The newest ``n_events`` planned plays of the extended export (real data),
    every piece replayed as its own account, ending one day before now."""
    from stream.adapters import load_spotify_extended

    src = require_data("listening", "spotify_extended.csv.gz")
    plan = plan_replay(load_spotify_extended(src), time.time() - 86400, all_pieces=True, loop=loop)
    return plan.take(np.arange(max(0, len(plan) - n_events), len(plan)))


async def paced_produce(s: Settings, batch: PlayBatch, rate: float, progress: dict) -> None:
    """Send ``batch`` to ``plays`` keyed by account at ``rate`` plays/s (chunks
    every 0.1 s); ``progress['sent']`` counts acked plays."""
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=5, acks=1)
    await p.start()
    try:
        values = encode_rows(batch)
        step = max(1, int(rate / 10))
        t0 = time.monotonic()
        for lo in range(0, len(values), step):
            due = t0 + lo / rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            futs = [await p.send(s.topics.plays, v, key=batch.account_id[i].encode())
                    for i, v in zip(range(lo, lo + step), values[lo:lo + step])]
            await asyncio.gather(*futs)
            progress["sent"] = lo + len(futs)
    finally:
        await p.stop()


async def end_offsets(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """End offset of each partition from fetch high watermarks (the embedded
    broker's ListOffsets(latest) under-reports, so it is not used)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=8 * 1024 * 1024)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await c.getmany(timeout_ms=300, max_records=10_000)
            hws = {tp: c.highwater(tp) for tp in tps}
            pos = {tp: await c.position(tp) for tp in tps}
            if all(hws[tp] is not None and pos[tp] >= hws[tp] for tp in tps):
                return {tp.partition: hws[tp] for tp in tps}
        return {tp.partition: (c.highwater(tp) or 0) for tp in tps}
    finally:
        await c.stop()


async def committed_offsets(s: Settings, topic: str) -> dict[int, int | None]:
    """Offsets committed by the worker group on ``topic`` (OffsetFetch)."""
    c = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, group_id=s.app_id, enable_auto_commit=False)
    await c.start()
    try:
        out = {}
        for p in range(s.partitions):
            out[p] = await c.committed(TopicPartition(topic, p))
        return out
    finally:
        await c.stop()


def read_audit(paths: list[Path]) -> dict[tuple[str, int], list[tuple[int, int, float]]]:
    """``(stage, partition) -> [(first, last, t), ...]`` from audit JSONL files."""
    out: dict[tuple[str, int], list] = defaultdict(list)
    for p in paths:
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # a line cut by SIGKILL
                continue
            out[(r["stage"], r["partition"])].append((r["first"], r["last"], r["t"]))
    return out


def uncovered(ranges: list[tuple[int, int, float]], end: int) -> list[int]:
    """Offsets in ``[0, end)`` not covered by any ``(first, last)`` range."""
    seen = np.zeros(end, bool)
    for a, b, _ in ranges:
        seen[a:min(b, end - 1) + 1] = True
    return np.flatnonzero(~seen).tolist()


def reference_run(s: Settings, records: list, models: str = "rules"):
    """The same ``plays`` records through both stages in process, one
    :class:`PartitionRuntime` per partition, records in offset order.

    Returns:
        ``(alerts, account_runtimes, catalog_runtimes)``.
    """
    acc = account_partition_factory(s, lambda: build_account_model(s, models))
    cat = catalog_partition_factory(s, lambda: build_catalog_model(s, models))
    by_part: dict[int, list] = defaultdict(list)
    for r in records:
        by_part[r.partition].append(r)
    alerts, accounts, catalogs = [], {}, {}
    forwards: dict[int, list] = defaultdict(list)
    for p, recs in sorted(by_part.items()):
        rt = accounts[p] = acc(p)
        recs.sort(key=lambda r: r.offset)
        for lo in range(0, len(recs), 500):
            chunk = [Record(r.topic, p, r.offset, r.key, r.value, r.timestamp / 1000) for r in recs[lo:lo + 500]]
            out = rt.process(chunk)
            alerts += out.alerts
            for dest, (value, _) in encode_forwards([out]).items():
                forwards[dest].append(value)
    for dest, values in sorted(forwards.items()):
        rt = catalogs[dest] = cat(dest)
        recs = [Record(s.topics.plays_by_artist, dest, i, None, v, 0.0) for i, v in enumerate(values)]
        alerts += rt.process(recs).alerts
    return alerts, accounts, catalogs


def canon(x):
    """Order-free canonical form of a state (lists sorted, arrays as lists)."""
    if isinstance(x, dict):
        return {k: canon(v) for k, v in sorted(x.items())}
    if isinstance(x, np.ndarray):
        return sorted(x.tolist()) if x.ndim == 1 else x.tolist()
    if isinstance(x, (list, tuple)):
        return sorted((canon(v) for v in x), key=repr)
    return x


def _diff_rules(got: dict, ref: dict) -> dict:
    """Counter differences between two rules-model states (diagnostics)."""
    out = {}
    for key in ("track_day", "month"):
        g = {tuple(r[:-1]): r[-1] for r in got.get(key, [])}
        f = {tuple(r[:-1]): r[-1] for r in ref.get(key, [])}
        d = {str(k): (g.get(k), f.get(k)) for k in set(g) | set(f) if g.get(k) != f.get(k)}
        out[key] = dict(list(d.items())[:5]) | {"n": len(d)}
    return out


def run_crash_scenario(bootstrap: str, workdir: Path, n_events: int = 12_000, rate: float = 400.0,
                       kill_at: float = 0.35, restart_after: float = 3.0, crash: bool = True,
                       timeout: float = 240.0, log=print) -> dict:
    """Run the crash scenario once (see module docstring) and return its findings.

    Args:
        bootstrap: broker address.
        workdir: folder for audit files and worker logs.
        n_events: plays replayed.
        rate: produce rate, plays/s.
        kill_at: fraction of the plays sent when worker A is SIGKILLed.
        restart_after: seconds between the kill and the restart of A.
        crash: False runs the same scenario without the kill (control run).
        timeout: seconds to wait for the workers to catch up after the replay.

    Returns:
        A dict of measured facts: ``uncovered`` offsets per stage, ``alerts_raw``,
        ``alerts_unique``, ``alerts_expected``, ``missing``/``unexpected``
        alert ids, ``inconsistent`` duplicate groups, ``state_mismatch``
        partitions, ``reprocessed`` offsets, ``moved`` partitions, timings.
    """
    prefix = f"crash{int(time.time() * 1000) % 10**9}."
    s, env = crash_settings(bootstrap, prefix)
    workdir.mkdir(parents=True, exist_ok=True)
    audits = [workdir / f"{prefix}a.jsonl", workdir / f"{prefix}b.jsonl"]
    args = ["--models", "rules", "--no-audio"]
    batch = replay_events(n_events)
    res: dict = {"prefix": prefix, "events": len(batch), "crash": crash}
    t_start = time.monotonic()
    wa = WorkerProcess(env, [*args, "--audit", str(audits[0])], log=workdir / f"{prefix}a.log").start()
    wb = WorkerProcess(env, [*args, "--audit", str(audits[1])], log=workdir / f"{prefix}b.log").start()
    workers = [wa, wb]
    try:
        progress = {"sent": 0}

        async def orchestrate():
            prod = asyncio.create_task(paced_produce(s, batch, rate, progress))
            if crash:
                while progress["sent"] < kill_at * len(batch) and not prod.done():
                    await asyncio.sleep(0.1)
                # kill only once A really processes plays (it owns partitions)
                t_wait = time.monotonic()
                while time.monotonic() - t_wait < 60:
                    if await asyncio.to_thread(wa.metric, "playguard_events_consumed_total",
                                               topic=s.topics.plays) > 0:
                        break
                    await asyncio.sleep(0.5)
                res["a_consumed_before_kill"] = await asyncio.to_thread(
                    wa.metric, "playguard_events_consumed_total", topic=s.topics.plays)
                res["kill_time"] = time.time()
                res["sent_at_kill"] = progress["sent"]
                await asyncio.to_thread(wa.stop, signal.SIGKILL, 10)
                log(f"SIGKILL worker A after {progress['sent']} plays sent")
                await asyncio.sleep(restart_after)
                wa2 = WorkerProcess(env, [*args, "--audit", str(audits[0])], log=workdir / f"{prefix}a2.log")
                await asyncio.to_thread(wa2.start)
                workers.append(wa2)
                log("worker A restarted")
            await prod

        asyncio.run(orchestrate())
        res["produce_s"] = time.monotonic() - t_start
        plays_end = asyncio.run(end_offsets(bootstrap, s.topics.plays))
        assert sum(plays_end.values()) == len(batch), plays_end

        # wait until every offset of both stages is audited and a snapshot covers it
        deadline = time.monotonic() + timeout
        while True:
            aud = read_audit(audits)
            fwd_end = asyncio.run(end_offsets(bootstrap, s.topics.plays_by_artist))
            gaps = {("account", p): uncovered(aud.get(("account", p), []), e) for p, e in plays_end.items()}
            gaps.update({("catalog", p): uncovered(aud.get(("catalog", p), []), e) for p, e in fwd_end.items()})
            if not any(gaps.values()):
                latest = asyncio.run(read_snapshots(s)).latest()
                ends = {**{("account", p): e for p, e in plays_end.items()},
                        **{("catalog", p): e for p, e in fwd_end.items()}}
                behind = {k: (latest.get(k, (0,))[0], e) for k, e in ends.items()
                          if e > 0 and latest.get(k, (0,))[0] < e}
                if not behind:
                    break
            if time.monotonic() > deadline:
                break
            time.sleep(3)
        res["catch_up_s"] = time.monotonic() - t_start - res["produce_s"]
        res["uncovered"] = {f"{k[0]}/{k[1]}": len(v) for k, v in gaps.items() if v}
        res["snapshots_behind"] = {f"{k[0]}/{k[1]}": v for k, v in behind.items()} if not any(gaps.values()) \
            else {"?": "audit incomplete"}
        res["audit_lines"] = sum(len(v) for v in aud.values())
        # offsets read more than once (after a kill: from the committed offset on;
        # those below the restored snapshot's next_offset are skipped, not re-counted)
        res["reread"] = sum(sum(b - a + 1 for a, b, _ in rs) for rs in aud.values()) \
            - sum(plays_end.values()) - sum(fwd_end.values())
        if crash:  # partitions of A that another incarnation processed after the kill
            a_parts = {k for k, rs in read_audit(audits[:1]).items() if any(t < res["kill_time"] for *_, t in rs)}
            res["moved"] = sorted(f"{k[0]}/{k[1]}" for k in a_parts
                                  if any(t > res["kill_time"] for *_, t in aud.get(k, [])))

        # alerts: compare with the in-process reference run on the same records
        plays_recs = asyncio.run(read_all(bootstrap, s.topics.plays, expect=len(batch), timeout=60))
        ref_alerts, ref_acc, ref_cat = reference_run(s, plays_recs)
        got = [Alert.model_validate_json(r.value)
               for r in asyncio.run(read_all(bootstrap, s.topics.alerts, timeout=60, idle=4))]
        ids = defaultdict(set)
        for a in got:
            ids[a.alert_id].add((a.detector, a.entity_type, a.entity_id, a.window_start, a.window_end))
        expected = {a.alert_id for a in ref_alerts}
        dup_parts: dict[int, int] = defaultdict(int)
        counts = defaultdict(int)
        for a in got:
            counts[a.alert_id] += 1
            if counts[a.alert_id] == 2:
                dup_parts[kafka_partition(a.entity_id, s.partitions)] += 1
        res["duplicate_alerts_by_partition"] = dict(sorted(dup_parts.items()))
        res.update(alerts_raw=len(got), alerts_unique=len(ids), alerts_expected=len(expected),
                   alerts_reference_raw=len(ref_alerts),
                   missing=sorted(expected - set(ids)), unexpected=sorted(set(ids) - expected),
                   inconsistent=sorted(k for k, v in ids.items() if len(v) > 1))

        # state: newest snapshot of each partition against the reference
        latest = asyncio.run(read_snapshots(s)).latest()
        mismatch = []
        for p, rt in ref_acc.items():
            seq, st = latest.get(("account", p), (None, None))
            ref = rt.state_dict()
            if st is None:
                mismatch.append(f"account/{p}: no snapshot")
                continue
            why = [name for name, ok in (
                ("next_offset", seq == rt.next_offset),
                ("model", canon(st["model"]) == canon(ref["model"])),
                ("watermark", st["decoder"]["max_ts"] == ref["decoder"]["max_ts"]),
                ("dedupe", canon(st["decoder"]["dedupe"]) == canon(ref["decoder"]["dedupe"]))) if not ok]
            if why:
                mismatch.append(f"account/{p}: {','.join(why)} (seq {seq} vs {rt.next_offset})")
                if "model" in why:
                    res.setdefault("model_diff", {})[p] = _diff_rules(st["model"], ref["model"])
        for p, rt in ref_cat.items():
            seq, st = latest.get(("catalog", p), (None, None))
            if st is None or canon(st["model"]) != canon(rt.state_dict()["model"]):
                mismatch.append(f"catalog/{p}")
        res["state_mismatch"] = mismatch
        res["partitions_compared"] = len(ref_acc) + len(ref_cat)
        res["total_s"] = time.monotonic() - t_start
        return res
    finally:
        codes = [w.stop(signal.SIGTERM, 30) for w in workers if w.proc and w.proc.poll() is None]
        res["exit_codes"] = codes


def test_sigkill_one_of_two_workers_loses_nothing(broker, tmp_path):
    r = run_crash_scenario(broker.bootstrap, tmp_path)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("*.log")))
    info = json.dumps({k: v for k, v in r.items() if k not in ("missing", "unexpected")}, default=str)
    assert r["uncovered"] == {}, info + logs  # every offset processed at least once
    assert r["snapshots_behind"] == {}, info + logs  # snapshots cover every offset
    assert r["moved"], info  # the kill really handed A's partitions over
    assert r["alerts_expected"] >= 20, info  # the scenario raises enough alerts to matter
    assert r["missing"] == [], info  # no alert lost
    assert r["unexpected"] == [], info  # nothing invented
    assert r["inconsistent"] == [], info  # a repeated alert_id is the same alert
    assert r["alerts_unique"] == r["alerts_expected"]
    assert r["state_mismatch"] == [], info  # state equals the run without the crash
    assert all(c == 0 for c in r["exit_codes"]), info
    print(info)
