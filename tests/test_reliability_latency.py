"""Latency fixes of issue 13 ("Load"), without a broker.

* the worker's consumer is built with ``Settings.consumer_fetch_max_wait_ms``
  (Faust hard-codes 1500 ms; the embedded broker parks a fetch for all of it);
* snapshots are staggered (one due partition per batch, most overdue first,
  interval stretched to 20x the summed cost of the partitions' last
  snapshots), encoded in a
  worker thread, and ack exactly the events they cover, after the alerts of
  those events are produced;
* the latency trace writes batch, alert, snapshot and GC rows.

The end-to-end figures come from ``bench/soak.py --trace`` (RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time

import pytest

from stream.batch import PlayBatch
from stream.config import Settings
from stream.driver import LatencyTrace, StageDriver
from stream.metrics import Metrics
from stream.runtime import StageOutput
from stream.schemas import Alert


class _Msg:
    """Fake Faust ConsumerMessage: what the intake hands the driver."""

    def __init__(self, partition: int, offset: int, log: list, generation: int = 1):
        self.topic, self.partition, self.offset = "plays", partition, offset
        self.key, self.value, self.timestamp = b"k", b"v", time.time() - 0.25
        self.generation_id = generation
        self.acked = False
        self._log = log

    def ack(self):
        assert not self.acked, "acked twice"
        self.acked = True
        self._log.append(("ack", self.partition, self.offset))


class _Topic:
    """Fake Faust topic: records every send in ``log``; delivery futures resolve at once."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log
        self.records: list[tuple] = []  # (partition, value, timestamp) of every send

    async def send(self, key=None, value=None, partition=None, timestamp=None, headers=None, force=False):
        self.log.append(("send", self.name, key))
        self.records.append((partition, value, timestamp))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class _Model:
    def entity_counts(self):
        return {"account": 1}


class _Runtime:
    """Fake PartitionRuntime: one alert per batch; records the thread of state_dict()."""

    def __init__(self, p: int, alerts: bool):
        self.partition, self.next_offset, self.alerts = p, 0, alerts
        self.model = _Model()
        self.state_threads: list[str] = []

    def process(self, recs):
        self.next_offset = recs[-1].offset + 1
        out = StageOutput(valid=len(recs))
        if self.alerts:
            a = Alert.model_validate(_alert_json(self.partition, self.next_offset))
            a._source_record_ts = time.time() - 0.5
            out.alerts = [a]
        return out

    def state_dict(self):
        self.state_threads.append(threading.current_thread().name)
        return {"next": self.next_offset}


def _alert_json(p: int, off: int) -> dict:
    return {
        "alert_id": f"{p:02d}{off:030d}", "kind": "play_fraud", "detector": "rule_track_day",
        "entity_type": "account", "entity_id": f"acc-{p}", "severity": "warning", "score": 1.0,
        "window_start": "2026-01-01T00:00:00Z", "window_end": "2026-01-02T00:00:00Z",
    }


def _driver(tmp_path, log, interval=5.0, alerts=True, trace=True, runtime=_Runtime):
    s = Settings(snapshot_interval_s=interval)
    topics = {n: _Topic(n, log) for n in ("alerts", "deadletter", "changelog", "forward")}
    rts = {}

    def make(p):
        rts[p] = runtime(p, alerts)
        return rts[p]

    d = StageDriver("account", make, s, Metrics(), topics, "plays",
                    trace=LatencyTrace(tmp_path / "trace.jsonl") if trace else None)

    async def restore(parts):  # no broker: fresh runtimes
        for p in parts:
            d.runtimes[p] = make(p)

    d._restore = restore
    return d, rts


