"""Defect checks on decoded PCM: level, silence, and signal defects.

Each check takes float32 samples in channel-major layout, shape
(n_channels, n_samples) (full scale 1.0; contiguous rows are what make the
checks fast) and the sample rate in Hz, and returns a list of
:class:`stream.schemas.Defect`. Thresholds live in :class:`Thresholds`; their
defaults were calibrated on the real music in ``../shared/data/audio``
(36 lossy tracks, see ``docs/AUDIO_QC.md``): the known real defects are found
and nothing else is flagged on those files, while the corruption benchmark
(``bench/audio_eval.py``) keeps recall >= 0.98 per code.

Sources: EBU R128 / Tech 3341 (loudness levels), ffmpeg ``astats`` (flat
factor: runs of identical samples at the peak level), Aleinik et al. (2014)
(amplitude-histogram pile-up of clipped audio, used for lossy decodes),
ffmpeg ``silencedetect`` (digital-silence runs), Vaseghi & Rayner (1990) and
Godsill & Rayner, "Digital Audio Restoration" (1998) (clicks as impulses in
the linear-prediction residual, found with a matched filter against a local
robust residual scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numba as nb
from scipy.signal import butter, sosfilt

from audio_qc.pass_stats import block_means2, low_band_decimation, side_energies
from stream.schemas import Defect, Severity


@dataclass(frozen=True)
class Thresholds:
    """Check thresholds (units in the names). Defaults: see module docstring."""

    #: Whole-file silence: max momentary loudness below this, LUFS.
    silence_lufs: float = -60.0
    #: Leading/trailing silence: 100 ms loudness below this, LUFS ...
    edge_silence_lufs: float = -60.0
    #: ... for longer than this, seconds.
    edge_silence_s: float = 10.0
    #: Gap: digital silence (every channel |x| <= this) ...
    gap_level: float = 2.0**-15
    #: ... lasting at least this long, seconds ...
    gap_min_s: float = 0.05
    #: ... with music (100 ms loudness above this, LUFS) on both sides.
    gap_context_lufs: float = -45.0
    #: DC offset: |mean| of a channel above this (linear; 0.01 = -40 dBFS).
    dc_offset: float = 0.01
    #: Clipping: flat runs (identical samples at a channel's peak) of this length.
    clip_run: int = 3
    #: ... at least this many runs in the file.
    clip_min_runs: int = 3
    #: Lossy clipping (:func:`amplitude_pile_up`): histogram bump this many times its valley ...
    clip_pile_prominence: float = 1.7
    #: ... holding at least this share of one polarity's samples (within +-5 % of its level).
    clip_pile_mass: float = 0.005
    #: Click (LPC matched filter, :func:`click_events`): white-noise correction of the AR fit.
    click_lpc_lambda: float = 1e-4
    #: ... an impulse explaining at least this share of the local residual energy ...
    click_explained: float = 0.8
    #: ... with a score (SNR over the local residual scale) of at least this ...
    click_score: float = 20.0
    #: ... and an amplitude of at least this (linear) ...
    click_amplitude: float = 0.2
    #: ... or, whatever its amplitude, a score of at least this ...
    click_score_alone: float = 50.0
    #: ... with an explained share of at least this.
    click_explained_alone: float = 0.7
    #: Polarity: low-band (< 150 Hz) L/R correlation below this.
    polarity_low_corr: float = -0.3
    #: Dual mono: RMS(L-R) / RMS(L+R) below this.
    dual_mono_ratio: float = 1e-3
    #: Bandwidth: measured cutoff below this fraction of the expected one.
    bandwidth_fraction: float = 0.6
    #: Spectrum level defining the cutoff, dB below the spectrum's peak.
    bandwidth_db: float = 60.0


DEFAULT_THRESHOLDS = Thresholds()


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the True runs of a 1-D mask."""
    m = np.concatenate(([False], mask, [False]))
    d = np.flatnonzero(m[1:] != m[:-1])
    return d[0::2], d[1::2]


def block_loudness(csum: np.ndarray, bounds: np.ndarray, width: int = 10) -> np.ndarray:
    """Loudness of consecutive ``width`` x 10 ms blocks (LUFS, -inf when 0).

    Args:
        csum, bounds: from :func:`audio_qc.loudness.subblock_power`.
    """
    n = (len(bounds) - 1) // width
    if n == 0:
        return np.zeros(0)
    idx = np.arange(n + 1) * width
    e = np.diff(csum[idx])
    s = np.diff(bounds[idx])
    with np.errstate(divide="ignore"):
        return -0.691 + 10.0 * np.log10(np.maximum(e, 0.0) / s)


