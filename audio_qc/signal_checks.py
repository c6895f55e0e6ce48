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
factor: runs of identical samples at the peak level), ffmpeg ``silencedetect``
(digital-silence runs), Essentia ``ClickDetector`` / ``DiscontinuityDetector``
(clicks as outliers of a linear-prediction residual; candidates come from a
cheap high-passed residual, tuned to flag no real track).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d, median_filter
from scipy.linalg import solve_toeplitz
from scipy.signal import butter, lfilter, sosfilt

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
    #: Click: |high-passed residual| over the local robust level by this factor.
    click_ratio: float = 30.0
    #: ... and above this absolute residual level (linear) ...
    click_floor: float = 0.02
    #: ... confirmed by standing this many times above the residual 2-9 blocks away ...
    click_isolation: float = 100.0
    #: ... or (for the strongest candidates per channel) ...
    click_max_candidates: int = 200
    #: ... by an LPC prediction error this many times its median.
    click_lpc_ratio: float = 200.0
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


def check_gaps(ch: np.ndarray, sr: int, block_lufs: np.ndarray, th: Thresholds = DEFAULT_THRESHOLDS,
               block: int = 256) -> list[Defect]:
    """``gap``: runs of digital silence (>= ``gap_min_s``) inside the music.

    A run counts when every channel stays within ``gap_level`` and the 100 ms
    blocks just before and just after it are louder than ``gap_context_lufs``
    (a dropout, not a pause at a section end or a fade). Candidate runs are
    found on ``block``-sample block maxima, then their edges are refined to
    the sample.

    Args:
        ch: shape (n_channels, n_samples).
        block_lufs: 100 ms loudness from :func:`block_loudness`.
    """
    c, n = ch.shape
    nb = n // block
    need = int(th.gap_min_s * sr)
    if nb == 0 or need <= 0:
        return []
    bmax = np.abs(ch[:, : nb * block].reshape(c, nb, block)).max(axis=2).max(axis=0)
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
    idx = np.flatnonzero((x >= thr) | (x <= -thr))
    if len(idx) < min_run:
        return 0, peak
    v = x[idx]
    same = (np.diff(idx) == 1) & (v[1:] == v[:-1])
    s, e = _runs(same)
    return int(np.sum((e - s + 1) >= min_run)), peak


