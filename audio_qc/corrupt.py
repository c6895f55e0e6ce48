"""Labelled damaged variants of real tracks, for the QC evaluation.

:func:`make_variants` takes one real file and writes, into a scratch folder,
one variant per kind of damage with the defect code QC must report:

| kind | how | expected code |
|---|---|---|
| ``truncate_container`` | original bytes cut at 40-80 % | ``truncated`` |
| ``header_damage`` | 16 random bytes over the first header packet | ``decode_error`` |
| ``byte_flips`` | 8 random bytes XOR-ed in the second half | ``decode_error`` |
| ``truncate_wav`` | 16-bit WAV cut at 40-80 % of its data | ``truncated`` |
| ``flac_byte_flips`` | FLAC with 8 random bytes XOR-ed in its frames | ``decode_error`` |
| ``clip_full_scale`` | gain +12 dB, clipped at +-1.0 | ``clipping`` |
| ``clip_attenuated`` | the same, then -6 dB | ``clipping`` |
| ``clip_lossy`` | gain +12 dB, clipped at +-1.0, encoded to Ogg Vorbis (libvorbis q4) | ``clipping`` |
| ``clip_attenuated_lossy`` | the same with -6 dB after clipping, then Vorbis | ``clipping`` |
| ``gap`` | three dropouts of 50-300 ms of digital silence in loud passages | ``gap`` |
| ``clicks`` | five single-sample impulses of +-0.5 in random places | ``click`` |
| ``dc_offset`` | +0.05 added to one channel | ``dc_offset`` |
| ``polarity`` | right channel inverted | ``polarity_inverted`` |
| ``dual_mono`` | right channel replaced by the left | ``dual_mono`` |
| ``lowpass`` | resampled through 8, 11.025 or 16 kHz and back | ``bandwidth_limited`` |
| ``gain_+10`` .. ``gain_-20`` | +-10 / +-20 dB | ``loudness_out_of_range`` |
| ``silence_only`` | all samples 0 | ``silence`` |
| ``leading_silence`` / ``trailing_silence`` | 12 s of zeros before / after | same code |
| ``wrong_declared_rate`` | declared sample rate 22050 or 96000 Hz | ``sample_rate_mismatch`` |
| ``wrong_declared_channels`` | declared 1 or 6 channels | ``channel_mismatch`` |
| ``wrong_declared_duration`` | declared duration +-20 % | ``duration_mismatch`` |

Signal damage is applied to a 30 s excerpt (from 25 % into the track) and
written as 32-bit float WAV, which keeps the decoded samples exactly (lossy
decodes exceed full scale; a 16-bit file would clip them and create clipping
where none was made). The two lossy clipping variants are re-encoded with
ffmpeg's libvorbis (Debian ``ffmpeg``), as a clipped master delivered as Ogg
Vorbis would be: the codec smears the flat tops, and the decode overshoots
full scale.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from stream.schemas import AudioIngested


@dataclass
class Variant:
    """One labelled variant: file, expected defect code, kind, declared metadata."""

    path: Path
    expected: str
    kind: str
    declared: AudioIngested | None = None


def _excerpt(x: np.ndarray, sr: int, seconds: float) -> np.ndarray:
    n = len(x)
    start = int(n * 0.25)
    length = int(seconds * sr)
    if n - start < length:
        start = max(0, n - length)
    return np.ascontiguousarray(x[start : start + length])


def _loud_positions(x: np.ndarray, sr: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` sample positions in the loudest 100 ms blocks (away from the ends)."""
    hop = int(0.1 * sr)
    nb = len(x) // hop
    e = (x[: nb * hop].astype(np.float64) ** 2).reshape(nb, hop, -1).mean(axis=(1, 2))
    e[:10] = 0
    e[-10:] = 0
    top = np.argsort(-e)[: max(k * 4, k)]
    pick = rng.choice(top, size=k, replace=False)
    return sorted(int(b) * hop + hop // 2 for b in pick)


def encode_vorbis(y: np.ndarray, sr: int, path: Path, quality: int = 4) -> None:
    """Encode float samples to Ogg Vorbis with ffmpeg (libvorbis, VBR ``-q:a quality``).

    Args:
        y: shape (n_samples, n_channels), full scale 1.0.
        sr: sample rate, Hz.
        path: output ``.ogg`` file.

    Raises:
        subprocess.CalledProcessError: if ffmpeg fails (e.g. no libvorbis).
    """
    tmp = path.with_suffix(".src.wav")
    sf.write(str(tmp), y, sr, subtype="FLOAT")
    try:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(tmp), "-c:a", "libvorbis",
                        "-q:a", str(quality), str(path)], check=True, timeout=300, capture_output=True)
    finally:
        tmp.unlink(missing_ok=True)