async def _until(cond, timeout: float = 5.0) -> None:
    """Wait until ``cond()`` holds (background snapshot tasks), or fail."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def _events(parts_offsets, log):
    return [_Msg(p, o, log) for p, offs in parts_offsets.items() for o in offs]


def test_worker_consumer_uses_the_configured_fetch_wait():
    from stream.app import create_app

    s = Settings(consumer_fetch_max_wait_ms=37, bootstrap_servers="127.0.0.1:1")
    app = create_app(s, Metrics(), models="rules", audio=False)

    async def build():
        thread = app.consumer._new_consumer_thread()
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()  # never started: only releases its client

    assert asyncio.run(build()) == 37  # Faust's own value is 1500


def test_snapshots_are_staggered_threaded_and_ack_only_what_they_cover(tmp_path):
    log: list = []
    d, rts = _driver(tmp_path, log, interval=5.0)

    async def scenario():
        ev1 = _events({0: [0, 1], 1: [0], 2: [0, 1, 2]}, log)
        d._started = time.monotonic()  # nothing due yet
        await d.handle(ev1)
        assert not d.pending, "pending only once the batch's sends are delivered"
        await d.drain_sends()
        assert sorted(d.pending) == [0, 1, 2]
        assert not any(e.acked for e in ev1), "acked before any snapshot"
        # partition 2 most overdue, then 0; 1 not yet due; 3 has nothing pending
        now = time.monotonic()
        d.last_snapshot.update({0: now - 6.0, 1: now - 1.0, 2: now - 9.0})
        assert d.due_partitions() == [2, 0]
        # snapshots costing 0.2 + 0.3 s in all stretch the interval to 20 x 0.5 = 10 s
        d.snapshot_cost_s.update({0: 0.2, 2: 0.3})
        assert d.due_partitions() == []
        d.last_snapshot[2] = now - 10.5
        assert d.due_partitions() == [2]
        # ... but never past snapshot_max_interval_s (60 s)
        d.snapshot_cost_s.update({0: 20.0, 2: 30.0})
        d.last_snapshot[2] = now - 59.0
        assert d.due_partitions() == []
        d.last_snapshot[2] = now - 61.0
        assert d.due_partitions() == [2]
        d.snapshot_cost_s.clear()
        ev2 = _events({0: [2], 2: [3]}, log)
        await d.handle(ev2)
        await d.drain()  # the snapshot's records are written after handle() returns
        return ev1, ev2

    ev1, ev2 = asyncio.run(scenario())
    acked = {(e.partition, e.offset) for e in ev1 + ev2 if e.acked}
    # one snapshot per batch: partition 2 (most overdue), with every event it
    # covers (a due snapshot waits for its batch's sends first)
    assert acked == {(2, 0), (2, 1), (2, 2), (2, 3)}
    snaps = [x for x in log if x[0] == "send" and x[1] == "changelog"]
    assert [k for _, _, k in snaps] == [b"account/2/0"]
    # the state was captured off the event loop's thread
    assert rts[2].state_threads and all(t.startswith("playguard-snapshot") for t in rts[2].state_threads)
    # the alerts of partition 2's records were sent before the snapshot that acks them
    first_ack = log.index(("ack", 2, 0))
    assert log.index(("send", "changelog", b"account/2/0")) < first_ack
    assert [i for i, x in enumerate(log) if x == ("send", "alerts", b"acc-2")][-1] < first_ack

    rows = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    kinds = {r["ev"] for r in rows}
    assert {"batch", "alert", "snapshot"} <= kinds
    alert = next(r for r in rows if r["ev"] == "alert")
    assert 0.5 <= alert["latency_s"] < 5.0 and 0.45 <= alert["age_at_entry_s"] <= alert["latency_s"]
    batch = next(r for r in rows if r["ev"] == "batch")
    assert batch["n"] == 6 and 0.25 <= batch["age_oldest_s"] < 5.0
    snap = next(r for r in rows if r["ev"] == "snapshot")
    assert snap["partition"] == 2 and snap["why"] == "interval" and snap["bytes"] > 0


def test_final_snapshot_acks_every_pending_partition(tmp_path):
    log: list = []
    d, _ = _driver(tmp_path, log, interval=3600.0, alerts=False, trace=False)

    async def scenario():
        evs = _events({0: [0, 1], 1: [5], 3: [7]}, log)
        await d.handle(evs)
        assert not any(e.acked for e in evs)
        await d.snapshot()  # what PlayGuardApp.on_stop calls
        return evs

    evs = asyncio.run(scenario())
    assert all(e.acked for e in evs)
    assert not d.pending


def test_trace_records_full_garbage_collections(tmp_path):
    trace = LatencyTrace(tmp_path / "t.jsonl")
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(trace._on_gc)
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert any(r["ev"] == "gc" and r["gen"] == 2 and r["s"] >= 0 for r in rows)


@pytest.mark.parametrize("bad", [0, -5])
@pytest.mark.parametrize("name", ["consumer_fetch_max_wait_ms", "catalog_batch_max_records"])
def test_fetch_wait_and_catalog_batch_settings_reject_non_positive(name, bad):
    with pytest.raises(ValueError):
        Settings(**{name: bad})


def test_batch_intake_batches_drops_stale_generations_and_applies_back_pressure():
    from stream.app import BatchIntake

    log: list = []
    gen = {"id": 1}
    intake = BatchIntake(max_buffered=5, generation=lambda: gen["id"])

    async def scenario():
        # a whole fetched list arrives at once: taken in one batch, offset order kept
        await intake.put([_Msg(0, o, log) for o in range(3)])
        got = await intake.take(max_records=10, within_s=0.0)
        assert [m.offset for m in got] == [0, 1, 2]
        # within_s: waits for more up to max_records, then returns at once
        t0 = time.monotonic()
        await intake.put([_Msg(1, 0, log)])
        later = asyncio.get_running_loop().call_later(
            0.05, lambda: asyncio.ensure_future(intake.put([_Msg(1, 1, log)])))
        got = await intake.take(max_records=2, within_s=2.0)
        assert [m.offset for m in got] == [0, 1] and time.monotonic() - t0 < 1.0
        later.cancel()
        # max_records caps a batch; the rest stays for the next take
        await intake.put([_Msg(2, o, log) for o in range(4)])
        assert len(await intake.take(max_records=3, within_s=0.0)) == 3
        assert [m.offset for m in await intake.take(max_records=3, within_s=0.0)] == [3]
        # back-pressure: a put over max_buffered waits until a take makes room
        blocked = asyncio.ensure_future(intake.put([_Msg(3, o, log) for o in range(7)]))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        assert len(await intake.take(max_records=4, within_s=0.0)) == 4
        await asyncio.wait_for(blocked, 1.0)
        intake.clear()
        # a rebalance: messages fetched under the old generation are dropped unacked
        await intake.put([_Msg(0, 9, log, generation=1), _Msg(0, 10, log, generation=2)])
        gen["id"] = 2
        got = await intake.take(max_records=10, within_s=0.0)
        assert [m.offset for m in got] == [10]
        # clear (revocation) drops what waits
        await intake.put([_Msg(0, 11, log, generation=2)])
        assert intake.clear() == 1 and len(intake) == 0

    asyncio.run(scenario())
    assert not any(x[0] == "ack" for x in log), "the intake never acks"
    with pytest.raises(ValueError):
        BatchIntake(max_buffered=0)


class _SlowChangelog(_Topic):
    """Changelog whose writes complete (or fail) only when the test says so."""

    def __init__(self, name, log):
        super().__init__(name, log)
        self.futs: list = []

    async def send(self, key=None, value=None, partition=None, timestamp=None, headers=None, force=False):
        self.log.append(("send", self.name, key))
        fut = asyncio.get_running_loop().create_future()
        self.futs.append(fut)
        return fut


def test_snapshot_write_does_not_block_the_stage_and_acks_only_when_written(tmp_path):
    log: list = []
    d, _ = _driver(tmp_path, log, interval=5.0, trace=False)
    slow = d.topics["changelog"] = _SlowChangelog("changelog", log)

    async def scenario():
        ev1 = _events({0: [0, 1]}, log)
        d._started = time.monotonic() - 10.0  # partition 0 due after this batch
        await d.handle(ev1)  # snapshot of partition 0 captured; compressed and written in the background
        await _until(lambda: len(slow.futs) == 1)
        assert not any(e.acked for e in ev1)
        ev2 = _events({0: [2]}, log)
        await asyncio.wait_for(d.handle(ev2), 1.0)  # the stage is not blocked by the write
        await d.drain_sends()
        assert d.pending[0] == ev2, "events after the captured state wait for the next snapshot"
        slow.futs[0].set_result(None)
        await d.drain()
        assert all(e.acked for e in ev1) and not any(e.acked for e in ev2)
        # a failed write acks nothing and puts its events back for the next snapshot
        d.last_snapshot[0] = d._last_snapshot_any = time.monotonic() - 10.0
        ev3 = _events({0: [3]}, log)
        await d.handle(ev3)
        await _until(lambda: len(slow.futs) == 2)
        slow.futs[-1].set_exception(RuntimeError("broker gone"))
        await d.drain()
        assert not any(e.acked for e in ev2 + ev3)
        assert [e.offset for e in d.pending[0]] == [2, 3]
        # shutdown: snapshot() waits for the write and acks everything
        task = asyncio.ensure_future(d.snapshot())
        while len(slow.futs) < 3:
            await asyncio.sleep(0.01)
        assert not task.done()
        slow.futs[-1].set_result(None)
        await asyncio.wait_for(task, 1.0)
        assert all(e.acked for e in ev2 + ev3) and not d.pending

    asyncio.run(scenario())


def test_a_slow_broker_write_does_not_stretch_the_snapshot_interval(tmp_path):
    """The interval stretches with the stage's own snapshot cost, not with
    the broker's delivery wait: under load that wait let the account stage's
    interval grow to ~20 s, and the delivered messages waiting for an ack
    with it (RSS +38% in a 5-minute soak)."""
    log: list = []
    d, _ = _driver(tmp_path, log, interval=5.0, trace=False)
    slow = d.topics["changelog"] = _SlowChangelog("changelog", log)

    async def scenario():
        d._started = time.monotonic() - 10.0  # partition 0 due after this batch
        await d.handle(_events({0: [0, 1]}, log))
        await _until(lambda: len(slow.futs) == 1)
        await asyncio.sleep(0.6)  # the broker takes 0.6 s to store the snapshot
        slow.futs[0].set_result(None)
        await d.drain()

    asyncio.run(scenario())
    assert 0.0 <= d.snapshot_cost_s[0] < 0.3, d.snapshot_cost_s
    assert d._interval() == 5.0  # 20 x 0.6 s would have made it 12 s


def test_slow_acks_do_not_stretch_the_snapshot_interval(tmp_path):
    """Acks take time in proportion to the messages a snapshot covers, so
    counting them fed back: a longer interval, more pending messages, longer
    acks, a longer interval (RSS +20%, p99 4.4 s at 35k plays/s)."""
    log: list = []
    d, _ = _driver(tmp_path, log, interval=5.0, trace=False)

    def slow_ack_many(msgs):
        time.sleep(0.3)  # as acking ~300k messages would take
        for m in msgs:
            m.ack()

    d._ack_many = slow_ack_many

    async def scenario():
        d._started = time.monotonic() - 10.0
        await d.handle(_events({0: [0, 1, 2]}, log))
        await d.drain()

    asyncio.run(scenario())
    assert 0.0 <= d.snapshot_cost_s[0] < 0.2, d.snapshot_cost_s
    assert d._interval() == 5.0


def test_worker_gc_thresholds_are_applied_and_checked():
    from stream.app import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(False, Settings().gc_thresholds)
        assert gc.get_threshold() == (50_000, 20, 100)
        with pytest.raises(ValueError):
            tune_gc(False, (0, 10, 10))
    finally:
        gc.set_threshold(*before)


def _drain_after_rebalance(first: dict, refetch: dict):
    """A worker's consumer whose drain loop sees two fetches of ``plays``
    (each ``{partition: (first offset, count)}``): ``first``, returned after
    a rebalance completed while it was in flight (its records were read
    ahead, before the new owner's seek), then ``refetch``, after which the
    loop stops. Returns ``(consumer, tps, calls, drain)``: the partitions'
    ``TP``s, the fetch count, and ``drain()``, which runs the loop and
    returns what reached the ``plays`` intake."""
    from types import SimpleNamespace

    from faust.types import TP

    from stream.app import create_app

    s = Settings(bootstrap_servers="127.0.0.1:1")
    app = create_app(s, Metrics(), models="rules", audio=False)
    consumer = app.consumer
    tps = {p: TP(s.topics.plays, p) for p in {**first, **refetch}}
    app.consumer_generation_id = 1
    calls = {"fetch": 0}
    fetcher = SimpleNamespace(_stopped=asyncio.Event())

    def records(fetch: dict):
        out = {tps[p]: [SimpleNamespace(offset=o) for o in range(lo, lo + n)] for p, (lo, n) in fetch.items()}
        return out, set(out)

    async def wait_next_records(timeout):
        calls["fetch"] += 1
        if calls["fetch"] == 1:
            app.consumer_generation_id = 2
            return records(first)
        fetcher._stopped.set()
        return records(refetch)

    consumer._wait_next_records = wait_next_records
    consumer._to_message = lambda tp_, rec: SimpleNamespace(tp=tp_, offset=rec.offset,
                                                            generation_id=app.consumer_generation_id)

    def drain() -> list:
        async def run():
            await consumer._drain_messages(fetcher)
            return await app.intakes[s.topics.plays].take(max_records=100, within_s=0.0)

        return asyncio.run(run())

    return consumer, tps, calls, drain


def test_drain_loop_drops_a_fetch_that_straddled_a_rebalance_and_seeks_back():
    """Records fetched before a rebalance but returned after it must not reach
    a stage: Faust's own loop reads the generation after the fetch, so such
    records (read ahead of the committed offset) registered the offsets
    between the committed one and themselves as a gap, and the re-fetch from
    the committed offset was then discarded as old (the crash test's 161
    unprocessed offsets). Here they are dropped, the consumer seeks back to
    the committed offsets, and the re-fetched records all reach the intake."""
    committed = 50
    consumer, tps, calls, drain = _drain_after_rebalance({0: (100, 5)}, {0: (committed, 5)})
    tp = tps[0]
    consumer._read_offset[tp] = committed
    calls["seek"] = 0

    async def perform_seek():
        calls["seek"] += 1
        consumer._read_offset[tp] = committed

    consumer.perform_seek = perform_seek
    got = drain()
    assert [m.offset for m in got] == list(range(committed, committed + 5))
    assert not consumer._gap.get(tp), "no offsets may be registered as a gap"
    assert calls == {"fetch": 2, "seek": 1}


def test_next_batch_is_processed_while_the_previous_sends_are_in_flight(tmp_path):
    """A slow broker acknowledgement no longer stops the stage: the next
    batch is processed meanwhile, but a batch's messages are acked only after
    its own sends are delivered and a snapshot covers them."""
    log: list = []
    d, rts = _driver(tmp_path, log, interval=3600.0, trace=False)
    slow = _SlowChangelog("alerts", log)
    d.topics["alerts"] = slow

    async def scenario():
        ev1 = _events({0: [0, 1]}, log)
        ev2 = _events({0: [2, 3]}, log)
        await asyncio.wait_for(d.handle(ev1), 1.0)  # returns before its alert is delivered
        await asyncio.wait_for(d.handle(ev2), 1.0)  # does not wait for ev1's alert delivery
        assert rts[0].next_offset == 4 and len(slow.futs) == 2
        await d.snapshot(wait=False)
        await d.drain()
        assert not any(e.acked for e in ev1 + ev2), "nothing acked before its alerts are delivered"
        slow.futs[0].set_result(None)
        await asyncio.sleep(0.01)
        assert [e.offset for e in d.pending[0]] == [0, 1]
        slow.futs[1].set_exception(RuntimeError("broker gone"))
        await d.snapshot()  # drains the sends first: ev1 pending, ev2 failed
        return ev1, ev2

    ev1, ev2 = asyncio.run(scenario())
    assert all(e.acked for e in ev1)
    assert not any(e.acked for e in ev2), "a failed send leaves its batch unacked"
    # max_batches_sending bounds the batches in flight
    d2, _ = _driver(tmp_path, [], interval=3600.0, trace=False)
    slow2 = _SlowChangelog("alerts", [])
    d2.topics["alerts"] = slow2
    d2.max_batches_sending = 2

    async def bounded():
        await d2.handle(_events({0: [0]}, []))
        await d2.handle(_events({0: [1]}, []))
        third = asyncio.ensure_future(d2.handle(_events({0: [2]}, [])))
        await asyncio.sleep(0.05)
        assert not third.done(), "a third batch waits while two are sending"
        slow2.futs[0].set_result(None)
        await asyncio.wait_for(third, 1.0)
        for f in slow2.futs[1:]:
            if not f.done():
                f.set_result(None)
        await d2.drain_sends()

    asyncio.run(bounded())


def test_drain_loop_seeks_back_on_an_offset_jump_and_accepts_only_a_confirmed_gap():
    """A fetch that jumps past the read offset (seen right after a rebalance:
    a fetch of the old position arriving after the seek to the committed
    offset) is not registered as an offset gap: the partition is sought back
    and read again. Only a jump that repeats after the re-fetch (a real gap,
    e.g. transaction markers) is registered and passed over."""
    from types import SimpleNamespace

    from faust.types import TP

    from stream.app import create_app

    s = Settings(bootstrap_servers="127.0.0.1:1")
    app = create_app(s, Metrics(), models="rules", audio=False)
    consumer = app.consumer
    tp = TP(s.topics.plays, 0)
    consumer._read_offset[tp] = 50
    app.consumer_generation_id = 1
    seeks = []
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    # fetch 1 jumps 50 -> 100 (not real: 50.. exist); fetch 2 after the seek
    # reads 50..54; fetch 3 jumps 55 -> 60, fetch 4 jumps the same way (real);
    # fetch 5 skips one record (62 -> 63: seen after a seek to the committed
    # offset), fetch 6 reads it
    fetches = [list(range(100, 105)), list(range(50, 55)), [60, 61], [60, 61], [63], [62, 63]]

    async def wait_next_records(timeout):
        offs = fetches.pop(0)
        if not fetches:
            fetcher._stopped.set()
        return {tp: [SimpleNamespace(offset=o) for o in offs]}, {tp}

    async def seek(partition, offset):
        seeks.append((partition, offset))
        consumer._read_offset[partition] = offset

    consumer._wait_next_records = wait_next_records
    consumer.seek = seek
    consumer._to_message = lambda tp_, rec: SimpleNamespace(tp=tp_, offset=rec.offset, generation_id=1)

    async def run():
        await consumer._drain_messages(fetcher)
        return await app.intakes[s.topics.plays].take(max_records=100, within_s=0.0)

    got = asyncio.run(run())
    assert [m.offset for m in got] == [50, 51, 52, 53, 54, 60, 61, 62, 63]
    assert seeks == [(tp, 50), (tp, 55), (tp, 62)]
    gap = consumer._gap.get(tp)
    assert gap is not None and sorted((iv.begin, iv.end) for iv in gap) == [(55, 60)]


def test_ack_many_keeps_fausts_ack_bookkeeping():
    """The consumer's bulk ack gives the same commit bookkeeping as Faust's
    per-message ``Message.ack(consumer)``: references, already-acked and
    repeated offsets, offsets below the committed one, topics without acks."""
    from faust.types import TP
    from faust.types.tuples import ConsumerMessage

    from stream.app import create_app

    def setup():
        s = Settings(bootstrap_servers="127.0.0.1:1")
        app = create_app(s, Metrics(), models="rules", audio=False)
        c = app.consumer
        tp = TP(s.topics.plays, 1)
        app.topics.acks_enabled_for = lambda topic: topic == tp.topic  # as once subscribed
        c._committed_offset[tp] = 10
        msgs = []
        for off in [8, 10, 11, 11, 12, 13, 14]:
            m = ConsumerMessage(tp.topic, 1, off, 0.0, 0, None, b"k", b"v", None, tp=tp, generation_id=1)
            m.refcount = 1
            msgs.append(m)
        msgs[5].refcount = 2  # offset 13: another reference still held
        msgs[6].acked = True  # offset 14: acked before
        other = TP("no-acks", 0)
        m = ConsumerMessage(other.topic, 0, 3, 0.0, 0, None, b"k", b"v", None, tp=other, generation_id=1)
        m.refcount = 1
        msgs.append(m)
        return c, tp, msgs

    c1, tp1, m1 = setup()
    for m in m1:
        m.ack(c1)
    c2, tp2, m2 = setup()
    assert c2.ack_many(m2) == 3
    assert list(c2._acked[tp2]) == list(c1._acked[tp1]) == [10, 11, 12]
    assert c2._acked_index[tp2] == c1._acked_index[tp1]
    assert c2._n_acked == c1._n_acked == 3
    assert [m.acked for m in m2] == [m.acked for m in m1]
    assert [m.refcount for m in m2] == [m.refcount for m in m1]


def test_alert_latency_histogram_resolves_the_one_second_target():
    """The soak reads p99 from ``playguard_alert_latency_seconds`` buckets
    (linear within a bucket, as PromQL): with only 1.0 and 2.5 around the
    target, three alerts at 1.1 s in a hundred read as p99 = 2.0 s."""
    import importlib.util
    from pathlib import Path

    from prometheus_client import generate_latest

    spec = importlib.util.spec_from_file_location(
        "soak_bench", Path(__file__).resolve().parents[1] / "bench" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    m = Metrics()
    for v in [0.4] * 97 + [1.1] * 3:
        m.alert_latency.labels(kind="play_fraud").observe(v)
    text = generate_latest(m.registry).decode()
    p99 = soak.histogram_quantile(0.99, soak.histogram(text, "playguard_alert_latency_seconds", kind="play_fraud"))
    assert abs(p99 - 1.1) < 0.15, p99
    # and a p99 under the target reads under it
    m2 = Metrics()
    for v in [0.4] * 97 + [0.9] * 3:
        m2.alert_latency.labels(kind="play_fraud").observe(v)
    text = generate_latest(m2.registry).decode()
    assert soak.histogram_quantile(0.99, soak.histogram(text, "playguard_alert_latency_seconds", kind="play_fraud")) <= 1.0


def test_processed_messages_wait_for_their_ack_without_their_payload(tmp_path):
    """Between processing and the snapshot that acks them, messages hold
    only their offsets: a pending message kept its whole value (up to
    hundreds of KB for a forwarded catalog batch) until the next snapshot.
    A dead letter still carries the original bytes."""
    from stream.ingest import DeadLetter, DeadLetterReason

    log: list = []
    d, rts = _driver(tmp_path, log, interval=3600.0, trace=False)
    sent: list = []

    class _DLQ(_Topic):
        async def send(self, key=None, value=None, partition=None, timestamp=None, headers=None, force=False):
            sent.append(value)
            return await super().send(key=key, value=value)

    d.topics["deadletter"] = _DLQ("deadletter", log)

    async def scenario():
        await d.handle([])  # nothing: creates no runtime
        d.runtimes[0] = rts[0] = _Runtime(0, alerts=False)
        orig = rts[0].process

        def process(recs):
            out = orig(recs)
            out.dead = [DeadLetter(recs[1], DeadLetterReason.invalid_json, "not JSON")]
            return out

        rts[0].process = process
        evs = _events({0: [0, 1, 2]}, log)
        for i, e in enumerate(evs):
            e.value = b"payload-%d" % i
        await d.handle(evs)
        await d.drain_sends()
        return evs

    evs = asyncio.run(scenario())
    assert [e.offset for e in d.pending[0]] == [0, 1, 2]
    assert all(e.value is None and e.key is None for e in d.pending[0])
    assert sent == [b"payload-1"]


def test_catalog_stage_snapshots_on_its_own_longer_interval(tmp_path):
    """The catalog stage's interval is ``catalog_snapshot_interval_s`` (its
    pending messages are few forwarded batches; its state is large); the
    account stage keeps ``snapshot_interval_s``."""
    s = Settings(snapshot_interval_s=5.0, catalog_snapshot_interval_s=30.0)
    topics = {n: _Topic(n, []) for n in ("alerts", "deadletter", "changelog", "forward")}
    drivers = {st: StageDriver(st, lambda p: _Runtime(p, False), s, Metrics(), topics, "x")
               for st in ("account", "catalog")}
    now = time.monotonic()
    for d in drivers.values():
        d.runtimes[0] = _Runtime(0, False)
        d.pending[0] = [object()]
        d.last_snapshot[0] = now - 10.0
    assert drivers["account"].due_partitions() == [0]
    assert drivers["catalog"].due_partitions() == []
    drivers["catalog"].last_snapshot[0] = now - 31.0
    assert drivers["catalog"].due_partitions() == [0]
    with pytest.raises(ValueError):
        Settings(catalog_snapshot_interval_s=0)


def test_a_dropped_fetch_of_a_never_committed_partition_is_read_again_from_the_start():
    """aiokafka's ``seek_to_committed`` does not move a partition that has
    no committed offset, so after a fetch that straddled a rebalance is
    dropped, such a partition must be sought back to its start: otherwise
    the dropped records are never read (46 offsets lost in a crash run when
    the catalog stage had not yet snapshotted a partition it kept)."""
    consumer, tps, calls, drain = _drain_after_rebalance({0: (185, 46), 1: (70, 3)}, {0: (0, 5)})
    tp, other = tps[0], tps[1]
    seeks: list = []

    async def perform_seek():  # Faust's: read offsets from the committed ones
        consumer._read_offset[tp] = None  # never committed
        consumer._read_offset[other] = 60

    async def seek(tp_, offset):
        seeks.append((tp_, offset))
        consumer._read_offset[tp_] = offset or None

    consumer.perform_seek = perform_seek
    consumer.seek = seek
    consumer.assignment = lambda: {tp, other}
    got = drain()
    assert seeks == [(tp, 0)], "only the never-committed partition is sought to its start"
    assert [m.offset for m in got] == list(range(5))


class _ForwardingRuntime(_Runtime):
    """Fake account-stage runtime: each processed record forwards one play to
    ``plays.by_artist`` partition ``offset % 2``, with event id ``p<partition>-<offset>``."""

    def process(self, recs):
        out = super().process(recs)
        for dest in (0, 1):
            mine = [r for r in recs if r.offset % 2 == dest]
            if mine:
                out.forwards[dest] = PlayBatch.from_dicts(
                    [dict(event_id=f"p{self.partition}-{r.offset}", ts=1.7e9, account_id="a", track_id="t",
                          artist_id="x", ms_played=1000) for r in mine],
                    record_ts=[1.8e9 + 10 * self.partition + r.offset for r in mine])
        return out


def test_a_micro_batch_forwards_one_record_per_destination_partition(tmp_path):
    """Forwards of every input partition of a micro-batch are merged: the
    embedded broker's fetch cost grows with the record batches a partition
    holds, and one record per (input, destination) pair stored up to
    ``partitions`` times more of them (RELIABILITY.md)."""
    log: list = []
    d, _ = _driver(tmp_path, log, interval=3600.0, alerts=False, trace=False, runtime=_ForwardingRuntime)

    async def scenario():
        await d.handle(_events({0: [0, 1, 2], 1: [4, 5], 2: [7]}, log))
        await d.drain_sends()

    asyncio.run(scenario())
    sent = sorted(d.topics["forward"].records, key=lambda r: r[0])
    assert [dest for dest, _, _ in sent] == [0, 1], "one record per destination partition"
    got = {dest: PlayBatch.from_bytes(v) for dest, v, _ in sent}
    assert got[0].event_id == ["p0-0", "p0-2", "p1-4"]
    assert got[1].event_id == ["p0-1", "p1-5", "p2-7"]
    # each record carries the newest plays-record timestamp behind it (alert latency)
    assert {dest: ts for dest, _, ts in sent} == {0: 1.8e9 + 14, 1: 1.8e9 + 27}


def test_snapshots_of_a_stage_are_paced_to_even_phases(tmp_path):
    """Partitions that come due together are snapshotted interval / n apart
    (n partitions owned), not back to back: four 16-MB catalog snapshots
    within 1.5 s starved the account stage in the soaks (RELIABILITY.md)."""
    log: list = []
    d, _ = _driver(tmp_path, log, interval=8.0, alerts=False, trace=False)

    async def scenario():
        await d.handle(_events({p: [0] for p in range(4)}, log))
        await d.drain_sends()
        t0 = time.monotonic()
        for p in range(4):  # all four overdue at once
            d.last_snapshot[p] = t0 - 9.0 - p
        assert d.due_partitions() == [3, 2, 1, 0]
        await d.snapshot([3], "interval", wait=True)
        assert d.due_partitions() == [], "the next waits interval / 4 = 2 s"
        assert not d._overdue(2), "a batch does not wait for its sends while pacing holds snapshots back"
        d._last_snapshot_any = time.monotonic() - 1.9
        assert d.due_partitions() == []
        d._last_snapshot_any = time.monotonic() - 2.1
        assert d.due_partitions() == [2, 1, 0] and d._overdue(2)

    asyncio.run(scenario())
