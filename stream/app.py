"""The PlayGuard worker's topology, in one place.

::

    plays ──▶ [account_stage] ──▶ alerts, deadletter, changelog
                   │
                   └─▶ plays.by_artist ──▶ [catalog_stage] ──▶ alerts, changelog
    audio.ingested ──▶ [audio_stage] ──▶ qc.reports, alerts, deadletter, changelog

The two play stages do not go through Faust's per-event path (Conductor,
``Event`` objects, stream queues, ``take_events``: about 130 us per record on
two cores). The worker's consumer (:func:`_consumer_class`) hands every
fetched record list of ``plays`` and ``plays.by_artist`` to a
:class:`BatchIntake`, and one task per stage takes micro-batches from it and
hands them to its :class:`~stream.driver.StageDriver`, which acks each message
only after its alerts are produced and a snapshot covers it. Faust still owns
the consumer group, rebalances, offsets and commits. The audio stage (a few
records a second) keeps Faust's agent with ``stream.noack().take_events``.

A worker runs every stage by default. ``stages=("account",)`` or
``("catalog",)`` (``playguard worker --stages``) runs one play stage per
process, in its own consumer group (``<app_id>.<stage>``), so the two stages
get a core and an event loop each: one stage's batches, snapshots and
collections then never delay the other's alerts (RELIABILITY.md, "Soak").
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import time
from pathlib import Path

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from stream.config import Settings
from stream.driver import LatencyTrace, StageDriver, watch_event_loop
from stream.metrics import Metrics
from stream.pipeline import build_account_model, build_catalog_model
from stream.runtime import account_partition_factory, catalog_partition_factory

log = logging.getLogger("playguard.app")


def _consumer_thread_class(fetch_max_wait_ms: int):
    """Faust's aiokafka consumer thread with ``fetch_max_wait_ms`` set.

    faust-streaming 0.15.3 builds the worker's ``AIOKafkaConsumer`` with
    ``fetch_max_wait_ms=1500`` hard-coded (``AIOKafkaConsumerThread.
    _create_worker_consumer``). The embedded broker (Tansu) keeps a fetch
    parked for that whole time even when records arrive, so every fetch sent
    while the worker was caught up delayed the next records by up to 1.5 s
    (measured: 0.63 s median delivery delay with 1500 ms, 16 ms with 100 ms).
    The value is read by aiokafka's ``Fetcher`` when the consumer starts.
    """

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    return ConsumerThread


class BatchIntake:
    """Buffer of fetched messages of one input topic, taken by its stage in
    micro-batches (replaces Faust's per-event Conductor -> stream -> ``take_events``
    path for the play stages).

    :meth:`put` is called by the consumer's drain loop with the records of one
    partition from one fetch; :meth:`take` waits for the first message, then up
    to ``within_s`` for ``max_records``, and returns them in arrival order
    (offset order within a partition). Each message carries one reference
    (``refcount`` 1), dropped by the stage's ack after its snapshot, which lets
    Faust commit it. Messages of an older consumer generation (fetched before
    a rebalance) are dropped unacked, as Faust's own stream does; their new
    owner reads them again from the committed offset.

    Back-pressure: :meth:`put` waits while more than ``max_buffered`` messages
    are waiting, so the fetcher stops reading ahead (Faust's
    ``stream_buffer_maxsize`` plays this role on the per-event path).

    Args:
        max_buffered: messages held before :meth:`put` waits.
        generation: ``generation()`` is the consumer's current generation id
            (None: no check).

    Raises:
        ValueError: if ``max_buffered`` is not positive.
    """

    def __init__(self, max_buffered: int = 8192, generation=None):
        if max_buffered <= 0:
            raise ValueError("max_buffered must be positive")
        self.max_buffered = max_buffered
        self.generation = generation
        self.items: list = []
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self.items)

    async def put(self, messages: list, stop_waiting=None) -> None:
        """Append ``messages`` (each with one reference taken); wait while the
        buffer is over ``max_buffered`` (or until the awaitable that
        ``stop_waiting()`` returns resolves, if given: Faust's
        ``suspend_flow.wait`` during a rebalance)."""
        if not messages:
            return
        self.items.extend(messages)
        self._ready.set()
        if len(self.items) > self.max_buffered:
            self._space.clear()
            if stop_waiting is None:
                await self._space.wait()
            else:
                waiter = asyncio.ensure_future(self._space.wait())
                other = asyncio.ensure_future(stop_waiting())
                try:
                    await asyncio.wait([waiter, other], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    other.cancel()

    async def take(self, max_records: int, within_s: float) -> list:
        """Wait for at least one message, then up to ``within_s`` seconds for
        ``max_records``; return at most ``max_records`` messages (possibly none
        when every waiting message was of an older generation)."""
        while not self.items:
            self._ready.clear()
            await self._ready.wait()
        if len(self.items) < max_records and within_s > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within_s
            while len(self.items) < max_records:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._ready.clear()
                try:
                    await asyncio.wait_for(self._ready.wait(), left)
                except asyncio.TimeoutError:
                    break
        out = self.items[:max_records]
        del self.items[:max_records]
        if len(self.items) <= self.max_buffered:
            self._space.set()
        if self.generation is not None and out:
            gen = self.generation()
            if any(m.generation_id != gen for m in out):
                kept = [m for m in out if m.generation_id == gen]
                log.warning("dropped %d messages of an older consumer generation", len(out) - len(kept))
                out = kept
        return out

    def clear(self) -> int:
        """Drop every waiting message unacked (on revocation: Faust seeks
        every partition back to its committed offset). Returns how many."""
        n = len(self.items)
        self.items = []
        self._space.set()
        return n


def _consumer_class(thread_cls):
    """Faust's aiokafka ``Consumer`` whose drain loop hands whole fetched
    record lists of the topics in ``app.intakes`` to their
    :class:`BatchIntake`.

    Faust's ``Consumer._drain_messages`` (faust-streaming 0.15.3) awaits, per
    record, ``wait_first(callback(message), suspend_flow.wait())`` (two
    tasks), then the Conductor decodes it into an ``Event``, queues it on the
    agent's channel, and the stream's ``take_events`` calls the sensors and
    builds the batch again: most of the worker's CPU per play at soak rates
    (RELIABILITY.md, "Soak"). This loop keeps Faust's bookkeeping per fetch:
    records older than the partition's read offset are dropped, offset gaps
    are registered for commits (``_add_gap``), ``broker_commit_every`` is
    honoured, and paused/buffered partitions are respected. Records of other
    topics (``audio.ingested``) still take Faust's per-event path.
    """

    class Consumer(faust_aiokafka.Consumer):
        @property
        def _gap_probe(self) -> dict:
            """tp -> (read offset, offset jumped to) awaiting a re-fetch."""
            probe = self.__dict__.get("_pg_gap_probe")
            if probe is None:
                probe = self.__dict__["_pg_gap_probe"] = {}
            return probe

        def _new_consumer_thread(self):
            return thread_cls(self, loop=self.loop, beacon=self.beacon)

        def ack_many(self, messages) -> int:
            """Drop the stage's reference of each message and mark those that
            reach zero done for commits: the bookkeeping of Faust's
            ``Message.ack`` -> ``Consumer.ack`` (faust-streaming 0.15.3:
            ``acked``, ``_acked_index``, ``_acked``, ``_n_acked``,
            ``_unacked_messages``, the ``_waiting_for_ack`` wake-up), under
            one ``ack_lock`` acquisition per call instead of three per
            message. A snapshot acks every message it covers at once (20k
            at 15k plays/s): one by one that held the event loop for 0.1-1 s.
            Returns how many offsets became committable.
            """
            done = 0
            with ack_lock:
                by_tp: dict = {}
                for m in messages:
                    if m.acked:
                        continue
                    m.refcount = max(m.refcount - 1, 0)
                    if m.refcount:
                        continue
                    m.acked = True
                    by_tp.setdefault(m.tp, []).append(m)
                acks_enabled_for = self.app.topics.acks_enabled_for
                for tp, ms in by_tp.items():
                    if not acks_enabled_for(tp.topic):
                        continue
                    committed = self._committed_offset[tp]
                    index = self._acked_index[tp]
                    new = [m.offset for m in ms
                           if (committed is None or m.offset >= committed) and m.offset not in index]
                    if len(set(new)) != len(new):
                        new = list(dict.fromkeys(new))
                    self._unacked_messages.difference_update(ms)
                    index.update(new)
                    self._acked[tp].extend(new)
                    self._n_acked += len(new)
                    done += len(new)
                notify(self._waiting_for_ack)
            return done

        async def _seek_back_on_jump(self, tp, r_off: int, off: int) -> None:
            """A fetch jumped from the next offset to read, ``r_off``, to ``off`` > r_off.

            Faust registers such a jump as an offset gap (acked without
            being processed: right for transaction markers, wrong for
            records a fetch skipped). It was seen right after a rebalance
            (a fetch of the old position arriving after the seek to the
            committed offset: 159 records would have been lost). So the
            partition is sought back to ``r_off`` and the records from
            ``off`` on are dropped; only if the re-fetch jumps the same way
            is the gap real and registered (transaction markers on a real
            Kafka cluster: one extra fetch per marker).
            """
            log.warning("offset jump on %s: %d -> %d; seeking back to %d", tp, r_off, off, r_off)
            self._gap_probe[tp] = (r_off, off)
            await self.seek(tp, r_off)

        async def _drop_stale_fetch(self, records) -> None:
            """Drop the records of a fetch that straddled a rebalance.

            Faust's own drain loop reads the generation *after* the fetch, so
            records fetched before the rebalance (read ahead of the committed
            offset C) pass as the new generation's: the first one at offset
            P > C + 1 registers C+1..P-1 as an offset gap (committed without
            being processed) and moves the read offset past them, so the
            re-fetch from C is discarded as old. Found by the crash test (161
            offsets of a partition the surviving worker kept were never
            processed). Here such records are dropped and, once the flow is
            active again (the recovery's own seek may have run before or
            after the fetch), every partition is sought back to its committed
            offset; nothing of the new generation has reached a stage yet,
            since this loop is the intakes' only writer.
            """
            n = sum(len(r) for r in records.values())
            log.warning("dropped %d records of a fetch that straddled a rebalance", n)
            if self.flow_active:
                await self.perform_seek()
                # aiokafka's seek_to_committed leaves a partition with no
                # committed offset (None or 0) where the fetch left it: past
                # the dropped records, which were then never read (crash
                # series, 2026-11-22: 46 offsets of a catalog partition the
                # surviving worker kept, before its first snapshot). Such a
                # partition is read again from its start; the records its
                # state already covers are skipped (``next_offset``).
                fresh = [tp for tp in records if not self._read_offset.get(tp)]
                assigned = self.assignment() if fresh else set()
                for tp in fresh:
                    if tp in assigned:
                        log.warning("%s has no committed offset: re-reading it from the start", tp)
                        await self.seek(tp, 0)

        async def _drain_messages(self, fetcher) -> None:
            intakes: dict = getattr(self.app, "intakes", None) or {}
            if not intakes:
                return await super()._drain_messages(fetcher)
            callback = self.callback
            consumer_should_stop = self._stopped.is_set
            fetcher_should_stop = fetcher._stopped.is_set
            read_offset = self._read_offset
            acks_enabled_for = self.app.topics.acks_enabled_for
            to_message = self._to_message
            try:
                while not (consumer_should_stop() or fetcher_should_stop()):
                    # the generation is read before the fetch: records that
                    # a fetch returns across a rebalance may predate the
                    # new owner's seek to the committed offset (see
                    # _drop_stale_fetch)
                    generation = self.app.consumer_generation_id
                    records, active = await self._wait_next_records(1.0)
                    await asyncio.sleep(0)
                    if not records or self.should_stop:
                        continue
                    if self.app.consumer_generation_id != generation:
                        await self._drop_stale_fetch(records)
                        continue
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    for tp, recs in records.items():
                        if not self.flow_active or self.app.consumer_generation_id != generation:
                            break
                        if active is not None and tp not in active and tp not in self._buffered_partitions:
                            continue
                        intake = intakes.get(tp.topic)
                        r_off = read_offset[tp]
                        if intake is None:  # Faust's per-event path
                            for rec in recs:
                                if r_off is None or rec.offset >= r_off:
                                    if r_off and rec.offset - r_off > 1 and acks_enabled_for(tp.topic):
                                        await self._add_gap(tp, r_off + 1, rec.offset)
                                    await self.wait_first(callback(to_message(tp, rec)), self.suspend_flow.wait())
                                    r_off = rec.offset
                                    read_offset[tp] = r_off
                            continue
                        # here the read offset is always the *next* offset to
                        # read, as Faust's seeks set it (Faust's own loop stores
                        # the last one read, so after a seek to C it let a
                        # fetch starting at C+1 skip C unnoticed)
                        msgs = []
                        jumped = None
                        for rec in recs:
                            off = rec.offset
                            if r_off is not None:
                                if off < r_off:
                                    continue
                                if off > r_off:
                                    if self._gap_probe.get(tp) != (r_off, off):
                                        jumped = off  # see _seek_back_on_jump
                                        break
                                    log.warning("offset gap on %s confirmed by a re-fetch: %d..%d",
                                                tp, r_off, off - 1)
                                    # Faust's own loop passes ``off`` as the end, which
                                    # marks the record at ``off`` done before it is
                                    # processed (its interval includes the end)
                                    await self._add_gap(tp, r_off, off - 1)
                            m = to_message(tp, rec)
                            m.refcount = 1  # the stage's reference, dropped by its ack
                            msgs.append(m)
                            r_off = off + 1
                        if msgs:
                            read_offset[tp] = r_off
                            self._gap_probe.pop(tp, None)
                            await intake.put(msgs, self.suspend_flow.wait)
                        if jumped is not None:
                            await self._seek_back_on_jump(tp, r_off, jumped)
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    return
                raise

    return Consumer


def tune_gc(freeze: bool, thresholds: tuple[int, int, int] | None) -> None:
    """Garbage-collector settings of the worker (``Settings.gc_freeze``,
    ``Settings.gc_thresholds``): optionally collect once and freeze every
    object alive now (``gc.freeze``: start-up objects are never scanned
    again), then set the collection thresholds (``gc.set_threshold``).

    Raises:
        ValueError: if a threshold is not positive.
    """
    if freeze:
        gc.collect()
        gc.freeze()
        log.info("gc.freeze: %d objects frozen", gc.get_freeze_count())
    if thresholds is not None:
        if len(thresholds) != 3 or any(int(t) <= 0 for t in thresholds):
            raise ValueError(f"gc thresholds must be three positive integers, got {thresholds!r}")
        gc.set_threshold(*(int(t) for t in thresholds))


def _drop_spinner_logging() -> None:
    """Undo the DEBUG root level that Faust's start-up spinner sets.

    At ``--loglevel warn`` or above, ``faust.Worker`` adds a ``SpinnerHandler``
    at DEBUG to the root logger and lowers the root logger to DEBUG
    (``Worker._setup_spinner_handler``, faust-streaming 0.15.3), and never
    raises it again: every ``log.debug`` of aiokafka and Faust (several per
    produce and fetch request) then builds a ``LogRecord`` (3.4% of the
    worker's CPU in a soak profile). This removes the spinner handler and
    sets the root level back to the lowest level of the remaining handlers
    (the configured ``--loglevel``)."""
    root = logging.getLogger()
    spinners = [h for h in root.handlers if type(h).__name__ == "SpinnerHandler"]
    for h in spinners:
        root.removeHandler(h)
    levels = [h.level for h in root.handlers if h.level > logging.NOTSET]
    if spinners and levels and root.level < min(levels):
        root.setLevel(min(levels))


class PlayGuardApp(faust.App):
    """Faust app that drains its drivers (snapshot, then ack) before the
    consumer commits and stops, and sets the consumer's fetch wait
    (``Settings.consumer_fetch_max_wait_ms``, see :func:`_consumer_thread_class`)."""

    drivers: list = []
    #: input topic name -> :class:`BatchIntake` (filled by the consumer's drain loop)
    intakes: dict = {}
    fetch_max_wait_ms: int = 50
    gc_freeze: bool = True
    gc_thresholds: tuple[int, int, int] | None = None

    async def on_start(self) -> None:
        """Before consuming: with ``Settings.gc_freeze``, collect once and
        move every object alive now (imports, numba kernels compiled by
        :func:`stream.pipeline.warm_up`: ~300k objects) to the collector's
        permanent generation (``gc.freeze``, Python >= 3.7). A full
        collection of them took 0.2-0.6 s and blocked the event loop, every
        ~20 s under load; objects created later are collected as usual."""
        await super().on_start()
        _drop_spinner_logging()
        tune_gc(self.gc_freeze, self.gc_thresholds)

    def _new_transport(self):
        """Faust's aiokafka transport, with the consumer fetch wait of the settings."""
        thread_cls = _consumer_thread_class(self.fetch_max_wait_ms)

        class Transport(faust_aiokafka.Transport):
            pass

        Transport.Consumer = _consumer_class(thread_cls)
        return Transport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        """Stop taking batches, snapshot every owned partition and ack, then
        stop as Faust does (its final commit then covers every processed record)."""
        for d in self.drivers:
            d.stopping = True
        for d in self.drivers:
            try:
                await d.snapshot()
            except Exception:  # noqa: BLE001 - shutdown must go on
                log.exception("final snapshot failed")
        await super().on_stop()


#: the play stages a worker runs by default
PLAY_STAGES: tuple[str, ...] = ("account", "catalog")


def parse_stages(stages) -> tuple[str, ...]:
    """Play stages from ``("account", "catalog")``-like input or a
    comma-separated string (``playguard worker --stages account``), in
    topology order.

    Raises:
        ValueError: on an unknown stage or an empty set.
    """
    if isinstance(stages, str):
        stages = [x.strip() for x in stages.split(",") if x.strip()]
    got = set(stages)
    unknown = got - set(PLAY_STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(PLAY_STAGES)}")
    if not got:
        raise ValueError(f"no stage given; choose from {', '.join(PLAY_STAGES)}")
    return tuple(st for st in PLAY_STAGES if st in got)


def create_app(
    settings: Settings,
    metrics: Metrics,
    models: str = "full",
    audit_path: Path | None = None,
    audio: bool = True,
    stages: tuple[str, ...] = PLAY_STAGES,
) -> PlayGuardApp:
    """Build the Faust app with its three agents.

    Args:
        settings: configuration (bootstrap servers, topics, timeouts).
        metrics: metrics to update.
        models: model set of :mod:`stream.pipeline` (``full``, ``rules``, ``noop``).
        audit_path: optional JSONL file of processed offset ranges.
        audio: run the audio-QC agent.
        stages: the play stages this worker runs (``account``, ``catalog``).
            With one of the two, the consumer group is ``<app_id>.<stage>``:
            a Kafka group whose members subscribe to different topics would
            let Faust's assignor hand a member partitions it never reads.

    Raises:
        ValueError: on an unknown or empty stage set.
    """
    s = settings
    stages = parse_stages(stages)
    group = s.app_id if set(stages) == set(PLAY_STAGES) else f"{s.app_id}.{stages[0]}"
    app = PlayGuardApp(
        group,
        broker=[f"kafka://{h}" for h in s.bootstrap_servers.split(",")],
        broker_credentials=_faust_credentials(s),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        store="memory://",
        datadir=Path(tempfile.gettempdir()) / f"playguard-{group}",
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=s.broker_rebalance_timeout_s,
        broker_session_timeout=s.broker_session_timeout_s,
        broker_heartbeat_interval=s.broker_heartbeat_interval_s,
        broker_max_poll_interval=s.broker_max_poll_interval_s,
        broker_commit_interval=s.commit_interval_s,
        stream_wait_empty=False,
        producer_max_request_size=max(1_048_576, s.snapshot_chunk_bytes * 2),
    )
    app.drivers = []
    app.fetch_max_wait_ms = s.consumer_fetch_max_wait_ms
    app.gc_freeze = s.gc_freeze
    app.gc_thresholds = s.gc_thresholds
    trace = LatencyTrace(s.trace_path) if s.trace_path else None
    t = s.topics
    plays = app.topic(t.plays, value_type=bytes, key_type=bytes, partitions=s.partitions)
    by_artist = app.topic(t.plays_by_artist, value_type=bytes, key_type=bytes, partitions=s.partitions)
    audio_in = app.topic(t.audio_ingested, value_type=bytes, key_type=bytes, partitions=s.partitions)
    out = {
        "alerts": app.topic(t.alerts, value_type=bytes, key_type=bytes),
        "deadletter": app.topic(t.deadletter, value_type=bytes, key_type=bytes),
        "changelog": app.topic(t.changelog, value_type=bytes, key_type=bytes),
        "forward": by_artist,
        "qc_reports": app.topic(t.qc_reports, value_type=bytes, key_type=bytes),
    }

    def owner(topic: str):
        def owns(partition: int) -> bool:
            return TP(topic, partition) in app.consumer.assignment()

        return owns

    def highwater(topic: str):
        def hw(partition: int) -> int | None:
            try:
                return app.consumer.highwater(TP(topic, partition))
            except Exception:  # noqa: BLE001 - trace only, best effort
                return None

        return hw

    def ack(message) -> None:
        message.ack(app.consumer)  # drops the intake's reference: Faust may commit it

    def ack_many(messages) -> None:
        app.consumer.ack_many(messages)

    # the play stages: (driver, input topic, Faust topic) for those this worker runs
    play = {}
    if "account" in stages:
        play["account"] = (StageDriver(
            "account", account_partition_factory(s, lambda: build_account_model(s, models)),
            s, metrics, out, t.plays, audit_path, owns=owner(t.plays), highwater=highwater(t.plays), trace=trace,
            ack=ack, ack_many=ack_many,
        ), t.plays, plays)
    if "catalog" in stages:
        play["catalog"] = (StageDriver(
            "catalog", catalog_partition_factory(s, lambda: build_catalog_model(s, models)),
            s, metrics, out, t.plays_by_artist, audit_path, owns=owner(t.plays_by_artist),
            highwater=highwater(t.plays_by_artist), trace=trace, ack=ack, ack_many=ack_many,
        ), t.plays_by_artist, by_artist)
    app.drivers.extend(d for d, _, _ in play.values())
    builders = {"account": build_account_model, "catalog": build_catalog_model}
    detectors = {
        "play_fraud": sorted(set().union(*(builders[st](s, models).detector_names for st in play))),
        "audio_qc": [],
    }

    # the consumer's drain loop fills one intake per input topic (see
    # BatchIntake); one task per stage feeds its driver
    def generation() -> int:
        return app.consumer_generation_id

    max_buffered = max(4096, 4 * s.batch_max_records)
    app.intakes = {topic: BatchIntake(max_buffered, generation) for _, topic, _ in play.values()}
    for _, _, ftopic in play.values():
        ftopic.__aiter__()  # subscribe: adds an iterator clone to the Conductor (acks enabled)

    def runner(intake: BatchIntake, driver: StageDriver):
        max_records = s.catalog_batch_max_records if driver.stage == "catalog" else s.batch_max_records

        async def run() -> None:
            while True:
                msgs = await intake.take(max_records, s.batch_within_s)
                if not msgs:
                    continue
                try:
                    await driver.handle(msgs)
                except Exception:  # noqa: BLE001 - unacked messages are re-read by the next owner
                    log.exception("%s stage batch failed", driver.stage)

        run.__name__ = f"{driver.stage}_stage"
        return run

    for driver, topic, _ in play.values():
        app.task(runner(app.intakes[topic], driver))

    topics_in = [topic for _, topic, _ in play.values()]
    if audio:
        from stream.audio_stage import AudioDriver

        audio_driver = AudioDriver(s, metrics, out, t.audio_ingested)
        app.drivers.append(audio_driver)
        detectors["audio_qc"] = list(audio_driver.detector_names)
        topics_in.append(t.audio_ingested)

        @app.agent(audio_in, name="audio_stage")
        async def audio_stage(stream):
            async for events in stream.noack().take_events(s.qc.concurrency, within=0.05):
                await audio_driver.handle(events)

    metrics.init_labels(
        topics_in,
        detectors,
        {st: list(builders[st](s, models).entity_types) for st in play},
    )

    by_topic = {topic: driver for driver, topic, _ in play.values()}
    if audio:
        by_topic[t.audio_ingested] = audio_driver

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs):
        for intake in app.intakes.values():
            intake.clear()
        for topic, driver in by_topic.items():
            await driver.on_revoked({tp.partition for tp in revoked if tp.topic == topic})

    if trace is not None:
        @app.task
        async def loop_watch():
            await watch_event_loop(trace)

    @app.timer(interval=1.0)
    async def housekeeping():
        for d in app.drivers:
            if isinstance(d, StageDriver):
                # idle partitions: one due snapshot per stage and tick (staggered)
                due = d.due_partitions()
                if due:
                    await d.snapshot(due[:1], "timer", wait=False)
            elif d.pending and d.snapshot_due():
                await d.snapshot()
        try:
            for tp in app.consumer.assignment():
                hw = app.consumer.highwater(tp)
                pos = await app.consumer.position(tp)
                if hw is not None and pos is not None:
                    metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, hw - pos))
        except Exception:  # noqa: BLE001 - lag is best effort during rebalances
            pass

    return app


def _faust_credentials(s: Settings):
    if s.security_protocol == "PLAINTEXT":
        return None
    import ssl as _ssl

    ctx = s.kafka_client_kwargs().get("ssl_context")
    if s.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=s.sasl_username,
            password=s.sasl_password.get_secret_value() if s.sasl_password else None,
            mechanism=s.sasl_mechanism,
            ssl_context=ctx,
        )
    return faust.SSLCredentials(ctx or _ssl.create_default_context())