def check_clipping(ch: np.ndarray, peaks: np.ndarray, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Defect]:
    """``clipping``: plateaus of >= ``clip_run`` identical samples at the peak.

    At full scale (peak >= -0.01 dBFS) this is clipping; below it, audio that
    was clipped and then attenuated (the plateau level is reported). Lossy
    decodes of clipped masters have no flat tops and are not caught (their
    overs above 0 dBFS are normal, see the module docstring).

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
    if total < th.clip_min_runs:
        return []
    lvl = max(levels)
    ldb = 20 * np.log10(lvl)
    kind = "at full scale" if ldb >= -0.01 else f"then attenuated (plateaus at {ldb:.2f} dBFS)"
    return [Defect(code="clipping", severity=Severity.warning,
                   detail=f"clipped {kind}: {total} flat runs of >= {th.clip_run} samples")]


def _residual(x: np.ndarray) -> np.ndarray:
    """Third difference x[n+3] - 3x[n+2] + 3x[n+1] - x[n] (float32)."""
    d = np.subtract(x[3:], x[:-3])
    t = np.subtract(x[2:-1], x[1:-2])
    t *= 3.0
    d -= t
    return d


def lpc_click_score(x: np.ndarray, k: int, order: int = 24, half: int = 512) -> float:
    """Linear-prediction error at sample ``k`` over the window's median error.

    An order-``order`` predictor is fitted (autocorrelation method, Hann
    window) on ``x[k-half : k+half]`` with the 17 samples around ``k`` zeroed,
    so a click does not bias the fit. Band-limited music, codec ringing
    included, is predictable; a click's broadband impulse is not.

    Args:
        x: one channel, shape (n_samples,).
        k: sample index of the candidate.

    Returns:
        max |prediction error| within +-2 samples of ``k`` divided by the
        median |prediction error| of the window (0 when undefined).

    Source: the LPC-residual click detection of Essentia ``ClickDetector``
    (after Vaseghi, "Advanced Digital Signal Processing and Noise Reduction").
    """
    a0, a1 = max(0, k - half), min(len(x), k + half)
    w = x[a0:a1].astype(np.float64)
    c = k - a0
    if len(w) <= 4 * order or not 2 <= c < len(w) - 2:
        return 0.0
    fit = w.copy()
    fit[max(0, c - 8) : c + 9] = 0.0
    fit *= np.hanning(len(fit))
    r = np.correlate(fit, fit, "full")[len(fit) - 1 : len(fit) + order]
    if not r[0] > 0:
        return 0.0
    r[0] *= 1.0001  # white-noise correction keeps the system well conditioned
    try:
        a = solve_toeplitz(r[:order], r[1 : order + 1])
    except (np.linalg.LinAlgError, ValueError):
        return 0.0
    e = lfilter(np.concatenate(([1.0], -a)), [1.0], w)[order:]
    c -= order
    med = float(np.median(np.abs(e)))
    if not med > 0 or c < 2:
        return 0.0
    return float(np.abs(e[c - 2 : c + 3]).max() / med)


def click_candidates(ch: np.ndarray, sr: int, th: Thresholds = DEFAULT_THRESHOLDS,
                     block: int = 256) -> list[tuple[int, float, float]]:
    """Impulsive discontinuities ("clicks"), per sample position.

    Two stages:

    1. Candidates: the residual is the third difference of each channel (a
       high-pass that keeps a click's broadband impulse and attenuates music);
       a block of ``block`` samples is a candidate when its largest |residual|
       exceeds ``click_floor`` and ``click_ratio`` times the local level (the
       median over 17 neighbouring blocks of the block RMS).
    2. Confirmation, either of: the block peak is ``click_isolation`` times the
       largest residual 2-9 blocks away on either side (codec artefacts come
       in clusters, a click stands alone); or, for the ``click_max_candidates``
       strongest candidates per channel, :func:`lpc_click_score` reaches
       ``click_lpc_ratio`` (codec ringing is band-limited and predictable, a
       click is not). Lossy codecs leave impulsive residual artefacts in every
       real track: stage 1 alone flags 33 of the 36. Calibrated on the full
       real tracks, whose largest isolation is 82 and largest LPC score 167.

    Args:
        ch: shape (n_channels, n_samples).

    Returns:
        list of ``(sample_index, candidate ratio, isolation or LPC score)`` of
        confirmed clicks.
    """
    out = []
    for c in range(ch.shape[0]):
        d = _residual(ch[c])
        nb = len(d) // block
        if nb < 3:
            continue
        db = d[: nb * block].reshape(nb, block)
        peak = np.maximum(db.max(axis=1), -db.min(axis=1))
        rms = np.sqrt(np.einsum("ij,ij->i", db, db) / block)
        local = median_filter(rms, size=17, mode="nearest")
        ratio = peak / np.maximum(local, 1e-9)
        cand = np.flatnonzero((ratio > th.click_ratio) & (peak > th.click_floor))
        if len(cand) == 0:
            continue
        pad = np.concatenate((np.zeros(9, peak.dtype), peak, np.zeros(9, peak.dtype)))
        for i, b in enumerate(cand[np.argsort(-ratio[cand])]):
            # the residual peak sits 1-2 samples after the impulse
            k = int(b) * block + int(np.argmax(np.abs(db[b]))) + 1
            neigh = max(float(pad[b : b + 8].max()), float(pad[b + 11 : b + 19].max()))
            iso = float(peak[b]) / max(neigh, 1e-9)
            if iso >= th.click_isolation:
                out.append((k, float(ratio[b]), iso))
            elif i < th.click_max_candidates:
                score = lpc_click_score(ch[c], k)
                if score >= th.click_lpc_ratio:
                    out.append((k, float(ratio[b]), score))
    return out


def check_clicks(ch: np.ndarray, sr: int, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Defect]:
    """``click``: impulsive discontinuities (see :func:`click_candidates`)."""
    cands = click_candidates(ch, sr, th)
    if not cands:
        return []
    pos = sorted({k for k, _, _ in cands})
    t0 = pos[0] / sr
    return [Defect(code="click", severity=Severity.warning,
                   detail=f"{len(pos)} click(s), residual up to {max(r for _, r, _ in cands):.0f}x the local level",
                   start_s=round(t0, 4), end_s=round(t0 + 4 / sr, 4))]


def low_band_correlation(ch: np.ndarray, sr: int, cutoff_hz: float = 150.0) -> float | None:
    """L/R correlation of the band below ``cutoff_hz`` (None if undefined).

    The channels are block-averaged (a cheap decimation to ~1.4 kHz) and
    low-passed (4th-order Butterworth). Bass sits in the centre of nearly
    every mix, so this correlation is strongly positive unless one channel's
    polarity is inverted.

    Args:
        ch: shape (n_channels, n_samples); channels 0 and 1 are L and R.
    """
    if ch.shape[0] < 2:
        return None
    dec = max(1, int(sr // 1400))
    n = ch.shape[1] // dec
    if n < 64:
        return None
    lr = np.stack([ch[i, : n * dec].reshape(n, dec).mean(axis=1) for i in (0, 1)], axis=1).astype(np.float64)
    sos = butter(4, cutoff_hz, fs=sr / dec, output="sos")
    y = sosfilt(sos, lr, axis=0)
    y -= y.mean(axis=0)
    den = np.sqrt((y[:, 0] ** 2).sum() * (y[:, 1] ** 2).sum())
    if den <= 0:
        return None
    return float((y[:, 0] * y[:, 1]).sum() / den)


def check_stereo(
    ch: np.ndarray, corr: float | None, low_corr: float | None, th: Thresholds = DEFAULT_THRESHOLDS
) -> list[Defect]:
    """``dual_mono`` and ``polarity_inverted`` for files with >= 2 channels.

    Args:
        ch: shape (n_channels, n_samples).
        corr: full-band L/R correlation (None when undefined).
        low_corr: low-band L/R correlation (:func:`low_band_correlation`).

    Polarity is ``warning`` when the low band is anti-correlated below
    ``polarity_low_corr``; ``uncertain`` when the low band is only slightly
    negative (in [-0.3, 0)), or the full band is clearly negative but the low band too weak
    to settle it (spaced-microphone recordings have near-zero correlation of
    their own; the real tracks here have low-band correlation >= +0.11).
    """
    if ch.shape[0] < 2:
        return []
    out = []
    l, r = ch[0], ch[1]
    d = l - r
    m = l + r
    diff = float(np.dot(d, d))
    summ = float(np.dot(m, m))
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
