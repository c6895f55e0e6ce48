"""Faust glue of one stage: restore, run, produce, snapshot, then ack.

A :class:`StageDriver` holds the :class:`~stream.runtime.PartitionRuntime` of
every partition its worker owns and enforces the delivery contract of
CONVENTIONS.md, "State and offsets move together":

1. records arrive as micro-batches of Faust ``ConsumerMessage`` objects
   from the worker's :class:`~stream.app.BatchIntake` (each holding one
   reference that only the driver's ack drops);
2. a partition seen for the first time is restored from its newest complete
   snapshot in ``changelog`` (records it already covers are skipped);
3. the batch is processed, and its dead letters, alerts and forwards are
   produced and **awaited**;
4. at most every ``snapshot_interval_s`` (and on revocation) each partition's
   state is written to ``changelog`` and awaited; partitions are snapshotted
   one at a time (staggered), and the state is captured and encoded in a
   worker thread while the stage's lock is held, so the event loop (the other
   stage, fetches, heartbeats, produce acks) keeps running meanwhile; the
   stage's next batches run while the snapshot's records are being written;
5. only then are the events acked, so Faust commits an offset only when the
   alerts of every record before it are produced and a snapshot covers it.

With ``Settings.trace_path`` set, every batch, snapshot and alert writes one
JSONL timing row (:class:`LatencyTrace`), to find where alert latency comes
from (``bench/soak.py --trace``).

Faust's ``take_events`` acks every event of a batch by itself when the agent
asks for the next batch, even on a ``noack()`` stream (faust-streaming 0.15.3,
``Stream.take_events``), so a commit could run ahead of the snapshot; a crash
then restored an older snapshot and resumed after it, losing the state of the
records in between (found by ``tests/test_reliability_crash.py``). The play
stages therefore no longer use Faust's per-event stream at all: the intake
gives each message exactly one reference, and the only ack, the one that lets
Faust commit, is the driver's, after the snapshot.

Events of a partition this worker no longer owns (buffered before a
revocation) are neither processed nor acked: their new owner reads them again.

This gives at-least-once processing; deterministic ``alert_id``s make repeated
alerts identical, and ``next_offset`` in the snapshot keeps re-read records
from being counted twice in state.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from detectors.serialize import dumps
from stream.config import Settings
from stream.ingest import Record
from stream.metrics import Metrics
from stream.runtime import PartitionRuntime, StageOutput, encode_forwards
from stream.snapshots import SnapshotAssembler, chunk_snapshot

log = logging.getLogger("playguard.driver")

#: One thread encodes every snapshot: snapshots are serialised, and glibc
#: keeps one extra malloc arena for their buffers rather than one per
#: thread of asyncio's default executor.
_SNAPSHOT_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playguard-snapshot")
#: Another compresses and chunks them once the stage lock is released (zstd
#: releases the GIL while it compresses).
_COMPRESS_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playguard-compress")


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


class LatencyTrace:
    """Appends timing rows to a JSONL file (latency diagnosis, not a metric).

    Rows (all times in seconds; ``t`` is Unix time when the row is written):

    * ``{"ev": "batch", "stage", "n", "parts", "lock_wait_s", "age_oldest_s",
      "age_newest_s", "process_s", "produce_s", "snapshot_s", "handle_s",
      "alerts", "lag"}``: one ``handle()`` call. ``age_*`` is the age of the
      oldest / newest record (now minus its Kafka timestamp) when the batch
      reached the driver, i.e. how long records waited in the broker, the
      fetcher and Faust's buffer; ``lag`` maps partition to records behind the
      high watermark after the batch.
    * ``{"ev": "alert", "stage", "partition", "detector", "latency_s",
      "age_at_entry_s", "handle_s"}``: one produced alert; ``latency_s`` is the
      value observed in ``playguard_alert_latency_seconds``; ``age_at_entry_s``
      the part of it spent before its batch reached the driver.
    * ``{"ev": "snapshot", "stage", "partition", "why", "state_s",
      "send_s", "bytes", "lock_s"}``: one partition snapshot.
    * ``{"ev": "stall", "s"}``: the event loop did not run for ``s`` seconds
      (written by :func:`watch_event_loop`).
    * ``{"ev": "gc", "gen", "s", "collected"}``: a garbage collection of
      generation 2 or one longer than 20 ms (``gc.callbacks``).

    Thread-safe (one lock around each write).

    Args:
        path: JSONL file, appended to.
    """

    def __init__(self, path: Path):
        self._fh = open(path, "a", buffering=1)
        self._lock = threading.Lock()
        self._gc_t0 = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        dt = time.perf_counter() - self._gc_t0
        if info.get("generation") == 2 or dt >= 0.02:
            self.write("gc", gen=info.get("generation"), s=round(dt, 4), collected=info.get("collected"))

    def write(self, ev: str, **fields) -> None:
        """Append one row of kind ``ev``."""
        line = json.dumps({"ev": ev, "t": round(time.time(), 4), **fields}) + "\n"
        with self._lock:
            self._fh.write(line)


async def watch_event_loop(trace: LatencyTrace, period_s: float = 0.02, report_s: float = 0.1) -> None:
    """Write a ``stall`` row whenever the event loop was blocked longer than
    ``report_s`` (a ``period_s`` sleep overshot by that much). Runs forever."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(period_s)
        late = time.perf_counter() - t0 - period_s
        if late >= report_s:
            trace.write("stall", s=round(late, 4))


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
        highwater: ``highwater(partition)``, the input partition's high
            watermark from fetch responses or None (trace only).
        trace: optional :class:`LatencyTrace`.
        ack: ``ack(message)`` releases one processed message for commit
            (the worker passes ``message.ack(app.consumer)``); None calls
            ``message.ack()``.
        ack_many: ``ack_many(messages)`` releases many at once (the worker's
            consumer ``ack_many``); None calls ``ack`` on each.
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
        highwater: Callable[[int], int | None] | None = None,
        trace: LatencyTrace | None = None,
        ack: Callable[[object], object] | None = None,
        ack_many: Callable[[list], object] | None = None,
    ):
        self._ack = ack if ack is not None else (lambda m: m.ack())
        self._ack_many = ack_many
        self.owns = owns
        self.highwater = highwater
        self.trace = trace
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
        #: per partition: monotonic time of its last snapshot, and its cost (s)
        self.last_snapshot: dict[int, float] = {}
        self.snapshot_cost_s: dict[int, float] = {}
        #: snapshot writes not yet acknowledged by the broker (see _snapshot_locked)
        self._inflight: set = set()
        #: tasks awaiting the sends of a processed micro-batch (see handle)
        self._sending: set = set()
        self._snap_s_last = 0.0
        self._started = time.monotonic()
        #: when the stage's last snapshot was captured (monotonic s; pacing)
        self._last_snapshot_any = float("-inf")
        self.audit_path = audit_path
        self._audit_fh = open(audit_path, "a", buffering=1) if audit_path else None

    #: micro-batches whose sends may be in flight at once (see :meth:`handle`)
    max_batches_sending: int = 4
    #: messages acked per event-loop step after a snapshot
    ack_slice: int = 4096

    async def handle(self, events: list) -> None:
        """Process one micro-batch of messages (of any partitions, each in
        offset order): objects with ``topic``, ``partition``, ``offset``,
        ``key``, ``value`` and ``timestamp`` (Unix s), acked through ``ack``.

        Each partition is processed and its alerts, dead letters and forwards
        are sent at once. The sends are awaited by a task of their own
        (:meth:`_finish_batch`): only once they are all delivered do the
        messages join the pending (to be acked after a snapshot) list, so a
        commit never runs ahead of its alerts, but the next batch need not
        wait for the broker's acknowledgements. At most
        :attr:`max_batches_sending` batches are in flight; past that this
        waits for the oldest. Then at most one due partition is snapshotted
        (:meth:`due_partitions`)."""
        t_entry = time.time()
        by_part: dict[int, list] = defaultdict(list)
        for m in events:
            by_part[m.partition].append(m)
        while len(self._sending) >= self.max_batches_sending:
            await asyncio.wait(list(self._sending), return_when=asyncio.FIRST_COMPLETED)
        async with self.lock:
            t_locked = time.time()
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
            futs: list = []
            done: list = []
            process_s = 0.0
            for p, evs in by_part.items():
                if any(evs[i].offset > evs[i + 1].offset for i in range(len(evs) - 1)):
                    evs.sort(key=lambda m: m.offset)
                r = await self._run_partition(p, evs, futs)
                if r is not None:
                    done.append(r)
                    process_s += r[3]
            await self._send_forwards([d[2] for d in done], futs)
            t_sent = time.time()
            task = asyncio.get_running_loop().create_task(
                self._finish_batch(futs, done, events, by_part, t_entry, t_locked, t_sent, process_s))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
            snap_s = 0.0
            if any(self._overdue(p) for p in set(self.pending) | set(by_part)):
                # a snapshot is due: this batch's sends go first, so that
                # its messages are pending and acked by it (once per
                # snapshot interval the stage waits for the broker)
                await task
                due = self.due_partitions()
                if due:
                    t0 = time.time()
                    await self._snapshot_locked(due[:1], "interval")
                    snap_s = time.time() - t0
            self._snap_s_last = snap_s

    async def _finish_batch(self, futs: list, done: list, events: list, by_part: dict, t_entry: float,
                            t_locked: float, t_sent: float, process_s: float) -> None:
        """Await one micro-batch's sends; then its alerts count as produced
        (metrics, latency) and its messages join the pending list. A failed
        send leaves them unacked (the next owner reads them again)."""
        try:
            if futs:
                await asyncio.gather(*futs)
        except Exception:  # noqa: BLE001 - unacked messages are re-read by the next owner
            log.exception("%s stage: sends of a batch failed; its %d messages stay unacked",
                          self.stage, sum(len(d[1]) for d in done))
            return
        t_produced = time.time()
        for p, evs, out, _ in done:
            self._after_produce(p, evs, out, t_produced, t_entry)
        if self.trace is not None and events:
            ts = [m.timestamp for m in events if m.timestamp]
            lag = {}
            if self.highwater is not None:
                for p in by_part:
                    rt = self.runtimes.get(p)
                    hw = self.highwater(p)
                    if rt is not None and hw is not None:
                        lag[p] = max(0, hw - rt.next_offset)
            self.trace.write(
                "batch", stage=self.stage, n=len(events), parts={p: len(v) for p, v in by_part.items()},
                lock_wait_s=round(t_locked - t_entry, 4),
                age_oldest_s=round(t_entry - min(ts), 4) if ts else None,
                age_newest_s=round(t_entry - max(ts), 4) if ts else None,
                process_s=round(process_s, 4), produce_s=round(t_produced - t_sent, 4),
                snapshot_s=round(self._snap_s_last, 4), handle_s=round(time.time() - t_entry, 4),
                alerts=sum(len(d[2].alerts) for d in done), lag=lag)

    def due_partitions(self) -> list[int]:
        """Partitions with pending acks whose snapshot interval has passed,
        most overdue first. The interval is ``snapshot_interval_s``
        (``catalog_snapshot_interval_s`` for the catalog stage), stretched
        to ``snapshot_cost_factor`` (20) x the summed cost of the last
        snapshot of every partition (the state capture under the lock; not
        the wait for the broker to store the records, nor the acks, which
        grow with the interval), so snapshots of a large state take at most
        ~5% of the stage's time (commits lag accordingly), up to
        ``snapshot_max_interval_s``. A partition never snapshotted counts
        from the driver's start.

        Snapshots of a stage are paced: none is due sooner than interval /
        (partitions owned) after the stage's previous one, so the partitions
        settle at evenly spaced phases instead of all coming due together
        (at soak rates four 16-MB catalog snapshots within 1.5 s held the
        broker and starved the account stage: RELIABILITY.md, "Forwards
        merged per micro-batch, paced snapshots")."""
        now, interval = time.monotonic(), self._interval()
        if not self._paced(now, interval):
            return []
        over = [(by, p) for p in self.pending if (by := self._overdue_by(p, now, interval)) is not None]
        return [p for _, p in sorted(over, reverse=True)]

    def _paced(self, now: float, interval: float) -> bool:
        """True when interval / (partitions owned) has passed since the stage's last snapshot."""
        return now - self._last_snapshot_any >= interval / max(1, len(self.runtimes))

    def _interval(self) -> float:
        st = self.settings
        base = st.catalog_snapshot_interval_s if self.stage == "catalog" else st.snapshot_interval_s
        return min(max(base, st.snapshot_cost_factor * sum(self.snapshot_cost_s.values())),
                   max(base, st.snapshot_max_interval_s))

    def _overdue_by(self, p: int, now: float, interval: float) -> float | None:
        """Seconds by which partition ``p``'s snapshot is overdue (pending or
        not), or None when it is not due or not owned."""
        if p not in self.runtimes:
            return None
        by = now - self.last_snapshot.get(p, self._started) - interval
        return by if by >= 0 else None

    def _overdue(self, p: int) -> bool:
        """True when partition ``p``'s snapshot interval has passed (pending
        or not) and the stage's pacing allows a snapshot (:meth:`due_partitions`)."""
        now, interval = time.monotonic(), self._interval()
        return self._paced(now, interval) and self._overdue_by(p, now, interval) is not None

    def snapshot_due(self) -> bool:
        """True when some partition's snapshot is due (:meth:`due_partitions`)."""
        return bool(self.due_partitions())

    async def _run_partition(self, p: int, evs: list, futs: list):
        """Process one partition's events and send what they produce (the send
        futures go to ``futs``). Returns ``(p, evs, out, seconds)`` or None if
        the partition was dropped."""
        rt = self.runtimes.get(p)
        if rt is None:  # dropped by a revocation that could not wait for the lock
            return None
        recs = [Record(m.topic, p, m.offset, m.key, m.value, m.timestamp) for m in evs]
        t0 = time.perf_counter()
        out = rt.process(recs)
        dt = time.perf_counter() - t0
        n = len(recs)
        del recs
        for m in evs:
            # processed: the message waits for its ack (until the next
            # snapshot) holding only its offset; a re-read after a crash
            # comes from the broker, never from here
            m.key = m.value = m.headers = None
        self.metrics.batch_seconds.labels(stage=self.stage).observe(dt)
        self.metrics.batch_size.labels(stage=self.stage).observe(n)
        self.metrics.events_consumed.labels(topic=self.input_topic).inc(n)
        await self._send(out, futs)
        return p, evs, out, dt

    def _after_produce(self, p: int, evs: list, out: StageOutput, now: float, t_entry: float) -> None:
        """Metrics, audit and pending acks once ``out`` is produced and awaited."""
        m = self.metrics
        for a in out.alerts:
            m.alerts.labels(kind=a.kind.value, detector=a.detector, severity=a.severity.value).inc()
            if a._source_record_ts is not None:
                lat = max(0.0, now - a._source_record_ts)
                m.alert_latency.labels(kind=a.kind.value).observe(lat)
                if self.trace is not None:
                    self.trace.write("alert", stage=self.stage, partition=p, detector=a.detector,
                                     latency_s=round(lat, 4),
                                     age_at_entry_s=round(t_entry - a._source_record_ts, 4),
                                     handle_s=round(now - t_entry, 4))
        if out.alerts or out.valid:
            for et, n in self._entity_counts().items():
                m.state_entities.labels(stage=self.stage, entity_type=et).set(n)
        if self._audit_fh and evs:
            self._audit_fh.write(json.dumps({"stage": self.stage, "partition": p, "first": evs[0].offset,
                                             "last": evs[-1].offset, "n": len(evs), "skipped": out.skipped,
                                             "valid": out.valid, "t": time.time()}) + "\n")
        if p in self.runtimes:  # not revoked meanwhile: ack after the next snapshot
            self.pending[p].extend(evs)

    async def _send(self, out: StageOutput, futs: list) -> None:
        """Send alerts (first) and dead letters; append the delivery futures
        to ``futs`` without awaiting them. Forwards wait for the whole
        micro-batch (:meth:`_send_forwards`)."""
        m = self.metrics
        for a in out.alerts:
            futs.append(await self.topics["alerts"].send(
                key=a.entity_id.encode(), value=a.model_dump_json().encode(), force=True))
        for d in out.dead:
            futs.append(await self.topics["deadletter"].send(
                key=d.record.key, value=d.record.value or b"", headers=d.headers(), force=True))
            m.deadletter.labels(topic=d.record.topic, reason=d.reason.value).inc()
        if out.duplicates:
            m.duplicates_dropped.labels(topic=self.input_topic).inc(out.duplicates)

    async def _send_forwards(self, outs: list[StageOutput], futs: list) -> None:
        """Send the micro-batch's forwards, one record per ``plays.by_artist``
        partition (:func:`stream.runtime.encode_forwards`); append the
        delivery futures to ``futs``."""
        for dest, (value, rts) in encode_forwards(outs).items():
            futs.append(await self.topics["forward"].send(
                value=value, partition=dest, timestamp=rts, force=True))

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

    async def snapshot(self, partitions: list[int] | None = None, why: str = "request", wait: bool = True) -> None:
        """Write snapshots of ``partitions`` (default: all with pending acks)
        and ack the events they cover once written; with ``wait``, first let
        every batch still sending finish (so its messages are pending), and
        return only when the snapshots and every snapshot still in flight
        are written and acked (shutdown: ``PlayGuardApp.on_stop``)."""
        async with self.lock:
            if wait:
                await self.drain_sends()
            await self._snapshot_locked(list(self.pending) if partitions is None else partitions, why, wait=wait)

    async def drain_sends(self, timeout_s: float | None = None) -> bool:
        """Wait until every processed batch's sends are delivered (or failed),
        at most ``timeout_s`` seconds; True when none is left in flight."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._sending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(list(self._sending), timeout=left)
        return True

    async def drain(self) -> None:
        """Wait for every snapshot still being written (and its acks)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    def _capture(self, rt: PartitionRuntime) -> tuple[bytes, int, float]:
        """Serialised state of one partition, its ``next_offset`` and the
        seconds it took (runs in the snapshot thread while the stage lock is
        held, so the state cannot change)."""
        t0 = time.perf_counter()
        data = dumps(rt.state_dict())
        return data, rt.next_offset, time.perf_counter() - t0

    def _chunk(self, p: int, data: bytes, seq: int) -> list[tuple[bytes, bytes]]:
        """Changelog records of a captured state (compressed with
        ``snapshot_codec``; runs in the compress thread, off the lock)."""
        st = self.settings
        return chunk_snapshot(self.stage, p, data, seq, st.snapshot_chunk_bytes, st.snapshot_compress_level,
                              st.snapshot_codec)

    async def _snapshot_locked(self, partitions: list[int], why: str = "request", wait: bool = False) -> None:
        """Snapshot each partition in turn; ack the events it covers once its
        records are in ``changelog``.

        Called with ``self.lock`` held: the state is captured (encoded in the
        snapshot thread) while no batch of this stage runs, and the events
        pending at that moment are the ones it covers. Writing the records
        (up to 17 MB for a catalog partition at soak rates) no longer holds
        the lock: a task awaits the sends, then acks those events (only if
        the partition is still owned by the same runtime); on a failed send
        they go back to the pending list for the next snapshot. With ``wait``
        (revocation, shutdown, explicit requests) this returns only when
        every snapshot in flight is written and acked."""
        loop = asyncio.get_running_loop()
        for p in partitions:
            rt = self.runtimes.get(p)
            if rt is None:
                continue
            t0 = time.monotonic()
            data, seq, state_s = await loop.run_in_executor(_SNAPSHOT_THREAD, self._capture, rt)
            evs = self.pending.pop(p, [])
            t1 = time.monotonic()
            self.last_snapshot[p] = self._last_snapshot_any = t1
            task = loop.create_task(self._finish_snapshot(p, rt, data, seq, evs, t0, t1, state_s, why))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if wait:
            await self.drain()

    async def _finish_snapshot(self, p: int, rt: PartitionRuntime, data: bytes, seq: int, evs: list, t0: float,
                               t1: float, state_s: float, why: str) -> None:
        """Compress and chunk one captured snapshot, write its records, await
        them, then ack the events it covers."""
        nbytes = 0
        try:
            recs = await asyncio.get_running_loop().run_in_executor(_COMPRESS_THREAD, self._chunk, p, data, seq)
            del data
            nbytes = sum(len(v) for _, v in recs)
            futs = [await self.topics["changelog"].send(key=key, value=value, force=True) for key, value in recs]
            del recs
            await asyncio.gather(*futs)
        except Exception:  # noqa: BLE001 - not acked: the next snapshot covers them
            log.exception("snapshot of %s/%d failed", self.stage, p)
            if self.runtimes.get(p) is rt:
                self.pending[p] = evs + self.pending.get(p, [])
            return
        if self.runtimes.get(p) is rt:  # only what a snapshot now covers is acked
            # in slices, yielding between them: a snapshot covers up to
            # tens of thousands of messages
            for i in range(0, len(evs), self.ack_slice):
                if self.runtimes.get(p) is not rt:  # revoked meanwhile: its next owner re-reads the rest
                    break
                part = evs[i:i + self.ack_slice]
                if self._ack_many is not None:
                    self._ack_many(part)
                else:
                    for m in part:
                        self._ack(m)
                if i + self.ack_slice < len(evs):
                    await asyncio.sleep(0)
        now = time.monotonic()
        # the cost a longer interval saves: the state capture under the lock.
        # Not the broker's delivery wait (under load up to 0.4 s per
        # partition: it stretched the account stage's interval to ~20 s and
        # let ~400k delivered messages wait for their ack, RSS +38% in 5
        # min), nor the acks, whose time grows with the messages pending and
        # so with the interval itself (counted, they stretched it further:
        # RSS +20% and p99 4.4 s at 35k plays/s with a factor of 50)
        self.snapshot_cost_s[p] = t1 - t0
        if self.trace is not None:
            self.trace.write("snapshot", stage=self.stage, partition=p, why=why, state_s=round(state_s, 4),
                             lock_s=round(t1 - t0, 4), send_s=round(now - t1, 4), bytes=nbytes)

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
            # batches still sending join the pending list first (bounded:
            # what is not delivered in time is re-read by the next owner)
            await self.drain_sends(timeout_s=5.0)
            await self._snapshot_locked(mine, "revoke", wait=True)
        except Exception:  # noqa: BLE001 - a failed snapshot only costs re-processing
            log.exception("snapshot on revoke failed")
        finally:
            for p in mine:
                self.runtimes.pop(p, None)
                self.pending.pop(p, None)
                self.last_snapshot.pop(p, None)
                self.snapshot_cost_s.pop(p, None)
            self.lock.release()
