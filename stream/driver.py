"""Faust glue of one stage: restore, run, produce, snapshot, then ack.

A :class:`StageDriver` holds the :class:`~stream.runtime.PartitionRuntime` of
every partition its worker owns and enforces the delivery contract of
CONVENTIONS.md, "State and offsets move together":

1. records arrive through ``stream.noack().take_events(...)``;
2. a partition seen for the first time is restored from its newest complete
   snapshot in ``changelog`` (records it already covers are skipped);
3. the batch is processed, and its dead letters, alerts and forwards are
   produced and **awaited**;
4. at most every ``snapshot_interval_s`` (and on revocation) each partition's
   state is written to ``changelog`` and awaited;
5. only then are the events acked, so Faust commits an offset only when the
   alerts of every record before it are produced and a snapshot covers it.

Faust's ``take_events`` acks every event of a batch by itself when the agent
asks for the next batch, even on a ``noack()`` stream (faust-streaming 0.15.3,
``Stream.take_events``), so a commit could run ahead of the snapshot; a crash
then restored an older snapshot and resumed after it, losing the state of the
records in between (found by ``tests/test_reliability_crash.py``). The driver
therefore takes one extra reference on each message (``Message.incref``):
Faust's own ack only drops that count back, and the final ack, the one that
lets Faust commit, is the driver's, after the snapshot.

Events of a partition this worker no longer owns (buffered before a
revocation) are neither processed nor acked: their new owner reads them again.

This gives at-least-once processing; deterministic ``alert_id``s make repeated
alerts identical, and ``next_offset`` in the snapshot keeps re-read records
from being counted twice in state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from stream.config import Settings
from stream.ingest import Record
from stream.metrics import Metrics
from stream.runtime import PartitionRuntime, StageOutput
from stream.snapshots import SnapshotAssembler, encode_snapshot

log = logging.getLogger("playguard.driver")


async def read_snapshots(settings: Settings, timeout_s: float = 30.0) -> SnapshotAssembler:
    """Read the whole ``changelog`` topic into a :class:`SnapshotAssembler`.

    Reads to the high watermark reported in fetch responses (the embedded
    broker's ListOffsets reply under-reports end offsets).

    Raises:
        asyncio.TimeoutError: never; gives up after ``timeout_s`` with what it read.
    """
    asm = SnapshotAssembler()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        **settings.kafka_client_kwargs(),
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(settings.topics.changelog) or {0}
        tps = [TopicPartition(settings.topics.changelog, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        first_fetch = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for recs in batch.values():
                for r in recs:
                    asm.add(r.key, r.value)
            done = True
            for tp in tps:
                hw = consumer.highwater(tp)
                pos = await consumer.position(tp)
                if hw is None:
                    done = done and not batch and time.monotonic() - first_fetch > 2.0
                elif pos < hw:
                    done = False
            if done:
                break
    finally:
        await consumer.stop()
    return asm


class StageDriver:
    """Runs one stage inside a Faust worker (see module docstring).

    Args:
        stage: ``"account"`` or ``"catalog"``.
        make_partition: factory of a fresh :class:`PartitionRuntime`.
        settings: the settings.
        metrics: metrics to update.
        topics: Faust topics by role: ``alerts``, ``deadletter``,
            ``changelog`` and, for the account stage, ``forward``.
        input_topic: name of the input topic (metric label).
        audit_path: optional JSONL file that records every processed offset
            range (``stage, partition, first, last``) for crash audits.
        owns: ``owns(partition)`` is True while this worker is assigned that
            input partition; None trusts every event.
    """

    def __init__(
        self,
        stage: str,
        make_partition: Callable[[int], PartitionRuntime],
        settings: Settings,
        metrics: Metrics,
        topics: dict,
        input_topic: str,
        audit_path: Path | None = None,
        owns: Callable[[int], bool] | None = None,
    ):
        self.owns = owns
        self.stopping = False
        self.stage = stage
        self.make_partition = make_partition
        self.settings = settings
        self.metrics = metrics
        self.topics = topics
        self.input_topic = input_topic
        self.runtimes: dict[int, PartitionRuntime] = {}
        self.pending: dict[int, list] = defaultdict(list)
        self.lock = asyncio.Lock()
        self.last_snapshot = time.monotonic()
        self.snapshot_cost_s = 0.0
        self.audit_path = audit_path
        self._audit_fh = open(audit_path, "a", buffering=1) if audit_path else None

    async def handle(self, events: list) -> None:
        """Process one ``take_events`` micro-batch (events of any partitions)."""
        by_part: dict[int, list] = defaultdict(list)
        for e in events:
            # hold one reference until our own ack: take_events acks the
            # batch by itself when it resumes (see module docstring)
            e.message.incref()
            by_part[e.message.partition].append(e)
        async with self.lock:
            if self.stopping:
                # after the final snapshot: leave these unacked (never committed),
                # so the next owner reads them again
                return
            if self.owns is not None:
                for p in [p for p in by_part if not self.owns(p)]:
                    log.info("dropping %d buffered events of revoked %s/%d", len(by_part[p]), self.stage, p)
                    del by_part[p]
            missing = [p for p in by_part if p not in self.runtimes]
            if missing:
                await self._restore(missing)
            for p, evs in by_part.items():
                evs.sort(key=lambda e: e.message.offset)
                await self._run_partition(p, evs)
            if self.snapshot_due():
                await self._snapshot_locked(list(self.pending))

    def snapshot_due(self) -> bool:
        """True when the snapshot interval has passed. The interval stretches to
        20x the last snapshot's cost, so snapshots of a large state take at
        most ~5% of the stage's time (commits lag accordingly)."""
        interval = max(self.settings.snapshot_interval_s, 20.0 * self.snapshot_cost_s)
        return time.monotonic() - self.last_snapshot >= interval

    async def _run_partition(self, p: int, evs: list) -> None:
        rt = self.runtimes.get(p)
        if rt is None:  # dropped by a revocation that could not wait for the lock
            return
        recs = [
            Record(e.message.topic, p, e.message.offset, e.message.key, e.message.value, e.message.timestamp)
            for e in evs
        ]
        t0 = time.perf_counter()
        out = rt.process(recs)
        self.metrics.batch_seconds.labels(stage=self.stage).observe(time.perf_counter() - t0)
        self.metrics.batch_size.labels(stage=self.stage).observe(len(recs))
        self.metrics.events_consumed.labels(topic=self.input_topic).inc(len(recs))
        await self._produce(out)
        if self._audit_fh:
            self._audit_fh.write(json.dumps({"stage": self.stage, "partition": p, "first": recs[0].offset,
                                             "last": recs[-1].offset, "n": len(recs), "skipped": out.skipped,
                                             "valid": out.valid, "t": time.time()}) + "\n")
        if self.runtimes.get(p) is rt:  # not revoked meanwhile: ack after the next snapshot
            self.pending[p].extend(evs)

    async def _produce(self, out: StageOutput) -> None:
        m = self.metrics
        futs = []
        for d in out.dead:
            futs.append(await self.topics["deadletter"].send(
                key=d.record.key, value=d.record.value or b"", headers=d.headers(), force=True))
            m.deadletter.labels(topic=d.record.topic, reason=d.reason.value).inc()
        if out.duplicates:
            m.duplicates_dropped.labels(topic=self.input_topic).inc(out.duplicates)
        for a in out.alerts:
            futs.append(await self.topics["alerts"].send(
                key=a.entity_id.encode(), value=a.model_dump_json().encode(), force=True))
        for dest, (value, rts) in out.forwards.items():
            futs.append(await self.topics["forward"].send(
                value=value, partition=dest, timestamp=rts, force=True))
        if futs:
            await asyncio.gather(*futs)
        now = time.time()
        for a in out.alerts:
            m.alerts.labels(kind=a.kind.value, detector=a.detector, severity=a.severity.value).inc()
            if a._source_record_ts is not None:
                m.alert_latency.labels(kind=a.kind.value).observe(max(0.0, now - a._source_record_ts))
        for et, n in self._entity_counts().items():
            m.state_entities.labels(stage=self.stage, entity_type=et).set(n)

    def _entity_counts(self) -> dict[str, int]:
        tot: dict[str, int] = defaultdict(int)
        for rt in self.runtimes.values():
            for k, v in rt.model.entity_counts().items():
                tot[k] += v
        return tot

    async def _restore(self, partitions: list[int]) -> None:
        asm = await read_snapshots(self.settings)
        latest = asm.latest()
        for p in partitions:
            rt = self.make_partition(p)
            snap = latest.get((self.stage, p))
            if snap is not None:
                rt.load_state_dict(snap[1])
                log.info("restored %s/%d at offset %d", self.stage, p, rt.next_offset)
            self.runtimes[p] = rt

    async def snapshot(self, partitions: list[int] | None = None) -> None:
        """Write snapshots of ``partitions`` (default: all with pending acks),
        then ack their pending events."""
        async with self.lock:
            await self._snapshot_locked(list(self.pending) if partitions is None else partitions)

    async def _snapshot_locked(self, partitions: list[int]) -> None:
        t0 = time.monotonic()
        futs = []
        for p in partitions:
            rt = self.runtimes.get(p)
            if rt is None:
                continue
            for key, value in encode_snapshot(self.stage, p, rt.state_dict(), rt.next_offset,
                                              self.settings.snapshot_chunk_bytes):
                futs.append(await self.topics["changelog"].send(key=key, value=value, force=True))
        if futs:
            await asyncio.gather(*futs)
        for p in partitions:
            evs = self.pending.pop(p, [])
            if p in self.runtimes:  # only what a snapshot now covers is acked
                for e in evs:
                    e.ack()
        self.last_snapshot = time.monotonic()
        self.snapshot_cost_s = self.last_snapshot - t0

    async def on_revoked(self, partitions: set[int]) -> None:
        """Snapshot and drop revoked partitions (best effort within 5 s: if the
        lock is busy, the next owner re-processes from the committed offset)."""
        mine = [p for p in partitions if p in self.runtimes]
        if not mine:
            return
        try:
            await asyncio.wait_for(self.lock.acquire(), timeout=5.0)
        except asyncio.TimeoutError:
            for p in mine:
                self.runtimes.pop(p, None)
                self.pending.pop(p, None)
            return
        try:
            await self._snapshot_locked(mine)
        except Exception:  # noqa: BLE001 - a failed snapshot only costs re-processing
            log.exception("snapshot on revoke failed")
        finally:
            for p in mine:
                self.runtimes.pop(p, None)
                self.pending.pop(p, None)
            self.lock.release()