def check_silence(
    block_lufs: np.ndarray, max_momentary: float | None, duration_s: float, sample_peak: float,
    th: Thresholds = DEFAULT_THRESHOLDS,
) -> list[Defect]:
    """``silence`` (whole file), ``leading_silence``, ``trailing_silence``.

    Args:
        block_lufs: 100 ms loudness, shape (n_blocks,), LUFS (-inf allowed).
        max_momentary: max momentary loudness, LUFS or None.
        duration_s: file duration, seconds.
        sample_peak: largest |sample|, linear.
    """
    loud = block_lufs > th.edge_silence_lufs
    quiet_file = (max_momentary is None or max_momentary < th.silence_lufs) and (
        len(block_lufs) > 0 or sample_peak < 10 ** (th.silence_lufs / 20)
    )
    if quiet_file or not loud.any():
        lvl = f"{max_momentary:.1f} LUFS" if max_momentary is not None else "no defined loudness"
        return [Defect(code="silence", severity=Severity.error,
                       detail=f"whole file is silent (max momentary {lvl}, sample peak "
                              f"{20 * np.log10(max(sample_peak, 1e-12)):.1f} dBFS)",
                       start_s=0.0, end_s=round(duration_s, 3))]
    out = []
    first = int(np.argmax(loud))
    last = len(loud) - 1 - int(np.argmax(loud[::-1]))
    lead = first * 0.1
    trail = duration_s - (last + 1) * 0.1
    if lead > th.edge_silence_s:
        out.append(Defect(code="leading_silence", severity=Severity.warning,
                          detail=f"{lead:.1f} s below {th.edge_silence_lufs:.0f} LUFS at the start",
                          start_s=0.0, end_s=round(lead, 3)))
    if trail > th.edge_silence_s:
        out.append(Defect(code="trailing_silence", severity=Severity.warning,
                          detail=f"{trail:.1f} s below {th.edge_silence_lufs:.0f} LUFS at the end",
                          start_s=round((last + 1) * 0.1, 3), end_s=round(duration_s, 3)))
    return out


_ABS_BITS = np.int32(0x7FFFFFFF)


@nb.njit(nogil=True)
def _block_abs_max(ch, block):  # pragma: no cover - compiled
    """Max |x| over all channels of each whole ``block``-sample block,
    shape (n_samples // block,), float32: one pass, no |x| copy of the file.
    ``ch`` is C-contiguous float32 (finite). The maximum is taken over the
    int32 bit patterns with the sign bit cleared (IEEE-754 order of
    non-negative floats is integer order), which vectorises where a float
    max reduction does not (numba 0.68): the same values, ~2.5x faster."""
    c, n = ch.shape
    nbk = n // block
    out = np.zeros(nbk, np.int32)
    for k in range(c):
        row = ch[k].view(np.int32)
        for b in range(nbk):
            seg = row[b * block : (b + 1) * block]
            m = out[b]
            for i in range(block):
                v = seg[i] & _ABS_BITS
                m = v if v > m else m
            out[b] = m
    return out.view(np.float32)


def check_gaps(ch: np.ndarray, sr: int, block_lufs: np.ndarray, th: Thresholds = DEFAULT_THRESHOLDS,
               block: int = 256, block_max: np.ndarray | None = None) -> list[Defect]:
    """``gap``: runs of digital silence (>= ``gap_min_s``) inside the music.

    A run counts when every channel stays within ``gap_level`` and the 100 ms
    blocks just before and just after it are louder than ``gap_context_lufs``
    (a dropout, not a pause at a section end or a fade). Candidate runs are
    found on ``block``-sample block maxima, then their edges are refined to
    the sample.

    Args:
        ch: shape (n_channels, n_samples).
        block_lufs: 100 ms loudness from :func:`block_loudness`.
        block_max: max |x| over the channels of each whole ``block``, shape
            (n_samples // block,), if already known
            (:meth:`audio_qc.pass_stats.PassStats.gap_block_max`).
    """
    c, n = ch.shape
    nb = n // block
    need = int(th.gap_min_s * sr)
    if nb == 0 or need <= 0:
        return []
    if block_max is not None and block_max.shape == (nb,):
        bmax = block_max
    else:
        bmax = _block_abs_max(np.ascontiguousarray(ch, dtype=np.float32), block)
    bs, be = _runs(bmax <= th.gap_level)
    keep = (be - bs) * block >= need - 2 * block
    found = []
    nbl = len(block_lufs)

    def silent(i: int) -> bool:
        return bool(np.all(np.abs(ch[:, i]) <= th.gap_level))

    for b0, b1 in zip(bs[keep], be[keep]):
        s0, s1 = int(b0) * block, int(b1) * block
        lo = max(0, s0 - block)
        while s0 > lo and silent(s0 - 1):
            s0 -= 1
        hi = min(n, s1 + block)
        while s1 < hi and silent(s1):
            s1 += 1
        if s1 - s0 < need or s0 == 0 or s1 >= n:
            continue
        k0 = int(s0 / sr / 0.1) - 1
        k1 = int(np.ceil(s1 / sr / 0.1)) + 1
        if k0 < 0 or k1 >= nbl:
            continue
        if block_lufs[k0] > th.gap_context_lufs and block_lufs[k1] > th.gap_context_lufs:
            found.append((s0 / sr, s1 / sr))
    if not found:
        return []
    total = sum(e - s for s, e in found)
    return [Defect(code="gap", severity=Severity.warning,
                   detail=f"{len(found)} dropout(s) of digital silence inside the music, "
                          f"{total * 1000:.0f} ms in all, longest {max(e - s for s, e in found) * 1000:.0f} ms",
                   start_s=round(found[0][0], 3), end_s=round(found[0][1], 3))]


