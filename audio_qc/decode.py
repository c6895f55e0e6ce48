"""Decoding of untrusted audio files to float32 PCM, with bomb guards.

libsndfile (through :mod:`soundfile`) decodes WAV, FLAC, Ogg Vorbis, Ogg Opus
and MP3; anything else goes through ffmpeg (``ffprobe`` for the stream
parameters, then raw ``f32le`` on a pipe). Before any sample is decoded the
declared stream is checked for plausibility: a sample rate outside
[1 kHz, 768 kHz], more than 64 channels, more than 7 days, or a decoded size
more than :data:`MAX_EXPANSION` times the file size (a decompression bomb: a
tiny file declaring hours of audio) raises :class:`DecodeError`, as does a
decoded size over the memory budget of the sandbox (:class:`ResourceLimit`).

Source: soundfile / libsndfile (http://libsndfile.github.io/libsndfile/);
ffmpeg / ffprobe.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

#: Largest plausible ratio of decoded float32 bytes to file bytes. Lossy music
#: at 96 kbit/s expands about 30x and FLAC of pure digital silence about
#: 2,000x; a bomb declares far more.
MAX_EXPANSION = 20_000
MIN_RATE_HZ = 1_000
MAX_RATE_HZ = 768_000
MAX_CHANNELS = 64
MAX_DURATION_S = 7 * 24 * 3600.0

_SF_CODEC = {
    "VORBIS": "vorbis",
    "OPUS": "opus",
    "FLAC": "flac",
    "MPEG_LAYER_III": "mp3",
    "MPEG_LAYER_II": "mp2",
    "PCM_16": "pcm_s16",
    "PCM_24": "pcm_s24",
    "PCM_32": "pcm_s32",
    "PCM_U8": "pcm_u8",
    "PCM_S8": "pcm_s8",
    "FLOAT": "pcm_f32",
    "DOUBLE": "pcm_f64",
}

#: Codecs whose encoders low-pass the signal (the bandwidth check allows it).
LOSSY_CODECS = {"vorbis", "opus", "mp3", "mp2", "aac", "wmav2", "ac3", "eac3"}


class DecodeError(Exception):
    """The file cannot be decoded, or declares an impossible stream."""


class ResourceLimit(Exception):
    """Decoding the file would exceed the sandbox's memory budget."""


@dataclass
class Decoded:
    """Decoded audio.

    Attributes:
        samples: float32, shape (n_samples, n_channels), full scale 1.0; None
            when the samples went to a ``sink`` (see :func:`decode`).
        sample_rate: Hz.
        decoder: ``libsndfile`` or ``ffmpeg``.
        codec: codec name (``vorbis``, ``opus``, ``flac``, ``pcm_s16``...).
        declared_frames: frame count the container declared (None if unknown).
        n_frames: samples per channel decoded.
        n_channels: channel count.
    """

    samples: np.ndarray | None
    sample_rate: int
    decoder: str
    codec: str | None
    declared_frames: int | None
    n_frames: int = -1
    n_channels: int = -1

    def __post_init__(self) -> None:
        if self.samples is not None:
            self.n_frames, self.n_channels = (int(v) for v in self.samples.shape)

    @property
    def channels(self) -> int:
        """Channel count."""
        return self.n_channels

    @property
    def duration_s(self) -> float:
        """Duration of the decoded audio, seconds."""
        return self.n_frames / self.sample_rate


class Sink(Protocol):
    """Receives decoded audio chunk by chunk (e.g.
    :class:`audio_qc.loudness.AnalysisPass`)."""

    def start(self, n_channels: int, sample_rate: float, capacity: int) -> None:
        """Called once before the first chunk; ``capacity`` is the declared
        number of samples per channel (a hint)."""

    def update(self, chunk: np.ndarray) -> None:
        """Consecutive samples, float32 shape (m, n_channels); the buffer is
        reused after the call returns."""


#: Frames per chunk when decoding into a sink (1 MiB of stereo float32: the
#: buffer stays in cache between the decoder and the sink; libsndfile's FLAC
#: reader is slower with much smaller reads).
CHUNK_FRAMES = 131072


