"""The PlayGuard worker's topology, in one place.

::

    plays ──▶ [account_stage] ──▶ alerts, deadletter, changelog
                   │
                   └─▶ plays.by_artist ──▶ [catalog_stage] ──▶ alerts, changelog
    audio.ingested ──▶ [audio_stage] ──▶ qc.reports, alerts, deadletter, changelog

Agents are thin adapters: each takes micro-batches with
``stream.noack().take_events(...)`` and hands them to a driver
(:mod:`stream.driver`, :mod:`stream.audio_stage`) that runs the plain-Python
core and acks only after alerts and snapshots are produced.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from pathlib import Path

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

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


class PlayGuardApp(faust.App):
    """Faust app that drains its drivers (snapshot, then ack) before the
    consumer commits and stops, and sets the consumer's fetch wait
    (``Settings.consumer_fetch_max_wait_ms``, see :func:`_consumer_thread_class`)."""

    drivers: list = []
    fetch_max_wait_ms: int = 50
    gc_freeze: bool = True

    async def on_start(self) -> None:
        """Before consuming: with ``Settings.gc_freeze``, collect once and
        move every object alive now (imports, numba kernels compiled by
        :func:`stream.pipeline.warm_up`: ~300k objects) to the collector's
        permanent generation (``gc.freeze``, Python >= 3.7). A full
        collection of them took 0.2-0.6 s and blocked the event loop, every
        ~20 s under load; objects created later are collected as usual."""
        await super().on_start()
        if self.gc_freeze:
            gc.collect()
            gc.freeze()
            log.info("gc.freeze: %d objects frozen", gc.get_freeze_count())

    def _new_transport(self):
        """Faust's aiokafka transport, with the consumer fetch wait of the settings."""
        thread_cls = _consumer_thread_class(self.fetch_max_wait_ms)

        class Consumer(faust_aiokafka.Consumer):
            def _new_consumer_thread(self):
                return thread_cls(self, loop=self.loop, beacon=self.beacon)

        class Transport(faust_aiokafka.Transport):
            pass

        Transport.Consumer = Consumer
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


def create_app(
    settings: Settings,
    metrics: Metrics,
    models: str = "full",
    audit_path: Path | None = None,
    audio: bool = True,
) -> PlayGuardApp:
    """Build the Faust app with its three agents.

    Args:
        settings: configuration (bootstrap servers, topics, timeouts).
        metrics: metrics to update.
        models: model set of :mod:`stream.pipeline` (``full``, ``rules``, ``noop``).
        audit_path: optional JSONL file of processed offset ranges.
        audio: run the audio-QC agent.
    """
    s = settings
    app = PlayGuardApp(
        s.app_id,
        broker=[f"kafka://{h}" for h in s.bootstrap_servers.split(",")],
        broker_credentials=_faust_credentials(s),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        store="memory://",
        datadir=Path(tempfile.gettempdir()) / f"playguard-{s.app_id}",
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

    account = StageDriver(
        "account", account_partition_factory(s, lambda: build_account_model(s, models)),
        s, metrics, out, t.plays, audit_path, owns=owner(t.plays), highwater=highwater(t.plays), trace=trace,
    )
    catalog = StageDriver(
        "catalog", catalog_partition_factory(s, lambda: build_catalog_model(s, models)),
        s, metrics, out, t.plays_by_artist, audit_path, owns=owner(t.plays_by_artist),
        highwater=highwater(t.plays_by_artist), trace=trace,
    )
    app.drivers.extend([account, catalog])
    detectors = {
        "play_fraud": sorted(set(build_account_model(s, models).detector_names)
                             | set(build_catalog_model(s, models).detector_names)),
        "audio_qc": [],
    }

    @app.agent(plays, name="account_stage")
    async def account_stage(stream):
        async for events in stream.noack().take_events(s.batch_max_records, within=s.batch_within_s):
            await account.handle(events)

    @app.agent(by_artist, name="catalog_stage")
    async def catalog_stage(stream):
        async for events in stream.noack().take_events(s.batch_max_records, within=s.batch_within_s):
            await catalog.handle(events)

    topics_in = [t.plays, t.plays_by_artist]
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
        {"account": list(build_account_model(s, models).entity_types),
         "catalog": list(build_catalog_model(s, models).entity_types)},
    )

    by_topic = {t.plays: account, t.plays_by_artist: catalog}
    if audio:
        by_topic[t.audio_ingested] = audio_driver

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs):
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
                    await d.snapshot(due[:1], "timer")
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