def make_variants(src: Path, out_dir: Path, rng: np.random.Generator, excerpt_s: float = 30.0,
                  kinds: set[str] | None = None) -> list[Variant]:
    """Write labelled damaged variants of ``src`` into ``out_dir``.

    Args:
        src: a real, stereo, intact audio file (Ogg Vorbis/Opus here).
        out_dir: scratch folder (created).
        rng: random generator (positions, amounts).
        excerpt_s: excerpt length for signal damage, seconds.
        kinds: restrict to these kinds (default all).

    Returns:
        the variants written.

    Raises:
        ValueError: if ``src`` is not stereo (stereo damage needs two channels).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = src.stem.replace(" ", "_")
    want = (lambda k: True) if kinds is None else (lambda k: k in kinds)
    out: list[Variant] = []
    raw = src.read_bytes()
    x, sr = sf.read(str(src), dtype="float32", always_2d=True)
    if x.shape[1] != 2:
        raise ValueError(f"{src} is not stereo")
    ex = _excerpt(x, sr, excerpt_s)

    def wav(kind: str, y: np.ndarray, expected: str, subtype: str = "FLOAT", declared=None) -> None:
        p = out_dir / f"{stem}.{kind}.wav"
        sf.write(str(p), y, sr, subtype=subtype)
        out.append(Variant(p, expected, kind, declared))

    def raw_variant(kind: str, data: bytes, expected: str, suffix: str) -> None:
        p = out_dir / f"{stem}.{kind}{suffix}"
        p.write_bytes(data)
        out.append(Variant(p, expected, kind))

    suffix = src.suffix
    if want("truncate_container"):
        raw_variant("truncate_container", raw[: int(len(raw) * rng.uniform(0.4, 0.8))], "truncated", suffix)
    if want("header_damage"):
        d = bytearray(raw)
        # first page: 27-byte header + segment table; the identification packet follows
        off = 28 + d[26]
        d[off : off + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        raw_variant("header_damage", bytes(d), "decode_error", suffix)
    if want("byte_flips"):
        d = bytearray(raw)
        for p in rng.integers(len(d) // 2, len(d) - 64, 8):
            d[int(p)] ^= int(rng.integers(1, 256))
        raw_variant("byte_flips", bytes(d), "decode_error", suffix)
    if want("truncate_wav"):
        p = out_dir / f"{stem}.truncate_wav.wav"
        sf.write(str(p), ex, sr, subtype="PCM_16")
        b = p.read_bytes()
        p.write_bytes(b[: int(len(b) * rng.uniform(0.4, 0.8))])
        out.append(Variant(p, "truncated", "truncate_wav"))
    if want("flac_byte_flips"):
        p = out_dir / f"{stem}.flac_byte_flips.flac"
        sf.write(str(p), np.clip(ex, -1, 1), sr, subtype="PCM_16", format="FLAC")
        d = bytearray(p.read_bytes())
        for q in rng.integers(len(d) // 4, len(d) - 64, 8):
            d[int(q)] ^= int(rng.integers(1, 256))
        p.write_bytes(bytes(d))
        out.append(Variant(p, "decode_error", "flac_byte_flips"))
    if want("clip_full_scale"):
        wav("clip_full_scale", np.clip(ex * 4.0, -1.0, 1.0), "clipping")
    if want("clip_attenuated"):
        wav("clip_attenuated", (np.clip(ex * 4.0, -1.0, 1.0) * 0.5).astype(np.float32), "clipping")
    for kind, att in (("clip_lossy", 1.0), ("clip_attenuated_lossy", 0.5)):
        if want(kind):
            p = out_dir / f"{stem}.{kind}.ogg"
            encode_vorbis((np.clip(ex * 4.0, -1.0, 1.0) * att).astype(np.float32), sr, p)
            out.append(Variant(p, "clipping", kind))
    if want("gap"):
        y = ex.copy()
        for pos in _loud_positions(ex, sr, 3, rng):
            y[pos : pos + int(rng.uniform(0.05, 0.3) * sr)] = 0.0
        wav("gap", y, "gap")
    if want("clicks"):
        y = ex.copy()
        for pos in rng.integers(sr, len(y) - sr, 5):
            y[int(pos), int(rng.integers(0, 2))] += float(rng.choice([-0.5, 0.5]))
        wav("clicks", y, "click")
    if want("dc_offset"):
        y = ex.copy()
        y[:, int(rng.integers(0, 2))] += 0.05
        wav("dc_offset", y, "dc_offset")
    if want("polarity"):
        y = ex.copy()
        y[:, 1] = -y[:, 1]
        wav("polarity", y, "polarity_inverted")
    if want("dual_mono"):
        y = ex.copy()
        y[:, 1] = y[:, 0]
        wav("dual_mono", y, "dual_mono")
    if want("lowpass"):
        low = int(rng.choice([8000, 11025, 16000]))
        g = np.gcd(low, sr)
        y = resample_poly(resample_poly(ex, low // g, sr // g, axis=0), sr // g, low // g, axis=0)[: len(ex)]
        wav("lowpass", y.astype(np.float32), "bandwidth_limited")
    for db in (10, -10, 20, -20):
        if want(f"gain_{db:+d}"):
            wav(f"gain_{db:+d}", (ex * 10 ** (db / 20)).astype(np.float32), "loudness_out_of_range")
    if want("silence_only"):
        wav("silence_only", np.zeros_like(ex), "silence", subtype="PCM_16")
    pad = np.zeros((int(12 * sr), 2), dtype=np.float32)
    if want("leading_silence"):
        wav("leading_silence", np.concatenate([pad, ex]), "leading_silence")
    if want("trailing_silence"):
        wav("trailing_silence", np.concatenate([ex, pad]), "trailing_silence")
    dur = len(ex) / sr
    if want("wrong_declared_rate"):
        rate = 22050 if sr != 22050 else 96000
        wav("wrong_declared_rate", ex, "sample_rate_mismatch",
            declared=AudioIngested(file_id="v", uri="v", sample_rate_hz=rate, channels=2, duration_s=dur))
    if want("wrong_declared_channels"):
        wav("wrong_declared_channels", ex, "channel_mismatch",
            declared=AudioIngested(file_id="v", uri="v", sample_rate_hz=sr, channels=int(rng.choice([1, 6])), duration_s=dur))
    if want("wrong_declared_duration"):
        wav("wrong_declared_duration", ex, "duration_mismatch",
            declared=AudioIngested(file_id="v", uri="v", sample_rate_hz=sr, channels=2,
                                   duration_s=dur * float(rng.choice([0.8, 1.2]))))
    return out