def _plausible(frames: int, rate: int, channels: int, file_bytes: int, budget_bytes: int) -> None:
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise DecodeError(f"implausible sample rate {rate} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise DecodeError(f"implausible channel count {channels}")
    if frames < 0:
        raise DecodeError(f"negative frame count {frames}")
    dur = frames / rate
    if dur > MAX_DURATION_S:
        raise DecodeError(f"declared duration {dur:.0f} s exceeds 7 days")
    decoded = frames * channels * 4
    if decoded > MAX_EXPANSION * max(file_bytes, 1) and decoded > 64 * 2**20:
        raise DecodeError(
            f"decompression bomb: {file_bytes} bytes declare {dur:.0f} s "
            f"({decoded / 2**20:.0f} MiB of PCM, {decoded / max(file_bytes, 1):.0f}x)"
        )
    if decoded > budget_bytes:
        raise ResourceLimit(
            f"decoded audio needs {decoded / 2**20:.0f} MiB, over the sandbox budget "
            f"of {budget_bytes / 2**20:.0f} MiB"
        )


def decode(path: Path, budget_bytes: int, ffmpeg_timeout_s: float = 60.0, check_finite: bool = True,
           sink: Sink | None = None) -> Decoded:
    """Decode a file to float32, libsndfile first, ffmpeg otherwise.

    Args:
        path: file to decode.
        budget_bytes: largest decoded float32 size allowed, bytes.
        ffmpeg_timeout_s: wall-clock limit of the ffmpeg fallback, seconds.
        check_finite: reject NaN/infinite samples here (a full pass over the
            audio). :func:`audio_qc.analyze.analyze_path` passes False: its
            analysis pass detects them from the float64 sums.
        sink: when given, the samples are handed to ``sink`` in chunks of
            :data:`CHUNK_FRAMES` (libsndfile) or at once (ffmpeg) instead of
            being returned (``Decoded.samples`` is then None).

    Returns:
        :class:`Decoded` with at least one sample.

    Raises:
        DecodeError: the file is not decodable audio or declares an impossible
            stream (bomb, absurd rate, no samples).
        ResourceLimit: the decoded audio would not fit in ``budget_bytes``.
    """
    file_bytes = path.stat().st_size
    try:
        info = sf.info(str(path))
    except Exception:  # libsndfile refuses it: try ffmpeg  # noqa: BLE001
        info = None
    if info is not None and info.frames > 0:
        frames, rate, channels = int(info.frames), int(info.samplerate), int(info.channels)
        _plausible(frames, rate, channels, file_bytes, budget_bytes)
        codec = _SF_CODEC.get(info.subtype, info.subtype.lower())
        try:
            if sink is None:
                x, sr = sf.read(str(path), dtype="float32", always_2d=True)
                got = x.shape[0]
            else:
                got = _read_into(path, sink, frames, rate, channels, budget_bytes)
        except MemoryError as exc:
            raise ResourceLimit("out of memory while decoding") from exc
        except ResourceLimit:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DecodeError(f"libsndfile: {exc}") from exc
        if got == 0:
            raise DecodeError("no audio samples decoded")
        if sink is not None:
            return Decoded(None, rate, "libsndfile", codec, frames, got, channels)
        if check_finite and not np.isfinite(x).all():
            raise DecodeError("decoded samples contain NaN or infinity")
        return Decoded(x, int(sr), "libsndfile", codec, frames)
    return _decode_ffmpeg(path, file_bytes, budget_bytes, ffmpeg_timeout_s, check_finite, sink)


def _read_into(path: Path, sink: Sink, frames: int, rate: int, channels: int, budget_bytes: int) -> int:
    """Decode with libsndfile in chunks into ``sink``; returns the frames read."""
    buf = np.empty((CHUNK_FRAMES, channels), dtype=np.float32)
    total = 0
    with sf.SoundFile(str(path)) as f:
        sink.start(channels, rate, frames)
        while True:
            got = f.read(CHUNK_FRAMES, dtype="float32", always_2d=True, out=buf)
            m = got.shape[0]
            if m == 0:
                break
            total += m
            if total * channels * 4 > budget_bytes:
                raise ResourceLimit(f"decoded audio exceeds the sandbox budget of {budget_bytes / 2**20:.0f} MiB")
            sink.update(got)
    return total


def _decode_ffmpeg(path: Path, file_bytes: int, budget_bytes: int, timeout_s: float,
                   check_finite: bool = True, sink: Sink | None = None) -> Decoded:
    try:
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_streams", "-of", "json", str(path)],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DecodeError("ffprobe timed out") from exc
    try:
        streams = json.loads(probe.stdout.decode("utf-8", "replace") or "{}").get("streams", [])
    except ValueError:
        streams = []
    if not streams:
        msg = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DecodeError("not a decodable audio file" + (f": {msg[-1][:200]}" if msg else ""))
    st = streams[0]
    try:
        rate = int(st.get("sample_rate", 0))
        channels = int(st.get("channels", 0))
        dur = float(st.get("duration", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise DecodeError("ffprobe reports unreadable stream parameters") from exc
    _plausible(int(dur * rate) if rate else 0, rate, channels, file_bytes, budget_bytes)
    max_bytes = min(budget_bytes, MAX_EXPANSION * max(file_bytes, 1))
    try:
        proc = subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
             "-f", "f32le", "-acodec", "pcm_f32le", "-"],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DecodeError("ffmpeg decode timed out") from exc
    raw = proc.stdout
    if len(raw) > max_bytes:
        raise DecodeError(f"ffmpeg produced {len(raw)} bytes of PCM, more than the stream declared")
    usable = len(raw) // (4 * channels) * 4 * channels
    if usable == 0:
        raise DecodeError("ffmpeg decoded no samples")
    x = np.frombuffer(raw[:usable], dtype="<f4").reshape(-1, channels).astype(np.float32)
    del raw, proc
    declared = int(dur * rate) if dur else None
    if sink is not None:
        sink.start(channels, rate, len(x))
        sink.update(x)
        return Decoded(None, rate, "ffmpeg", st.get("codec_name"), declared, len(x), channels)
    if check_finite and not np.isfinite(x).all():
        raise DecodeError("decoded samples contain NaN or infinity")
    return Decoded(x, rate, "ffmpeg", st.get("codec_name"), declared)
