"""Hostile ``audio.ingested`` notices through a live worker (issue 13, "Hostile audio").

The audio engineer's unit tests cover each rejection in ``audio_qc``; this test
checks the delivery side: one ``playguard worker`` (audio stage on, play stages
with no-op models) receives a burst of hostile notices and one real file, and

* survives every one (still serving ``/metrics``, process alive, real file
  checked after the hostile ones);
* answers every notice exactly once: a ``uri_rejected`` dead letter for URIs
  with another scheme, ``..``, a symlink out of the root or a path outside it;
  an ``invalid_json``/``schema_error`` dead letter for a broken notice; a QC
  report with outcome ``fail`` or ``error`` for a 0-byte file, random bytes,
  text named ``.wav`` and WAV headers claiming absurd lengths or rates;
* counts it in ``playguard_deadletter_total`` / ``playguard_audio_files_checked_total``.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time

import pytest

from stream.config import Settings
from tests.conftest import require_data
from tests.kafka_helpers import WorkerProcess, produce, read_all

pytestmark = pytest.mark.integration


def _wav_header(sample_rate: int, channels: int, bits: int, data_bytes: int) -> bytes:
    """A 44-byte RIFF/WAVE header claiming ``data_bytes`` of PCM (EBU/Microsoft WAVE)."""
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block & 0xFFFFFFFF,
                                    block, bits)
            + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF))


def test_hostile_audio_notices_do_not_kill_the_worker(broker, tmp_path):
    real = require_data("audio", "wesnoth", "elf-land.ogg")
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.ogg"
    outside.write_bytes(real.read_bytes()[:4096])
    files = {
        "empty": ("empty.flac", b""),
        "random": ("random.ogg", os.urandom(64 * 1024)),
        "text": ("notes.wav", b"this is not audio at all\n" * 200),
        # a tiny file declaring ~6 h of 48 kHz stereo 16-bit PCM: a decompression-bomb header
        "bomb": ("bomb.wav", _wav_header(48_000, 2, 16, 0xFFFFFFF0) + b"\x00" * 256),
        "absurd_rate": ("rate.wav", _wav_header(0xFFFFFFF0, 2, 16, 4096) + b"\x01" * 4096),
    }
    for name, data in files.values():
        (root / name).write_bytes(data)
    os.symlink(outside, root / "escape.ogg")
    notices = {fid: {"file_id": fid, "uri": (root / name).as_uri()} for fid, (name, _) in files.items()}
    rejected = {
        "scheme": {"file_id": "scheme", "uri": "s3://bucket/a.ogg"},
        "http": {"file_id": "http", "uri": "http://example.org/a.ogg"},
        "dotdot": {"file_id": "dotdot", "uri": f"{root}/../outside.ogg"},
        "symlink": {"file_id": "symlink", "uri": (root / "escape.ogg").as_uri()},
        "outside": {"file_id": "outside", "uri": str(outside)},
    }
    good = {"file_id": "good", "uri": real.as_uri()}

    prefix = f"haud{int(time.time() * 1000) % 10**9}."
    env = {"PLAYGUARD_BOOTSTRAP_SERVERS": broker.bootstrap, "PLAYGUARD_TOPIC_PREFIX": prefix,
           "PLAYGUARD_PARTITIONS": "1", "PLAYGUARD_APP_ID": prefix + "w",
           "PLAYGUARD_QC__ALLOWED_ROOTS": json.dumps([str(root), str(real.parent)]),
           "PLAYGUARD_QC__WALL_SECONDS": "30", "PLAYGUARD_QC__CPU_SECONDS": "20",
           "PLAYGUARD_QC__MEMORY_MB": "1024"}
    s = Settings(_env_file=None, bootstrap_servers=broker.bootstrap, topic_prefix=prefix, partitions=1)
    w = WorkerProcess(env, ["--models", "noop"], log=tmp_path / "w.log").start()
    try:
        records = [(k.encode(), json.dumps(v).encode()) for k, v in {**notices, **rejected}.items()]
        records += [(b"broken", b'{"file_id": "broken", "uri": '), (b"typo", b'{"file_id": "typo", "url": "/a"}')]
        records.append((b"good", json.dumps(good).encode()))
        asyncio.run(produce(s.bootstrap_servers, s.topics.audio_ingested, records))

        n = len(records)
        got = w.wait_metric("playguard_events_consumed_total", n, timeout=240, topic=s.topics.audio_ingested)
        log = (tmp_path / "w.log").read_text()[-3000:]
        assert got == n, f"worker answered {got} of {n} notices; log:\n{log}"
        assert w.proc.poll() is None, "worker died"

        dead = asyncio.run(read_all(s.bootstrap_servers, s.topics.deadletter, expect=len(rejected) + 2, timeout=60))
        reasons = {r.key.decode(): dict(r.headers)["reason"].decode() for r in dead}
        assert reasons == {**{k: "uri_rejected" for k in rejected}, "broken": "invalid_json", "typo": "schema_error"}

        reports = {json.loads(r.value)["file_id"]: json.loads(r.value)
                   for r in asyncio.run(read_all(s.bootstrap_servers, s.topics.qc_reports,
                                                 expect=len(notices) + 1, timeout=60))}
        assert set(reports) == set(notices) | {"good"}
        for fid in notices:
            assert reports[fid]["outcome"] in ("fail", "error"), (fid, reports[fid])
            assert reports[fid]["defects"], fid
        assert reports["good"]["outcome"] != "error", reports["good"]
        assert reports["good"]["duration_s"] and reports["good"]["duration_s"] > 10

        assert w.metric("playguard_deadletter_total", topic=s.topics.audio_ingested, reason="uri_rejected") \
            == len(rejected)
        assert w.metric("playguard_audio_files_checked_total") == len(notices) + 1
        assert "playguard_events_consumed_total" in w.scrape()  # still serving
    finally:
        code = w.stop()
    assert code == 0
