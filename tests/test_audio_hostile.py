"""Hostile and damaged input: integrity checks, sandbox limits, URI rules."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_qc.check import check_file
from audio_qc.integrity import check_ogg, check_wav, ogg_crc, sniff_format
from audio_qc.paths import UriRejected, resolve_uri
from stream.config import QCSettings

FS = 44100


def music_like(seconds: float = 3.0, fs: int = FS, seed: int = 0) -> np.ndarray:
    """Stereo test signal: a few partials plus noise, peak about -6 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    mono = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (110, 220, 440, 1320, 3000))
    x = np.stack([mono + 0.02 * rng.standard_normal(len(t)), mono + 0.02 * rng.standard_normal(len(t))], axis=1)
    return (x / np.abs(x).max() * 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def ogg_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ogg") / "tone.ogg"
    sf.write(str(p), music_like(4.0), FS, format="OGG", subtype="VORBIS")
    return p


def codes(report) -> set[str]:
    return {d.code for d in report.defects}


def test_ogg_crc_matches_real_pages(ogg_file):
    data = ogg_file.read_bytes()
    assert sniff_format(data[:16]) == "ogg"
    n_seg = data[26]
    end = 27 + n_seg + sum(data[27 : 27 + n_seg])
    assert ogg_crc(data[:end]) == struct.unpack_from("<I", data, 22)[0]
    findings, info = check_ogg(data)
    assert findings == [] and info["pages"] >= 2


def test_ogg_damage_is_found_where_libsndfile_is_silent(ogg_file):
    data = bytearray(ogg_file.read_bytes())
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x20
    assert [f.code for f in check_ogg(bytes(flipped))[0]] == ["decode_error"]
    cut = bytes(data[: int(len(data) * 0.7)])
    assert "truncated" in [f.code for f in check_ogg(cut)[0]]
    # a cut exactly at a page boundary leaves no partial page: the EOS flag tells
    pos, last_start = 0, 0
    while pos < len(data):
        n_seg = data[pos + 26]
        nxt = pos + 27 + n_seg + sum(data[pos + 27 : pos + 27 + n_seg])
        if nxt >= len(data):
            last_start = pos
        pos = nxt
    assert [f.code for f in check_ogg(bytes(data[:last_start]))[0]] == ["truncated"]


def test_wav_truncation(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(str(p), music_like(1.0), FS, subtype="PCM_16")
    data = p.read_bytes()
    assert check_wav(data) == []
    assert [f.code for f in check_wav(data[: len(data) // 2])] == ["truncated"]


def test_clean_file_passes_integrity_and_is_measured(ogg_file):
    rep = check_file(ogg_file, file_id="f", uri=str(ogg_file))
    assert rep.outcome in ("pass", "warn")
    assert not codes(rep) & {"decode_error", "truncated", "click", "gap", "clipping"}
    assert rep.decoder == "libsndfile" and rep.codec == "vorbis" and rep.channels == 2
    assert rep.measurements.integrated_lufs is not None


@pytest.mark.parametrize("name, content", [
    ("empty.flac", b""),
    ("random.ogg", os.urandom(20000)),
    ("text.mp3", b"This is not audio at all.\n" * 200),
    ("random.wav", b"RIFF" + os.urandom(4000)),
    ("fake.opus", b"OggS" + os.urandom(3000)),
])
def test_hostile_files_are_decode_errors(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    rep = check_file(p, file_id="h", uri=str(p))
    assert "decode_error" in codes(rep) or "truncated" in codes(rep)
    assert rep.outcome == "fail"
    assert rep.measurements.integrated_lufs is None


def _wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * 2) & 0xFFFFFFFF, channels * 2, 16)
    return (b"RIFF" + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_bytes))


@pytest.mark.parametrize("rate, channels, data_bytes", [
    (4_000_000_000, 2, 4000),     # absurd sample rate
    (44100, 2, 0xFFFFFFF0),       # absurd length, tiny file
    (1, 1, 4000),                 # 1 Hz
])
def test_absurd_headers(tmp_path, rate, channels, data_bytes):
    p = tmp_path / "absurd.wav"
    p.write_bytes(_wav_header(rate, channels, data_bytes) + os.urandom(4000))
    rep = check_file(p, file_id="a", uri=str(p))
    assert codes(rep) & {"decode_error", "truncated"}
    assert rep.outcome == "fail"


def test_decompression_bomb_ogg(tmp_path, ogg_file):
    """A small Ogg file whose last page claims 3 days of audio."""
    data = bytearray(ogg_file.read_bytes())
    pos, last = 0, 0
    while pos < len(data):
        last = pos
        n_seg = data[pos + 26]
        pos += 27 + n_seg + sum(data[pos + 27 : pos + 27 + n_seg])
    struct.pack_into("<q", data, last + 6, FS * 86400 * 3)
    struct.pack_into("<I", data, last + 22, 0)
    n_seg = data[last + 26]
    end = last + 27 + n_seg + sum(data[last + 27 : last + 27 + n_seg])
    struct.pack_into("<I", data, last + 22, ogg_crc(bytes(data[last:end])))
    p = tmp_path / "bomb.ogg"
    p.write_bytes(bytes(data))
    rep = check_file(p, file_id="b", uri=str(p), settings=QCSettings(wall_seconds=60))
    assert "decode_error" in codes(rep)
    assert rep.outcome in ("fail", "error")
    assert any("bomb" in d.detail for d in rep.defects), rep.defects


def test_limits_end_in_error_outcome(ogg_file, tmp_path):
    long = tmp_path / "long.flac"
    sf.write(str(long), np.tile(music_like(3.0), (60, 1)), FS, format="FLAC")
    rep = check_file(long, file_id="w", uri=str(long), settings=QCSettings(wall_seconds=0.3))
    assert rep.outcome == "error" and "wall-clock" in rep.defects[-1].detail
    rep = check_file(long, file_id="m", uri=str(long), settings=QCSettings(memory_mb=420))
    assert rep.outcome == "error" and "limit" in rep.defects[-1].detail
    rep = check_file(long, file_id="s", uri=str(long), settings=QCSettings(max_file_mb=0))
    assert rep.outcome == "error" and "max_file_mb" in rep.defects[-1].detail
    # the sandbox survives: the next file is checked normally
    assert check_file(ogg_file, file_id="ok", uri="x").outcome in ("pass", "warn")


def test_resolve_uri_rules(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    f = root / "sub" / "a.ogg"
    f.write_bytes(b"x")
    outside = tmp_path / "secret.ogg"
    outside.write_bytes(b"x")
    (root / "link.ogg").symlink_to(outside)
    (root / "inlink.ogg").symlink_to(f)
    assert resolve_uri(str(f), [root]) == f.resolve()
    assert resolve_uri(f.as_uri(), [root]) == f.resolve()
    assert resolve_uri("file://localhost" + str(f), [root]) == f.resolve()
    assert resolve_uri(str(root / "inlink.ogg"), [root]) == f.resolve()
    for bad, why in [
        ("http://example.com/a.ogg", "scheme"),
        ("s3://bucket/a.ogg", "scheme"),
        ("file://evil.example/etc/passwd", "remote host"),
        (str(root / "sub" / ".." / ".." / "secret.ogg"), "'..'"),
        (str(root / "link.ogg"), "outside"),
        (str(outside), "outside"),
        ("", "empty"),
        ("a\x00b", "NUL"),
    ]:
        with pytest.raises(UriRejected, match=why):
            resolve_uri(bad, [root])
    assert issubclass(UriRejected, ValueError)
