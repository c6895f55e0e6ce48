"""State snapshots on the compacted ``changelog`` topic.

A stage partition's state is serialised with :mod:`detectors.serialize`
(msgpack, never pickle), cut into chunks under ``snapshot_chunk_bytes`` so every
record stays under the broker's maximum message size, and written with keys
``<stage>/<partition>/<chunk>`` (CONVENTIONS.md). Each chunk value carries the
snapshot's sequence number (the next input offset it covers), the chunk count
and its index, so a reader keeps the newest *complete* snapshot of each
(stage, partition), even when compaction has not yet run or an older snapshot
had more chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectors.serialize import dumps, loads


def encode_snapshot(
    stage: str, partition: int, state: dict, seq: int, chunk_bytes: int = 512 * 1024
) -> list[tuple[bytes, bytes]]:
    """Cut one snapshot into changelog records.

    Args:
        stage: stage name (``account``, ``catalog``, ``audio``).
        partition: input partition the state belongs to.
        state: msgpack-able state dict.
        seq: next input offset covered by the state (monotonic per partition).
        chunk_bytes: largest chunk payload, bytes.

    Returns:
        ``[(key, value), ...]`` records, one per chunk.

    Raises:
        ValueError: if ``chunk_bytes`` is not positive.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    data = dumps(state)
    n = max(1, -(-len(data) // chunk_bytes))
    out = []
    for i in range(n):
        part = data[i * chunk_bytes : (i + 1) * chunk_bytes]
        key = f"{stage}/{partition}/{i}".encode()
        out.append((key, dumps({"seq": seq, "n": n, "i": i, "data": part})))
    return out


@dataclass
class SnapshotAssembler:
    """Collects changelog records and yields the newest complete snapshots.

    Feed every record with :meth:`add` (in any order), then call
    :meth:`latest`.
    """

    chunks: dict[tuple[str, int, int], dict[int, bytes]] = field(default_factory=dict)
    counts: dict[tuple[str, int, int], int] = field(default_factory=dict)

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
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
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
            try:
                state = loads(b"".join(got[i] for i in range(n)))
            except (ValueError, KeyError):
                continue
            best[(stage, part)] = (seq, state)
        return best