def check_dc(dc: np.ndarray, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Defect]:
    """``dc_offset`` when a channel's mean exceeds ``th.dc_offset`` in magnitude.

    Args:
        dc: per-channel mean, shape (n_channels,), linear.
    """
    bad = np.abs(dc) > th.dc_offset
    if not bad.any():
        return []
    vals = ", ".join(f"{v:+.3f}" for v in dc)
    return [Defect(code="dc_offset", severity=Severity.warning,
                   detail=f"DC offset per channel {vals} (limit {th.dc_offset})")]


def flat_runs(x: np.ndarray, min_run: int, peak: float | None = None) -> tuple[int, float]:
    """Runs of >= ``min_run`` identical samples at a channel's peak magnitude.

    Args:
        x: one channel, shape (n_samples,).
        min_run: shortest run counted, samples.
        peak: max |x| if already known.

    Returns:
        ``(runs, level)``: number of such runs (both signs), and the peak
        magnitude they sit at (linear). This is the "flat factor" idea of
        ffmpeg ``astats``: clipping leaves plateaus at the peak, and they stay
        flat after the clipped audio is attenuated.
    """
    if peak is None:
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak <= 0.0:
        return 0, 0.0
    thr = peak * (1 - 1e-6)
    x = np.ascontiguousarray(x)
    # compared in the samples' dtype, as numpy compares an array with a Python float
    if x.dtype == np.float32:
        t32 = np.float32(thr)
        return int(_flat_run_count32(x, t32, int(np.array([t32]).view(np.int32)[0]), max(min_run, 2))), peak
    return int(_flat_run_count(x, x.dtype.type(thr), max(min_run, 2))), peak


@nb.njit(nogil=True)
def _flat_run_count32(x, thr, thr_bits, min_run):  # pragma: no cover - compiled
    """:func:`_flat_run_count` for float32 ``x`` and ``thr`` > 0 (``thr_bits``:
    its int32 bit pattern): 64-sample blocks whose largest |x| (an integer
    max over the bit patterns, vectorised) is below ``thr`` only close the
    open run; the others run the per-sample loop. The same count."""
    xb = x.view(np.int32)
    n = x.shape[0]
    count = 0
    run = 0
    for s in range(0, n, 64):
        e = min(n, s + 64)
        seg = xb[s:e]
        m = np.int32(0)
        for i in range(e - s):
            v = seg[i] & _ABS_BITS
            m = v if v > m else m
        if m < thr_bits:  # no sample of the block reaches the threshold
            if run >= min_run:
                count += 1
            run = 0
            continue
        for i in range(s, e):
            v = x[i]
            if v >= thr or v <= -thr:
                if run > 0 and v == x[i - 1]:
                    run += 1
                else:
                    if run >= min_run:
                        count += 1
                    run = 1
            else:
                if run >= min_run:
                    count += 1
                run = 0
    if run >= min_run:
        count += 1
    return count


@nb.njit(nogil=True)
def _flat_run_count(x, thr, min_run):  # pragma: no cover - compiled
    """Runs of >= ``min_run`` consecutive identical samples with |x| >= ``thr``
    (one pass, no index or mask arrays)."""
    count = 0
    run = 0
    for i in range(x.shape[0]):
        v = x[i]
        if v >= thr or v <= -thr:
            if run > 0 and v == x[i - 1]:
                run += 1
            else:
                if run >= min_run:
                    count += 1
                run = 1
        else:
            if run >= min_run:
                count += 1
            run = 0
    if run >= min_run:
        count += 1
    return count


def _bump(edges: np.ndarray, counts: np.ndarray, lo: float = 0.7, hi: float = 1.1,
          step: float = 0.01) -> tuple[float, float, float]:
    """Bump of an amplitude histogram near its top (see :func:`amplitude_pile_up`)."""
    n = float(counts.sum())
    if n < 1000:
        return 0.0, 0.0, 0.0
    cum = np.concatenate(([0.0], np.cumsum(counts, dtype=np.float64)))
    q = float(np.interp(0.9999 * n, cum, edges))
    if q <= 0.0:
        return 0.0, 0.0, 0.0
    e = q * np.arange(lo, hi + step / 2, step)
    c = np.diff(np.interp(e, edges, cum))
    k = int(np.argmax(c))
    if k == 0:
        return 1.0, 0.0, 0.0
    prom = float(c[k] / max(c[:k].min(), 1.0))
    lvl = 0.5 * float(e[k] + e[k + 1])
    mass = float((np.interp(lvl * 1.05, edges, cum) - np.interp(lvl * 0.95, edges, cum)) / n)
    return prom, mass, lvl


