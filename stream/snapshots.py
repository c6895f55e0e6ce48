"""State snapshots on the compacted ``changelog`` topic.

A stage partition's state is serialised with :mod:`detectors.serialize`
(msgpack, never pickle), cut into chunks under ``snapshot_chunk_bytes`` so every
record stays under the broker's maximum message size, and written with keys
``<stage>/<partition>/<chunk>`` (CONVENTIONS.md). Each chunk value carries the
snapshot's sequence number (the next input offset it covers), the chunk count
and its index, so a reader keeps the newest *complete* snapshot of each
(stage, partition), even when compaction has not yet run or an older snapshot
had more chunks.

Compression: with ``compress_level`` > 0 the msgpack bytes are deflated
(zlib, RFC 1950, Python's :mod:`zlib`) before chunking, and every chunk says
``"codec": "zlib"``; chunks without ``codec`` (older snapshots) are read as
plain msgpack. A count-min-heavy catalog state shrinks several-fold, which
matters on the embedded broker (Tansu keeps every record in memory; its CPU
grew with that log in the soaks, RELIABILITY.md). Decompression is bounded
(``SnapshotAssembler.max_state_bytes``), and nothing is unpickled.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from detectors.serialize import dumps, loads

#: Codecs a snapshot chunk may name (``None``: plain msgpack).
CODECS = (None, "zlib")


def encode_snapshot(
    stage: str, partition: int, state: dict, seq: int, chunk_bytes: int = 512 * 1024,
    compress_level: int = 0,
) -> list[tuple[bytes, bytes]]:
    """Cut one snapshot into changelog records.

    Args:
        stage: stage name (``account``, ``catalog``, ``audio``).
        partition: input partition the state belongs to.
        state: msgpack-able state dict.
        seq: next input offset covered by the state (monotonic per partition).
        chunk_bytes: largest chunk payload, bytes.
        compress_level: zlib level 1-9 applied to the whole msgpack payload
            before chunking; 0 stores it uncompressed (the older format).

    Returns:
        ``[(key, value), ...]`` records, one per chunk.

    Raises:
        ValueError: if ``chunk_bytes`` is not positive or ``compress_level``
            is outside 0-9.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be 0-9, got {compress_level}")
    data = dumps(state)
    extra = {}
    if compress_level:
        data = zlib.compress(data, compress_level)
        extra["codec"] = "zlib"
    n = max(1, -(-len(data) // chunk_bytes))
    out = []
    for i in range(n):
        part = data[i * chunk_bytes : (i + 1) * chunk_bytes]
        key = f"{stage}/{partition}/{i}".encode()
        out.append((key, dumps({"seq": seq, "n": n, "i": i, "data": part, **extra})))
    return out


def _inflate(blob: bytes, limit: int) -> bytes:
    """zlib-decompress ``blob`` to at most ``limit`` bytes.

    Raises:
        ValueError: on corrupt data or when the output would exceed ``limit``.
    """
    d = zlib.decompressobj()
    try:
        out = d.decompress(blob, limit)
    except zlib.error as exc:
        raise ValueError(f"corrupt compressed snapshot: {exc}") from exc
    if d.unconsumed_tail or not d.eof:
        raise ValueError(f"compressed snapshot larger than {limit} bytes or truncated")
    return out


@dataclass
class SnapshotAssembler:
    """Collects changelog records and yields the newest complete snapshots.

    Feed every record with :meth:`add` (in any order), then call
    :meth:`latest`. Snapshots with an unknown codec, a corrupt payload or a
    decompressed size over ``max_state_bytes`` are skipped (an older complete
    one is used instead).
    """

    chunks: dict[tuple[str, int, int], dict[int, bytes]] = field(default_factory=dict)
    counts: dict[tuple[str, int, int], int] = field(default_factory=dict)
    codecs: dict[tuple[str, int, int], str | None] = field(default_factory=dict)
    #: Largest decompressed snapshot accepted, bytes.
    max_state_bytes: int = 2 * 1024**3

    def add(self, key: bytes | None, value: bytes | None) -> None:
        """Add one changelog record; malformed records are ignored."""
        if not key or not value:
            return
        try:
            stage, part, _ = key.decode().split("/", 2)
            rec = loads(value)
            ident = (stage, int(part), int(rec["seq"]))
            self.chunks.setdefault(ident, {})[int(rec["i"])] = rec["data"]
            self.counts[ident] = int(rec["n"])
            self.codecs[ident] = rec.get("codec")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            return

    def latest(self) -> dict[tuple[str, int], tuple[int, dict]]:
        """``{(stage, partition): (seq, state)}`` for the newest complete snapshot."""
        best: dict[tuple[str, int], tuple[int, dict]] = {}
        for ident in sorted(self.chunks, key=lambda x: x[2]):
            stage, part, seq = ident
            got = self.chunks[ident]
            n = self.counts[ident]
            if len(got) != n:
                continue
            codec = self.codecs.get(ident)
            if codec not in CODECS:
                continue
            try:
                blob = b"".join(got[i] for i in range(n))
                if codec == "zlib":
                    blob = _inflate(blob, self.max_state_bytes)
                state = loads(blob)
            except (ValueError, KeyError, TypeError):
                continue
            best[(stage, part)] = (seq, state)
        return best
