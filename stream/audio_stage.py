"""Audio-QC stage: one ``audio.ingested`` notice in, one ``qc.reports`` record
and its ``audio_qc`` alerts out.

For each notice: decode it (bad records are dead-lettered), resolve its URI
against the configured roots (``uri_rejected`` otherwise), run the sandboxed QC
of :mod:`audio_qc` in a worker thread (the decode itself runs in a child
process with CPU, memory and wall-clock limits), score the file against the
catalog seen so far (``catalog_outlier``), then produce the report and alerts.
The catalog model's state is snapshotted to ``changelog`` (stage ``audio``)
before the notices are acked, like the play stages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from stream.config import Settings
from stream.ingest import DeadLetter, Record, decode_audio_notice
from stream.metrics import Metrics
from stream.schemas import Defect, DeadLetterReason, QCReport, Severity, outcome_for

QC_VERSION_UNKNOWN = "unknown"
from stream.snapshots import encode_snapshot

log = logging.getLogger("playguard.audio")


class AudioDriver:
    """Runs audio QC for the notices of the partitions this worker owns.

    Args:
        settings: configuration (``settings.qc`` limits, roots, profile).
        metrics: metrics to update.
        topics: Faust topics by role (``qc_reports``, ``alerts``,
            ``deadletter``, ``changelog``).
        input_topic: name of ``audio.ingested`` (metric label).
    """

    detector_names = ("audio_qc",)

    def __init__(self, settings: Settings, metrics: Metrics, topics: dict, input_topic: str):
        self.settings = settings
        self.metrics = metrics
        self.topics = topics
        self.input_topic = input_topic
        self.lock = asyncio.Lock()
        self.pending: dict[int, list] = defaultdict(list)
        self.last_snapshot = time.monotonic()
        self.catalogs: dict[int, object] = {}
        self.runtimes = self.catalogs
        self.next_offset: dict[int, int] = {}
        self.stopping = False

    def _catalog(self, partition: int):
        cat = self.catalogs.get(partition)
        if cat is None:
            from audio_qc.catalog import CatalogOutlierModel

            cat = self.catalogs[partition] = CatalogOutlierModel()
        return cat

    async def handle(self, events: list) -> None:
        """QC every notice of the micro-batch, concurrently, then produce."""
        self.metrics.audio_qc_pending.inc(len(events))
        async with self.lock:
            missing = [p for p in {e.message.partition for e in events} if p not in self.catalogs]
            if missing:
                await self._restore(missing)
            results = await asyncio.gather(*(self._qc_one(e) for e in events))
            futs = []
            for e, res in zip(events, results):
                if isinstance(res, DeadLetter):
                    futs.append(await self.topics["deadletter"].send(
                        key=res.record.key, value=res.record.value or b"", headers=res.headers(), force=True))
                    self.metrics.deadletter.labels(topic=self.input_topic, reason=res.reason.value).inc()
                    continue
                report, alerts = res
                futs.append(await self.topics["qc_reports"].send(
                    key=report.file_id.encode(), value=report.model_dump_json().encode(), force=True))
                for a in alerts:
                    futs.append(await self.topics["alerts"].send(
                        key=a.entity_id.encode(), value=a.model_dump_json().encode(), force=True))
            if futs:
                await asyncio.gather(*futs)
            now = time.time()
            for e, res in zip(events, results):
                self.metrics.events_consumed.labels(topic=self.input_topic).inc()
                if isinstance(res, DeadLetter):
                    continue
                report, alerts = res
                self.metrics.audio_files_checked.labels(outcome=report.outcome).inc()
                if report.measurements.integrated_lufs is not None:
                    self.metrics.integrated_loudness.observe(report.measurements.integrated_lufs)
                for a in alerts:
                    self.metrics.alerts.labels(kind=a.kind.value, detector=a.detector, severity=a.severity.value).inc()
                    self.metrics.alert_latency.labels(kind=a.kind.value).observe(max(0.0, now - e.message.timestamp))
                self.pending[e.message.partition].append(e)
            for e, res in zip(events, results):
                p = e.message.partition
                if isinstance(res, DeadLetter):
                    self.pending[p].append(e)
                self.next_offset[p] = max(self.next_offset.get(p, 0), e.message.offset + 1)
            await self._snapshot_locked(list(self.pending))
        self.metrics.audio_qc_pending.dec(len(events))

    async def _qc_one(self, e):
        m = e.message
        rec = Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
        notice = decode_audio_notice(rec, self.settings.max_record_bytes)
        if isinstance(notice, DeadLetter):
            return notice
        try:
            return await self._qc_notice(rec, notice)
        except Exception as exc:  # noqa: BLE001 - QC could not finish: outcome "error", the worker goes on
            log.exception("QC of %s failed", notice.file_id)
            report = QCReport(file_id=notice.file_id, uri=notice.uri, track_id=notice.track_id,
                              qc_version=QC_VERSION_UNKNOWN, profile=self.settings.qc.profile,
                              defects=[Defect(code="qc_error", severity=Severity.error,
                                              detail=f"{type(exc).__name__}: {exc}"[:500])],
                              outcome="error")
            return report, []

    async def _qc_notice(self, rec: Record, notice):
        m = rec
        from audio_qc.alerts import report_alerts
        from audio_qc.check import check_file
        from audio_qc.paths import UriRejected, resolve_uri

        try:
            path = resolve_uri(notice.uri, self.settings.qc_roots())
        except UriRejected as exc:
            return DeadLetter(rec, DeadLetterReason.uri_rejected, str(exc))
        t0 = time.perf_counter()
        report = await asyncio.to_thread(
            check_file, path, file_id=notice.file_id, uri=notice.uri, declared=notice, settings=self.settings.qc
        )
        if report.track_id is None and notice.track_id:
            report.track_id = notice.track_id
        if report.outcome != "error":
            defect = self._catalog(rec.partition).update_and_score(report)
            if defect is not None:
                report.defects.append(defect)
                report.outcome = outcome_for(report.defects)
        self.metrics.audio_qc_seconds.observe(time.perf_counter() - t0)
        return report, report_alerts(report)

    async def _restore(self, partitions: list[int]) -> None:
        from stream.driver import read_snapshots

        latest = (await read_snapshots(self.settings)).latest()
        for p in partitions:
            cat = self._catalog(p)
            snap = latest.get(("audio", p))
            if snap is not None:
                cat.load_state_dict(snap[1])
                self.next_offset[p] = snap[0]

    def snapshot_due(self) -> bool:
        """Audio snapshots are written after every micro-batch."""
        return True

    async def snapshot(self, partitions: list[int] | None = None) -> None:
        """Snapshot catalog state, then ack pending notices."""
        async with self.lock:
            await self._snapshot_locked(list(self.pending) if partitions is None else partitions)

    async def _snapshot_locked(self, partitions: list[int]) -> None:
        futs = []
        for p in partitions:
            if p not in self.catalogs:
                continue
            seq = self.next_offset.get(p, 0)
            st = self.settings
            for key, value in encode_snapshot("audio", p, self.catalogs[p].state_dict(), seq, st.snapshot_chunk_bytes,
                                              st.snapshot_compress_level, st.snapshot_codec):
                futs.append(await self.topics["changelog"].send(key=key, value=value, force=True))
        if futs:
            await asyncio.gather(*futs)
        for p in partitions:
            for e in self.pending.pop(p, []):
                e.ack()
        self.last_snapshot = time.monotonic()

    async def on_revoked(self, partitions: set[int]) -> None:
        """Snapshot and drop revoked partitions."""
        mine = [p for p in partitions if p in self.catalogs]
        if not mine:
            return
        async with self.lock:
            await self._snapshot_locked(mine)
            for p in mine:
                self.catalogs.pop(p, None)