@nb.njit(nogil=True)
def _signed_histogram(x, scale, bins, stride):  # pragma: no cover - compiled
    """Counts of ``clip(trunc(x[::stride] * scale), -bins, bins) + bins``,
    shape (2 bins + 1,), float64: one pass, no temporary arrays (the numpy
    form built three strided copies of the channel)."""
    bc = np.zeros(2 * bins + 1)
    for i in range(0, x.shape[0], stride):
        q = int(x[i] * scale)
        if q < -bins:
            q = -bins
        elif q > bins:
            q = bins
        bc[q + bins] += 1.0
    return bc


#: sum (L - R)^2 and sum (L + R)^2 (kept under its old name for callers).
_side_energies = side_energies


def amplitude_pile_up(x: np.ndarray, peak: float, bins: int = 1024, stride: int = 2) -> list[tuple[float, float, float]]:
    """Pile-up of samples near the top of each polarity's amplitude histogram.

    Clipping puts a share of the samples at one level, the clip level. A
    lossy encode (Vorbis, Opus, MP3) smears the flat tops, so no run of
    identical samples survives and the decode overshoots full scale, but the
    amplitude histogram keeps a bump at the clip level, where unclipped music
    has a density that falls towards its peak (the histogram method of
    Aleinik, Matveev & Raev, "Detection of clipped fragments in speech
    signals", 2014, applied per polarity because a DC offset clips one side
    only). Per polarity: the 99.99th percentile ``q`` of the values sets the
    scale; in 1 %-of-``q`` bins over [0.7 q, 1.1 q], the highest bin is the
    bump (none when it is the lowest edge: a density that falls towards the
    peak), its prominence is its count over the smallest count below it, and
    its mass the share of that polarity's samples within +-5 % of its level.
    A bump that does not outgrow the density at 0.7 q is not seen: a quiet
    track where +12 dB clips under ~1 % of the samples (``elf-land.ogg``)
    is missed after a Vorbis encode.

    Args:
        x: one channel, shape (n_samples,).
        peak: max |x| (linear, > 0).
        bins: histogram bins over [0, peak].
        stride: every ``stride``-th sample is counted (the bump holds
            thousands of samples; odd periodicities do not matter here).

    Returns:
        ``[(prominence, mass, level), ...]`` for the positive and the
        negative polarity (level linear; zeros when undefined). Samples
        within ``peak / bins`` of 0 (digital silence) are not counted.
    """
    if not peak > 0.0:
        return [(0.0, 0.0, 0.0), (0.0, 0.0, 0.0)]
    bc = _signed_histogram(np.ascontiguousarray(x, dtype=np.float32), np.float32(bins / peak), bins, stride)
    edges = np.arange(bins + 1) * (peak / bins)
    pos = bc[bins + 1 :].copy()
    neg = bc[:bins][::-1].copy()
    # bin k (k >= 1) of a side holds |x| in [k, k+1) * peak/bins; shift so that edges[k]..edges[k+1] is bin k
    out = []
    for side in (pos, neg):
        counts = np.concatenate(([0.0], side[:-1]))
        counts[-1] += side[-1]
        out.append(_bump(edges, counts))
    return out


def check_clipping(ch: np.ndarray, peaks: np.ndarray, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Defect]:
    """``clipping``: flat tops, or (in lossy decodes) an amplitude pile-up.

    1. Plateaus of >= ``clip_run`` identical samples at a channel's peak
       (at least ``clip_min_runs`` of them, :func:`flat_runs`). At full scale
       (peak >= -0.01 dBFS) this is clipping; below it, audio that was
       clipped and then attenuated (the plateau level is reported).
    2. Otherwise, a bump in either polarity's amplitude histogram
       (:func:`amplitude_pile_up`) with prominence >= ``clip_pile_prominence``
       and mass >= ``clip_pile_mass``: clipping before a lossy encode, which
       leaves no flat tops and overshoots 1.0 (true peaks above 0 dBTP alone
       are normal in lossy files and not flagged). Calibrated on the 36 real
       lossy tracks: the largest clean prominence with a mass >= 0.001 is 1.19
       (Enemy Unknown, whose +0.31 DC offset piles its positive half up near
       0.9).

    Args:
        ch: shape (n_channels, n_samples).
        peaks: per-channel max |x|, shape (n_channels,).
    """
    total = 0
    levels = []
    for c in range(ch.shape[0]):
        r, lvl = flat_runs(ch[c], th.clip_run, float(peaks[c]))
        total += r
        if r:
            levels.append(lvl)
    if total >= th.clip_min_runs:
        lvl = max(levels)
        ldb = 20 * np.log10(lvl)
        kind = "at full scale" if ldb >= -0.01 else f"then attenuated (plateaus at {ldb:.2f} dBFS)"
        return [Defect(code="clipping", severity=Severity.warning,
                       detail=f"clipped {kind}: {total} flat runs of >= {th.clip_run} samples")]
    best = None
    for c in range(ch.shape[0]):
        for sign, (prom, mass, lvl) in zip("+-", amplitude_pile_up(ch[c], float(peaks[c]))):
            if prom >= th.clip_pile_prominence and mass >= th.clip_pile_mass and (best is None or mass > best[1]):
                best = (prom, mass, lvl, c, sign)
    if best is None:
        return []
    prom, mass, lvl, c, sign = best
    return [Defect(code="clipping", severity=Severity.warning,
                   detail=f"clipped before a lossy encode: {mass:.1%} of channel {c}'s {sign} samples pile up "
                          f"at {20 * np.log10(lvl):.1f} dBFS ({prom:.1f}x the density below)")]


