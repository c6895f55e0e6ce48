"""State snapshots on the compacted ``changelog`` topic.

A stage partition's state is serialised with :mod:`detectors.serialize`
(msgpack, never pickle), cut into chunks under ``snapshot_chunk_bytes`` so every
record stays under the broker's maximum message size, and written with keys
``<stage>/<partition>/<chunk>`` (CONVENTIONS.md). Each chunk value carries the
snapshot's sequence number (the next input offset it covers), the chunk count
and its index, so a reader keeps the newest *complete* snapshot of each
(stage, partition), even when compaction has not yet run or an older snapshot
had more chunks.

Compression: with ``compress_level`` > 0 the msgpack bytes are compressed
before chunking with ``codec``: Zstandard (RFC 8878, the ``zstandard``
library; the default, level 1) or zlib (RFC 1950, Python's :mod:`zlib`), and
every chunk names its codec (``"codec": "zstd"`` or ``"zlib"``); chunks
without ``codec`` (older snapshots) are read as plain msgpack. A catalog
state is mostly HyperLogLog registers that are 99% zero: zstd level 1 turns
33 MB into 3.3 MB in 36 ms where zlib level 1 takes 189 ms (RELIABILITY.md,
"Forwards merged per micro-batch, paced snapshots"), which matters on the
embedded broker (Tansu keeps every record in memory). Decompression is
bounded (``SnapshotAssembler.max_state_bytes``), and nothing is unpickled.

:func:`encode_snapshot` does both steps; the worker serialises under its
stage lock (:func:`detectors.serialize.dumps`) and compresses and chunks
afterwards (:func:`chunk_snapshot`), off the lock.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field

import zstandard

from detectors.serialize import dumps, loads

#: Codecs a snapshot chunk may name (``None``: plain msgpack).
CODECS = (None, "zlib", "zstd")
#: Highest compression level of each codec.
MAX_LEVEL = {"zlib": 9, "zstd": 22}


def check_codec(codec: str, compress_level: int) -> None:
    """Validate a codec name and level (0: no compression).

    Raises:
        ValueError: on an unknown codec or a level outside 0..``MAX_LEVEL[codec]``.
    """
    if codec not in MAX_LEVEL:
        raise ValueError(f"unknown snapshot codec {codec!r}; expected one of {sorted(MAX_LEVEL)}")
    if not 0 <= compress_level <= MAX_LEVEL[codec]:
        raise ValueError(f"compress_level for {codec} must be 0-{MAX_LEVEL[codec]}, got {compress_level}")


def encode_snapshot(
    stage: str, partition: int, state: dict, seq: int, chunk_bytes: int = 512 * 1024,
    compress_level: int = 0, codec: str = "zstd",
) -> list[tuple[bytes, bytes]]:
    """Cut one snapshot into changelog records: :func:`detectors.serialize.dumps`
    then :func:`chunk_snapshot`.

    Args:
        stage: stage name (``account``, ``catalog``, ``audio``).
        partition: input partition the state belongs to.
        state: msgpack-able state dict.
        seq: next input offset covered by the state (monotonic per partition).
        chunk_bytes: largest chunk payload, bytes.
        compress_level: ``codec`` level applied to the whole msgpack payload
            before chunking; 0 stores it uncompressed (the older format).
        codec: ``"zstd"`` (levels 1-22) or ``"zlib"`` (1-9).

    Returns:
        ``[(key, value), ...]`` records, one per chunk.

    Raises:
        ValueError: if ``chunk_bytes`` is not positive, or on an unknown
            codec or a level outside its range.
    """
    return chunk_snapshot(stage, partition, dumps(state), seq, chunk_bytes, compress_level, codec)


def chunk_snapshot(
    stage: str, partition: int, data: bytes, seq: int, chunk_bytes: int = 512 * 1024,
    compress_level: int = 0, codec: str = "zstd",
) -> list[tuple[bytes, bytes]]:
    """Compress (optionally) and cut a serialised state into changelog records.

    Args:
        data: the state's msgpack bytes (:func:`detectors.serialize.dumps`).
        Others: as :func:`encode_snapshot`.

    Returns:
        ``[(key, value), ...]`` records, one per chunk, each under
        ``chunk_bytes`` of payload.

    Raises:
        ValueError: as :func:`encode_snapshot`.
    """
    check_codec(codec, compress_level)
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    extra = {}
    if compress_level:
        if codec == "zstd":
            data = zstandard.ZstdCompressor(level=compress_level).compress(data)
        else:
            data = zlib.compress(data, compress_level)
        extra["codec"] = codec
    n = max(1, -(-len(data) // chunk_bytes))
    out = []
    for i in range(n):
        part = data[i * chunk_bytes : (i + 1) * chunk_bytes]
        key = f"{stage}/{partition}/{i}".encode()
        out.append((key, dumps({"seq": seq, "n": n, "i": i, "data": part, **extra})))
    return out


def _inflate(blob: bytes, limit: int, codec: str = "zlib") -> bytes:
    """Decompress ``blob`` (``codec`` ``"zlib"`` or ``"zstd"``) to at most ``limit`` bytes.

    Raises:
        ValueError: on corrupt data or when the output would exceed ``limit``.
    """
    if codec == "zstd":
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True) as r:
                out = r.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise ValueError(f"corrupt compressed snapshot: {exc}") from exc
        if len(out) > limit:
            raise ValueError(f"compressed snapshot larger than {limit} bytes")
        if not out:
            raise ValueError("corrupt compressed snapshot: empty")
        return out
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
                if codec is not None:
                    blob = _inflate(blob, self.max_state_bytes, codec)
                state = loads(blob)
            except (ValueError, KeyError, TypeError):
                continue
            best[(stage, part)] = (seq, state)
        return best
