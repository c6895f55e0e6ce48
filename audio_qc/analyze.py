"""The QC of one file, in-process: integrity, decode, measurements, defects.

:func:`analyze_path` is what the sandboxed child (:mod:`audio_qc.child`)
runs; :func:`audio_qc.check.check_file` is the public, sandboxed entry point.
It returns a plain JSON-able dict (no numpy types) with the QC report fields
that the child knows: ``decoder``, ``codec``, ``duration_s``,
``sample_rate_hz``, ``channels``, ``measurements``, ``defects``, and
``finished`` (False when a resource limit stopped QC).

Declared-metadata checks (``sample_rate_mismatch``, ``channel_mismatch``,
``duration_mismatch``) and delivery-profile checks are pure functions of the
report and live here too, so the parent can apply them without decoding.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import numpy as np

from audio_qc import integrity, loudness, signal_checks
from audio_qc.decode import LOSSY_CODECS, DecodeError, ResourceLimit, decode
from audio_qc.profiles import DeliveryProfile
from stream.schemas import AudioIngested, Defect, Severity

#: Version of the QC algorithms and thresholds; part of every audio alert id.
QC_VERSION = "qc-1.0.0"


def _r(v: float | None, nd: int = 3) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), nd)


def _defect(code: str, severity: Severity, detail: str, start: float | None = None, end: float | None = None) -> dict:
    return Defect(code=code, severity=severity, detail=detail, start_s=start, end_s=end).model_dump(mode="json")


def measure_and_check(x: np.ndarray, sr: int, codec: str | None, th=signal_checks.DEFAULT_THRESHOLDS) -> tuple[dict, list[dict]]:
    """Measurements and signal defects of decoded audio.

    Args:
        x: float32, shape (n_samples, n_channels), full scale 1.0.
        sr: sample rate, Hz.
        codec: codec name (decides which bandwidth is explained).

    Returns:
        ``(measurements, defects)``: a dict with the fields of
        :class:`stream.schemas.QCMeasurements` (None where undefined) and a
        list of defect dicts.

    Raises:
        DecodeError: when a sample is NaN or infinite (found by the analysis
            pass, so the decoder need not scan for them).
    """
    return measure_from_pass(loudness.analysis_pass(x, sr, copy_channels=True), sr, codec, th)


def measure_from_pass(ps: loudness.PassResult, sr: int, codec: str | None,
                      th=signal_checks.DEFAULT_THRESHOLDS) -> tuple[dict, list[dict]]:
    """:func:`measure_and_check` from a finished analysis pass (with
    ``channels``), e.g. one fed by the decoder (:class:`loudness.AnalysisPass`).

    Raises:
        DecodeError: when a sample is NaN or infinite.
    """
    if not ps.finite:
        raise DecodeError("decoded samples contain NaN or infinity")
    ch = ps.channels
    c, n = ch.shape
    dur = n / sr
    csum, bounds = ps.csum, ps.bounds
    lres = loudness.measure_loudness_from_power(csum, bounds)
    st = ps.stats  # statistics taken while the decoder's chunks were in cache
    tp = np.array([loudness.true_peak_channel(ch[i], sr, block_max_bits=None if st is None else st.bmax_bits[i])
                   for i in range(c)])
    peak, dc, corr = ps.peak, ps.dc, ps.lr_correlation
    meas = {
        "integrated_lufs": _r(lres.integrated_lufs),
        "loudness_range_lu": _r(lres.loudness_range_lu),
        "max_momentary_lufs": _r(lres.max_momentary_lufs),
        "max_short_term_lufs": _r(lres.max_short_term_lufs),
        "true_peak_dbtp": _r(loudness.db(float(tp.max()))),
        "sample_peak_dbfs": _r(loudness.db(float(peak.max()))),
        "dc_offset": [round(float(v), 5) for v in dc],
        "lr_correlation": _r(corr),
    }
    blk = signal_checks.block_loudness(csum, bounds)
    defects: list[Defect] = []
    sil = signal_checks.check_silence(blk, lres.max_momentary_lufs, dur, float(peak.max()), th)
    defects += sil
    defects += signal_checks.check_dc(dc, th)
    if not any(d.code == "silence" for d in sil):
        defects += signal_checks.check_clipping(ch, peak, th)
        defects += signal_checks.check_gaps(ch, sr, blk, th, block_max=None if st is None else st.gap_block_max())
        defects += signal_checks.check_clicks(ch, sr, th)
        low = signal_checks.low_band_correlation(ch, sr, means=st.means if st is not None and st.lowband else None)
        defects += signal_checks.check_stereo(ch, corr, low, th,
                                              energies=tuple(st.side) if st is not None and st.stereo else None)
        lossy = (codec or "").lower() in LOSSY_CODECS
        cutoff = signal_checks.spectral_cutoff(ch, sr, th)
        defects += signal_checks.check_bandwidth(cutoff, sr, codec, lossy, th)
    return meas, [d.model_dump(mode="json") for d in defects]


def analyze_path(path: Path, *, memory_budget_bytes: int, ffmpeg_timeout_s: float = 60.0) -> dict:
    """Integrity checks, decode, measurements and signal defects of one file.

    Never raises on bad audio: undecodable or damaged input becomes a
    ``decode_error`` or ``truncated`` defect; a file too large for the memory
    budget returns ``finished=False`` (outcome ``error``).

    Args:
        path: file to check (already resolved inside the allowed roots).
        memory_budget_bytes: largest decoded float32 size allowed, bytes.
        ffmpeg_timeout_s: wall-clock limit of each ffmpeg subprocess, seconds.
    """
    out: dict = {"decoder": None, "codec": None, "duration_s": None, "sample_rate_hz": None,
                 "channels": None, "measurements": {}, "defects": [], "finished": True}
    size = path.stat().st_size
    if size == 0:
        out["defects"].append(_defect("decode_error", Severity.critical, "empty file (0 bytes)"))
        return out
    findings: list[integrity.Finding] = []
    with open(path, "rb") as fh:
        # mapped, not read: the checks touch every byte once, a copy would cost
        # as much as the FLAC CRC walk (a file shrinking meanwhile kills the
        # child with SIGBUS: outcome error, as for any sandbox failure)
        try:
            data: bytes | mmap.mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # not mappable (special file, address-space limit)
            data = fh.read()
        try:
            fmt = integrity.sniff_format(data[:16])
            if fmt == "ogg":
                findings, _ = integrity.check_ogg(data)
            elif fmt == "wav":
                findings = integrity.check_wav(data)
            elif fmt == "flac":
                findings = integrity.check_flac(data)
            elif fmt == "mp3":
                findings = integrity.check_with_ffmpeg(path, ffmpeg_timeout_s, fmt)
        except Exception as exc:  # a checker bug must not hide the decode result  # noqa: BLE001
            findings = [integrity.Finding("decode_error", f"integrity check failed: {type(exc).__name__}")]
        finally:
            if isinstance(data, mmap.mmap):
                try:
                    data.close()
                except BufferError:  # a view still alive (checker bug): leave it to the GC
                    pass
    for f in findings:
        sev = Severity.error if f.code == "truncated" else Severity.critical
        out["defects"].append(_defect(f.code, sev, f.detail))
    sink = loudness.AnalysisPass(copy_channels=True)
    try:
        dec = decode(path, memory_budget_bytes, ffmpeg_timeout_s, check_finite=False, sink=sink)
    except ResourceLimit as exc:
        out["finished"] = False
        out["defects"].append(_defect("decode_error", Severity.critical, f"sandbox limit: {exc}"))
        return out
    except DecodeError as exc:
        if not any(d["code"] == "decode_error" for d in out["defects"]):
            out["defects"].append(_defect("decode_error", Severity.critical, str(exc)[:400]))
        return out
    except Exception as exc:  # noqa: BLE001
        out["defects"].append(_defect("decode_error", Severity.critical, f"{type(exc).__name__}: {str(exc)[:300]}"))
        return out
    ps = sink.result()
    del sink
    out.update(decoder=dec.decoder, codec=dec.codec, duration_s=round(dec.duration_s, 3),
               sample_rate_hz=dec.sample_rate, channels=dec.channels)
    if dec.declared_frames and dec.declared_frames > dec.n_frames * 1.01 + dec.sample_rate * 0.1:
        if not any(d["code"] == "truncated" for d in out["defects"]):
            out["defects"].append(_defect(
                "truncated", Severity.error,
                f"header declares {dec.declared_frames / dec.sample_rate:.2f} s, "
                f"{dec.duration_s:.2f} s decoded", round(dec.duration_s, 3), None))
    try:
        meas, defects = measure_from_pass(ps, dec.sample_rate, dec.codec)
    except DecodeError as exc:
        out["defects"].append(_defect("decode_error", Severity.critical, str(exc)))
        return out
    out["measurements"] = meas
    out["defects"] += defects
    return out


def warm_up() -> float:
    """Compile the numba kernels of the analysis now (first calls otherwise
    pay 5-10 s of compilation); returns the seconds spent.

    The fork server (:mod:`audio_qc.zygote`) calls it once at start, so every
    sandboxed child starts with compiled kernels (numba's on-disk cache is not
    used: it pickles). Covers the dtypes and layouts :func:`analyze_path`
    uses: interleaved float32 from the decoders, mono and stereo, and the FLAC
    frame walk.
    """
    import io
    import time

    import soundfile as sf

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for channels in (1, 2):
        x = (0.1 * rng.standard_normal((48000, channels))).astype(np.float32)
        measure_and_check(x, 48000, "pcm_f32")
    buf = io.BytesIO()
    sf.write(buf, (0.1 * rng.standard_normal((8192, 2))).astype(np.float32), 44100, format="FLAC", subtype="PCM_16")
    integrity.check_flac(buf.getvalue())
    return time.perf_counter() - t0


def declared_defects(result: dict, declared: AudioIngested | None) -> list[dict]:
    """Mismatch defects between decoded and declared metadata.

    ``sample_rate_mismatch`` and ``channel_mismatch`` (error) on any
    difference; ``duration_mismatch`` (warning) when the durations differ by
    more than max(1 s, 1 %).
    """
    if declared is None or result.get("sample_rate_hz") is None:
        return []
    out = []
    if declared.sample_rate_hz is not None and declared.sample_rate_hz != result["sample_rate_hz"]:
        out.append(_defect("sample_rate_mismatch", Severity.error,
                           f"declared {declared.sample_rate_hz} Hz, file is {result['sample_rate_hz']} Hz"))
    if declared.channels is not None and declared.channels != result["channels"]:
        out.append(_defect("channel_mismatch", Severity.error,
                           f"declared {declared.channels} channel(s), file has {result['channels']}"))
    if declared.duration_s is not None and result.get("duration_s") is not None:
        diff = abs(declared.duration_s - result["duration_s"])
        if diff > max(1.0, 0.01 * declared.duration_s):
            out.append(_defect("duration_mismatch", Severity.warning,
                               f"declared {declared.duration_s:.2f} s, file is {result['duration_s']:.2f} s"))
    return out


def profile_defects(measurements: dict, profile: DeliveryProfile) -> list[dict]:
    """``loudness_out_of_range`` and ``true_peak_over`` against a profile
    (warnings: compliance findings about the level, not damage)."""
    out = []
    il = measurements.get("integrated_lufs")
    if il is not None and abs(il - profile.target_lufs) > profile.tolerance_lu:
        out.append(_defect("loudness_out_of_range", Severity.warning,
                           f"integrated {il:.1f} LUFS, profile {profile.name} wants "
                           f"{profile.target_lufs:.0f} +- {profile.tolerance_lu:g} LU"))
    tp = measurements.get("true_peak_dbtp")
    if tp is not None and tp > profile.max_true_peak_dbtp:
        out.append(_defect("true_peak_over", Severity.warning,
                           f"true peak {tp:+.1f} dBTP over the {profile.name} ceiling "
                           f"{profile.max_true_peak_dbtp:+.1f} dBTP"))
    return out
