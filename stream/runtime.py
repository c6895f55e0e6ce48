"""Per-partition stage runtimes: decode, process, and say what to produce.

This is the framework-free middle of the worker. A :class:`PartitionRuntime`
owns one input partition of one stage: its decoder (watermark, dedupe), its
model (:class:`~stream.stage.StageModel`) and ``next_offset``, the first input
offset not yet folded into its state. :meth:`PartitionRuntime.process` takes
raw records and returns a :class:`StageOutput` (alerts, dead letters,
forwards); the Faust agents in :mod:`stream.app` only move bytes.

Records with an offset below ``next_offset`` are skipped: after a restore from
a snapshot that already covers them, they are neither counted twice nor
re-alerted (their alerts were produced before the snapshot was written).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from kafka.partitioner.default import murmur2

from stream.batch import PlayBatch
from stream.config import Settings
from stream.ingest import DeadLetter, Dedupe, ForwardedDecoder, PlaysDecoder, Record
from stream.schemas import Alert
from stream.stage import StageModel


def kafka_partition(key: str, partitions: int) -> int:
    """Partition Kafka's default partitioner gives ``key`` (murmur2, positive
    31 bits, modulo the partition count). Source: Kafka DefaultPartitioner."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@dataclass
class StageOutput:
    """What one micro-batch of one partition produces.

    Attributes:
        alerts: alerts to produce on ``alerts``.
        dead: records to dead-letter.
        forwards: destination partition -> the plays of this batch that go
            to it on ``plays.by_artist`` (account stage only; encoded by
            :func:`encode_forwards`, which merges the partitions of one
            micro-batch).
        duplicates: repeated ``event_id``s dropped.
        valid: plays that reached the model.
        skipped: records already covered by the restored state.
        batch_record_ts: newest record timestamp of the batch (Unix s) or None.
    """

    alerts: list[Alert] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    forwards: dict[int, PlayBatch] = field(default_factory=dict)
    duplicates: int = 0
    valid: int = 0
    skipped: int = 0
    batch_record_ts: float | None = None


def encode_forwards(outs: Iterable[StageOutput]) -> dict[int, tuple[bytes, float]]:
    """One ``plays.by_artist`` record per destination partition for the
    outputs of one micro-batch (its input partitions, in order).

    The embedded broker's fetch cost grows with the record batches a
    partition holds (RELIABILITY.md, "Forwards merged per micro-batch"):
    one record per destination and micro-batch, not per destination and
    input partition, stores up to ``partitions`` times fewer.

    Args:
        outs: account-stage outputs; their ``forwards`` are concatenated
            per destination in the order given.

    Returns:
        destination partition -> (msgpack batch, :meth:`PlayBatch.to_bytes`;
        newest ``record_ts`` of its plays, Unix s, the record's timestamp).
    """
    by_dest: dict[int, list[PlayBatch]] = {}
    for out in outs:
        for dest, sub in out.forwards.items():
            by_dest.setdefault(dest, []).append(sub)
    merged = {}
    for dest, subs in sorted(by_dest.items()):
        b = subs[0] if len(subs) == 1 else PlayBatch.concat(subs)
        merged[dest] = (b.to_bytes(), float(b.record_ts.max()))
    return merged


class PartitionRuntime:
    """One input partition of one stage (see module docstring).

    Args:
        stage: ``"account"`` or ``"catalog"``.
        partition: input partition number.
        model: the stage model for this partition.
        decoder: :class:`PlaysDecoder` (account) or :class:`ForwardedDecoder`.
        forward_partitions: partition count of ``plays.by_artist`` (account
            stage), or 0 to forward nothing.
    """

    def __init__(self, stage: str, partition: int, model: StageModel, decoder, forward_partitions: int = 0):
        self.stage = stage
        self.partition = partition
        self.model = model
        self.decoder = decoder
        self.forward_partitions = forward_partitions
        self.next_offset = 0
        self._artist_part: dict[str, int] = {}

    def process(self, records: list[Record]) -> StageOutput:
        """Decode, run the model, and prepare forwards for one micro-batch.

        Args:
            records: records of this partition, in offset order.
        """
        out = StageOutput()
        fresh = [r for r in records if r.offset >= self.next_offset]
        out.skipped = len(records) - len(fresh)
        if not fresh:
            return out
        batch, out.dead, out.duplicates = self.decoder.decode(fresh)
        self.next_offset = fresh[-1].offset + 1
        out.valid = len(batch)
        if not len(batch):
            return out
        out.batch_record_ts = float(batch.record_ts.max())
        out.alerts = self.model.process(batch)
        for a in out.alerts:
            if a._source_record_ts is None:
                a._source_record_ts = out.batch_record_ts
        if self.forward_partitions:
            out.forwards = self._split_forward(batch)
        return out

    def _split_forward(self, batch: PlayBatch) -> dict[int, PlayBatch]:
        cache = self._artist_part
        n = self.forward_partitions
        dest = np.fromiter(
            (cache.get(a) if a in cache else cache.setdefault(a, kafka_partition(a, n)) for a in batch.artist_id),
            np.int64,
            len(batch),
        )
        if len(cache) > 200_000:
            cache.clear()
        out = {}
        parts = np.unique(dest).tolist()
        for p in parts:
            out[int(p)] = batch.take(dest == p) if len(parts) > 1 else batch
        return out

    def state_dict(self) -> dict:
        """Model, decoder and ``next_offset``."""
        return {
            "model": self.model.state_dict(),
            "decoder": self.decoder.state_dict(),
            "next_offset": self.next_offset,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.decoder.load_state_dict(state["decoder"])
        self.next_offset = int(state["next_offset"])


def _dedupe(settings: Settings) -> Dedupe:
    return Dedupe(settings.dedupe_bucket_s, settings.dedupe_buckets, settings.dedupe_max_ids)


def account_partition_factory(
    settings: Settings, build_model: Callable[[], StageModel], clock: Callable[[], float] = time.time
) -> Callable[[int], PartitionRuntime]:
    """Factory of account-stage partition runtimes (``plays`` partitions)."""

    def make(partition: int) -> PartitionRuntime:
        dec = PlaysDecoder(
            settings.max_record_bytes, settings.allowed_lateness_s, settings.max_clock_skew_s,
            _dedupe(settings), clock,
        )
        return PartitionRuntime("account", partition, build_model(), dec, settings.partitions)

    return make


def catalog_partition_factory(
    settings: Settings, build_model: Callable[[], StageModel]
) -> Callable[[int], PartitionRuntime]:
    """Factory of catalog-stage partition runtimes (``plays.by_artist`` partitions)."""

    def make(partition: int) -> PartitionRuntime:
        return PartitionRuntime("catalog", partition, build_model(), ForwardedDecoder(dedupe=_dedupe(settings)))

    return make