_FASTMATH = {"contract", "arcp", "reassoc", "nsz", "nnan", "ninf"}


@nb.njit(nogil=True, fastmath=_FASTMATH)
def _lpc_click_events(x, block, order, lam, gate, min_score, floor):  # pragma: no cover - compiled
    """Numba kernel of :func:`click_events` for one float32 channel.

    Returns ``(index, score, amplitude, explained)`` arrays of the local
    maxima of the matched-filter score above ``min_score``.
    """
    n = x.shape[0]
    nbk = n // block
    p = order
    # ring of four blocks of prediction error: block b is analysed while the
    # matched filter runs on block b - 1 (it reads blocks b - 2 .. b), so the
    # residual of the whole channel never exists (it cost page faults)
    ring = 4 * block
    e = np.zeros(ring, np.float32)
    sig = np.zeros(max(nbk, 1))
    hs = np.zeros((max(nbk, 1), p + 1))
    h2 = np.ones(max(nbk, 1))
    win = np.empty(block, np.float32)
    for i in range(block):
        win[i] = 0.5 - 0.5 * np.cos(2.0 * np.pi * (i + 0.5) / block)
    buf = np.empty(block, np.float32)
    r = np.zeros(p + 1)
    a = np.zeros(p)
    af = np.zeros(p, np.float32)
    tmp = np.zeros(p)
    cap = 1024
    idx = np.empty(cap, np.int64)
    sc = np.empty(cap)
    am = np.empty(cap)
    ex = np.empty(cap)
    ne = 0
    last = -(1 << 40)
    for bb in range(nbk + 1):
        if bb < nbk:
            b = bb
            s0 = b * block
            eo = (b % 4) * block
            for i in range(block):
                buf[i] = x[s0 + i] * win[i]
            for k in range(p + 1):
                acc = np.float32(0.0)
                u = buf[k:]
                # 0-based views: vectorised (float32 lanes; the sums differ from the
                # scalar order by float32 rounding, scores by < 1.5 %, no report changed)
                for i in range(block - k):
                    acc += u[i] * buf[i]
                r[k] = acc
            for k in range(p):
                a[k] = 0.0
            if r[0] > 0.0:
                # white-noise correction: bounds the whitening gain where a band is empty
                r[0] *= 1.0 + lam
                err = r[0]
                for i in range(p):  # Levinson-Durbin recursion
                    acc2 = r[i + 1]
                    for j in range(i):
                        acc2 -= a[j] * r[i - j]
                    kk = acc2 / err
                    for j in range(i):
                        tmp[j] = a[j] - kk * a[i - 1 - j]
                    for j in range(i):
                        a[j] = tmp[j]
                    a[i] = kk
                    err *= 1.0 - kk * kk
                    if err <= 0.0:
                        break
            hs[b, 0] = 1.0
            hh = 1.0
            for k in range(p):
                hs[b, k + 1] = -a[k]
                af[k] = a[k]
                hh += a[k] * a[k]
            h2[b] = hh
            if s0 >= p:
                # k outer, i inner: each tap is one vectorised pass over the block
                # (in L1), the same summation order per output as a direct FIR
                eb = e[eo : eo + block]
                for i in range(block):
                    eb[i] = x[s0 + i]
                for k in range(p):
                    ak = af[k]
                    xk = x[s0 - 1 - k : s0 - 1 - k + block]
                    for i in range(block):  # views indexed from 0: no wraparound test, vectorised
                        eb[i] -= ak * xk[i]
            else:
                for i in range(s0, s0 + block):
                    acc3 = x[i]
                    for k in range(p):
                        if i - 1 - k >= 0:
                            acc3 -= af[k] * x[i - 1 - k]
                    e[eo + i - s0] = acc3
            # robust scale: mean |e| without the samples above 8x the plain mean
            # (on a 0-based view: no wraparound test, the sums vectorise)
            es = e[eo : eo + block]
            m1 = np.float32(0.0)
            for i in range(block):
                m1 += abs(es[i])
            m1 /= block
            cut = np.float32(8.0) * m1
            m2 = np.float32(0.0)
            c2 = 0
            for i in range(block):
                v = abs(es[i])
                if v <= cut:
                    m2 += v
                    c2 += 1
            sig[b] = m2 / c2 if c2 > 0 else m1
        else:  # past the last block: zeros, as after the end of the channel
            eo = (bb % 4) * block
            for i in range(block):
                e[eo + i] = 0.0
        b = bb - 1
        if b < 0:
            continue
        sl = sig[b]
        if b > 0 and sig[b - 1] > sl:
            sl = sig[b - 1]
        if b + 1 < nbk and sig[b + 1] > sl:
            sl = sig[b + 1]
        if sl < floor:
            sl = floor
        g = gate * sl
        nrm = sl * np.sqrt(h2[b])
        s0 = b * block
        eo = (b % 4) * block
        hi = min(s0 + block, n - 2 * p - 1)
        es = e[eo : eo + block]
        for t in range(max(hi - s0, 0)):
            if abs(es[t]) <= g:
                continue
            i = s0 + t
            acc4 = 0.0
            for k in range(p + 1):
                acc4 += hs[b, k] * e[(i + k) % ring]
            s = abs(acc4) / nrm
            if s < min_score:
                continue
            en = 0.0
            for j in range(max(0, i - p), i + 2 * p + 1):
                ej = e[j % ring]
                en += ej * ej
            q = (acc4 * acc4 / h2[b]) / en if en > 0.0 else 0.0
            if ne > 0 and i - last <= p:
                last = i
                if s > sc[ne - 1]:
                    idx[ne - 1] = i
                    sc[ne - 1] = s
                    am[ne - 1] = acc4 / h2[b]
                    ex[ne - 1] = q
                continue
            last = i
            if ne == cap:
                continue
            idx[ne] = i
            sc[ne] = s
            am[ne] = acc4 / h2[b]
            ex[ne] = q
            ne += 1
    return idx[:ne], sc[:ne], am[:ne], ex[:ne]


def click_events(x: np.ndarray, th: Thresholds = DEFAULT_THRESHOLDS, block: int = 1024, order: int = 12,
                 min_score: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Impulse candidates of one channel by linear-prediction (LPC) residual.

    The detector of Vaseghi & Rayner (1990) and Godsill & Rayner, "Digital
    Audio Restoration" (1998), ch. 5: each ``block`` of samples gets an
    order-``order`` autoregressive model (autocorrelation method on the
    Hann-windowed block, Levinson-Durbin, white-noise correction
    ``click_lpc_lambda``); the prediction error ``e`` whitens the music, and
    the matched filter of an impulse through the prediction-error filter
    ``h`` (``y[n] = sum_k h[k] e[n+k]``, two-sided: it uses the samples after
    ``n`` as well as before) peaks where a single-sample impulse sits. At each
    local maximum:

    * ``score = |y| / (sigma * ||h||)``: the impulse's SNR against the local
      robust residual scale ``sigma`` (trimmed mean |e| of the block and its
      two neighbours, so an onset's loud side sets the scale);
    * ``amplitude = y / ||h||^2``: the least-squares impulse amplitude
      (linear, full scale 1.0);
    * ``explained``: the share of the prediction-error energy from ``order``
      samples before to ``2 order`` after ``n`` that that one impulse
      explains (near 1 for a click; codec bursts and percussive onsets spread
      over many samples and explain less).

    Args:
        x: one channel, shape (n_samples,), float32 (converted if not).
        th: thresholds (``click_lpc_lambda``).
        block: analysis block, samples, a multiple of 4 (1024: 21-23 ms at
            44.1-48 kHz).
        order: AR model order.
        min_score: smallest score returned.

    Returns:
        ``(index, score, amplitude, explained)``, each shape (n_events,)
        (at most 1024 events per channel, earliest first).

    Raises:
        ValueError: if ``block`` is not a positive multiple of 4 or
            ``order`` is not in [1, block / 2].
    """
    if block <= 0 or block % 4 or not 0 < 2 * order <= block:
        raise ValueError(f"click_events: block must be a positive multiple of 4 and 0 < 2 order <= block, "
                         f"got block={block}, order={order}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < 2 * block:
        z = np.zeros(0)
        return np.zeros(0, np.int64), z, z, z
    return _lpc_click_events(x, block, order, th.click_lpc_lambda, 4.0, min_score, 1e-5)


def click_candidates(ch: np.ndarray, sr: int, th: Thresholds = DEFAULT_THRESHOLDS) -> list[tuple[int, float, float]]:
    """Confirmed clicks of every channel (see :func:`click_events`).

    An event is a click when either ``score >= click_score_alone`` and
    ``explained >= click_explained_alone`` (an impulse far above the local
    residual, whatever its size), or ``score >= click_score``,
    ``|amplitude| >= click_amplitude`` and ``explained >= click_explained``
    (a large impulse in loud, dense music). Calibrated on the 35 full real
    tracks (lossy Vorbis and Opus, 2.9 h, both channels): the largest score
    of a clean event explaining >= 0.7 is 44, the largest explained share of
    a clean event with amplitude >= 0.2 is 0.71 (rhythmic single-sample
    percussion spikes of up to 0.31 in ``battle.ogg``); see
    ``docs/AUDIO_QC.md``.

    Args:
        ch: shape (n_channels, n_samples).
        sr: sample rate, Hz (unused: the thresholds are per sample).

    Returns:
        list of ``(channel, sample_index, amplitude)``.
    """
    out = []
    for c in range(ch.shape[0]):
        idx, score, amp, expl = click_events(ch[c], th)
        ok = ((score >= th.click_score_alone) & (expl >= th.click_explained_alone)) | (
            (score >= th.click_score) & (np.abs(amp) >= th.click_amplitude) & (expl >= th.click_explained))
        out += [(c, int(i), float(a)) for i, a in zip(idx[ok], amp[ok])]
    return out


def check_clicks(ch: np.ndarray, sr: int, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Defect]:
    """``click``: impulsive discontinuities (see :func:`click_candidates`)."""
    cands = click_candidates(ch, sr, th)
    if not cands:
        return []
    pos = sorted({k for _, k, _ in cands})
    t0 = pos[0] / sr
    amax = max(abs(a) for _, _, a in cands)
    return [Defect(code="click", severity=Severity.warning,
                   detail=f"{len(pos)} click(s), impulse amplitude up to {amax:.2f} "
                          f"({20 * np.log10(max(amax, 1e-9)):.1f} dBFS)",
                   start_s=round(t0, 4), end_s=round(t0 + 4 / sr, 4))]


def low_band_correlation(ch: np.ndarray, sr: int, cutoff_hz: float = 150.0,
                         means: np.ndarray | None = None) -> float | None:
    """L/R correlation of the band below ``cutoff_hz`` (None if undefined).

    The channels are block-averaged (a cheap decimation to ~1.4 kHz) and
    low-passed (4th-order Butterworth). Bass sits in the centre of nearly
    every mix, so this correlation is strongly positive unless one channel's
    polarity is inverted.

    Args:
        ch: shape (n_channels, n_samples); channels 0 and 1 are L and R.
        means: the block means, shape (n_samples // dec, 2), if already known
            (:class:`audio_qc.pass_stats.PassStats`, taken during the decode).
    """
    if ch.shape[0] < 2:
        return None
    dec = low_band_decimation(sr)
    n = ch.shape[1] // dec
    if n < 64:
        return None
    if means is not None and means.shape == (n, 2):
        lr = means
    elif ch.dtype == np.float32 and dec <= 128:  # the usual case: the same means, compiled
        lr = np.empty((n, 2))
        block_means2(np.ascontiguousarray(ch[:2]), dec, 0, n, lr)
    else:  # other dtypes, or sample rates over 180 kHz (beyond one pairwise block)
        lr = np.stack([ch[i, : n * dec].reshape(n, dec).mean(axis=1) for i in (0, 1)], axis=1).astype(np.float64)
    return _low_band_corr(lr, sr, dec, cutoff_hz)


def _low_band_corr(lr: np.ndarray, sr: int, dec: int, cutoff_hz: float) -> float | None:
    """Correlation of the two low-passed columns of ``lr`` (block means)."""
    sos = butter(4, cutoff_hz, fs=sr / dec, output="sos")
    y = sosfilt(sos, lr, axis=0)
    y -= y.mean(axis=0)
    den = np.sqrt((y[:, 0] ** 2).sum() * (y[:, 1] ** 2).sum())
    if den <= 0:
        return None
    return float((y[:, 0] * y[:, 1]).sum() / den)


def check_stereo(
    ch: np.ndarray, corr: float | None, low_corr: float | None, th: Thresholds = DEFAULT_THRESHOLDS,
    energies: tuple[float, float] | None = None,
) -> list[Defect]:
    """``dual_mono`` and ``polarity_inverted`` for files with >= 2 channels.

    Args:
        ch: shape (n_channels, n_samples).
        corr: full-band L/R correlation (None when undefined).
        low_corr: low-band L/R correlation (:func:`low_band_correlation`).
        energies: (sum (L - R)^2, sum (L + R)^2) if already known
            (:class:`audio_qc.pass_stats.PassStats`); computed from ``ch`` otherwise.

    Polarity is ``warning`` when the low band is anti-correlated below
    ``polarity_low_corr``; ``uncertain`` when the low band is only slightly
    negative (in [-0.3, 0)), or the full band is clearly negative but the low band too weak
    to settle it (spaced-microphone recordings have near-zero correlation of
    their own; the real tracks here have low-band correlation >= +0.11).
    """
    if ch.shape[0] < 2:
        return []
    out = []
    if energies is not None:
        diff, summ = float(energies[0]), float(energies[1])
    else:
        diff, summ = side_energies(np.ascontiguousarray(ch[0], dtype=np.float32),
                                   np.ascontiguousarray(ch[1], dtype=np.float32))
    if summ > 0 and np.sqrt(diff / summ) < th.dual_mono_ratio:
        out.append(Defect(code="dual_mono", severity=Severity.warning,
                          detail=f"left and right are identical (difference {10 * np.log10(max(diff, 1e-30) / summ):.0f} dB)"))
    elif diff > 0 and np.sqrt(summ / diff) < th.dual_mono_ratio:
        out.append(Defect(code="polarity_inverted", severity=Severity.warning,
                          detail="right channel is the inverted left channel (L = -R)"))
    elif low_corr is not None and low_corr < th.polarity_low_corr:
        out.append(Defect(code="polarity_inverted", severity=Severity.warning,
                          detail=f"low-band L/R correlation {low_corr:+.2f}: one channel looks inverted"))
    elif (low_corr is not None and low_corr < 0.0) or (
            corr is not None and corr < -0.1 and (low_corr is None or low_corr < 0.2)):
        lc = "undefined" if low_corr is None else f"{low_corr:+.2f}"
        out.append(Defect(code="polarity_inverted", severity=Severity.uncertain,
                          detail=f"L/R correlation {corr:+.2f}, low band {lc}: inverted polarity "
                                 "or a wide spaced-microphone recording"))
    return out


def spectral_cutoff(ch: np.ndarray, sr: int, th: Thresholds = DEFAULT_THRESHOLDS, frames: int = 48,
                    n_fft: int = 4096) -> float | None:
    """Frequency of the lowest steep spectral edge (a brick-wall cutoff), Hz.

    The spectrum is the mean Hann-windowed power of the ``frames`` loudest of
    up to 4 x ``frames`` evenly spaced frames of ``n_fft`` samples (mono mix,
    mean removed), in dB. An edge at f is where the mean level over [f/1.3, f]
    is more than ``bandwidth_db`` / 2 dB above the mean over [1.3 f, 1.69 f]
    and ``bandwidth_db`` / 3 dB above the mean of everything above 1.3 f: an encoder or resampler low-pass leaves such an edge, a
    naturally dark recording rolls off gradually and does not. Edges are
    searched from 2 kHz up (below that, the gaps between the partials of
    tonal music look like edges).

    Args:
        ch: shape (n_channels, n_samples).

    Returns:
        the edge frequency, the Nyquist frequency when there is no edge, or
        None for silence and audio shorter than ``n_fft``.
    """
    c, n = ch.shape
    if n < n_fft:
        return None
    starts = np.linspace(0, n - n_fft, num=min(frames * 4, max(1, (n - n_fft) // n_fft + 1))).astype(int)
    idx = starts[:, None] + np.arange(n_fft)
    seg = ch[0][idx].astype(np.float64)
    for i in range(1, c):
        seg += ch[i][idx]
    seg -= seg.mean(axis=1, keepdims=True)
    energy = (seg**2).sum(axis=1)
    if not energy.max() > 0:
        return None
    top = seg[np.argsort(-energy)[:frames]]
    spec = (np.abs(np.fft.rfft(top * np.hanning(n_fft), axis=1)) ** 2).mean(axis=0)
    sdb = 10 * np.log10(spec + 1e-30)
    nb = len(sdb)
    ref = sdb[1:].max()
    cs = np.concatenate(([0.0], np.cumsum(sdb)))

    def band_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # mean of sdb[a:b]
        b = np.maximum(b, a + 1)
        return (cs[b] - cs[a]) / (b - a)

    k = np.arange(max(8, int(2000 * n_fft / sr)), nb)  # edges from 2 kHz up
    lo = np.maximum(1, (k / 1.3).astype(int))
    hi1 = np.minimum(nb - 1, np.ceil(k * 1.3).astype(int))
    hi2 = np.minimum(nb, np.ceil(k * 1.69).astype(int))
    below = band_mean(lo, k + 1)
    next_band = band_mean(hi1, hi2)
    rest = band_mean(hi1, np.full_like(hi1, nb))
    ok = ((hi1 < nb - 8) & (below - next_band > th.bandwidth_db / 2)
          & (below - rest > th.bandwidth_db / 3) & (below > ref - 2 * th.bandwidth_db))
    if not ok.any():
        return sr / 2
    idx = np.flatnonzero(ok)
    run_end = idx[0]
    while run_end + 1 < len(ok) and ok[run_end + 1]:
        run_end += 1
    drop = (below - next_band)[idx[0] : run_end + 1]
    best = idx[0] + int(np.argmax(drop))
    # the steepest drop sits between the two bands: report the band edge
    return float(k[best] * 1.15 * sr / n_fft)


def expected_cutoff_hz(sr: int, codec: str | None, lossy: bool) -> float:
    """Cutoff that the sample rate and codec explain, Hz: the Nyquist
    frequency, capped at 15 kHz for lossy codecs (whose encoders low-pass at
    15-20 kHz) and at 20 kHz for lossless ones (the audible band)."""
    nyq = sr / 2
    return min(nyq, 15000.0 if lossy else 20000.0)


def check_bandwidth(cutoff: float | None, sr: int, codec: str | None, lossy: bool, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Defect]:
    """``bandwidth_limited`` when the cutoff is below ``bandwidth_fraction``
    of :func:`expected_cutoff_hz`."""
    if cutoff is None:
        return []
    exp = expected_cutoff_hz(sr, codec, lossy)
    if cutoff < th.bandwidth_fraction * exp:
        return [Defect(code="bandwidth_limited", severity=Severity.warning,
                       detail=f"spectrum stops at {cutoff / 1000:.1f} kHz; {sr / 1000:g} kHz "
                              f"{codec or 'audio'} explains up to {exp / 1000:.1f} kHz")]
    return []
