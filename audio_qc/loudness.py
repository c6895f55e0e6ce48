"""Loudness and peak measurement per ITU-R BS.1770-4 and EBU R128 (numpy/scipy).

Implements, vectorised over whole files:

* K-weighting (BS.1770-4 Annex 1): the high-shelf "pre-filter" and the RLB
  high-pass, designed for any sample rate from their analogue prototypes
  (the same bilinear design libebur128 uses), run with :func:`scipy.signal.sosfilt`;
* channel weights G_i (1.0 for L, R, C; 1.41 for surrounds; 0 for LFE);
* momentary (400 ms) and short-term (3 s) loudness, evaluated every 10 ms;
* gated integrated loudness (BS.1770-4 §2: 400 ms blocks with 75 % overlap,
  absolute gate -70 LUFS, relative gate -10 LU);
* loudness range (EBU Tech 3342: short-term values every 100 ms, absolute gate
  -70 LUFS, relative gate -20 LU, LRA = 95th - 10th percentile);
* true peak (BS.1770-4 Annex 2: 4x polyphase interpolation with the 48-tap
  filter of the Annex; 2x at 96 kHz and up, none at 192 kHz and up).

Undefined values are ``None`` (silence, audio shorter than one gating block),
never -inf or NaN.

Sources: ITU-R BS.1770-4 (10/2015); EBU R128 (2020), EBU Tech 3341 (2016),
EBU Tech 3342 (2016); libebur128 (filter design at arbitrary sample rates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import sosfilt

#: Absolute gate of BS.1770-4 and Tech 3342, LUFS.
ABSOLUTE_GATE_LUFS = -70.0
#: Relative gate of the integrated loudness, LU below the abs-gated mean.
RELATIVE_GATE_LU = -10.0
#: Relative gate of the loudness range (Tech 3342), LU.
LRA_RELATIVE_GATE_LU = -20.0
#: Resolution of the sub-blocks from which all windows are built, seconds.
SUB_BLOCK_S = 0.01

#: BS.1770-4 Annex 2, Table 1: the 48-tap interpolation filter as 4 phases of 12.
TRUE_PEAK_PHASES = np.array(
    [
        [0.0017089843750, 0.0109863281250, -0.0196533203125, 0.0332031250000,
         -0.0594482421875, 0.1373291015625, 0.9721679687500, -0.1022949218750,
         0.0476074218750, -0.0266113281250, 0.0148925781250, -0.0083007812500],
        [-0.0291748046875, 0.0292968750000, -0.0517578125000, 0.0891113281250,
         -0.1665039062500, 0.4650878906250, 0.7797851562500, -0.2003173828125,
         0.1015625000000, -0.0582275390625, 0.0330810546875, -0.0189208984375],
        [-0.0189208984375, 0.0330810546875, -0.0582275390625, 0.1015625000000,
         -0.2003173828125, 0.7797851562500, 0.4650878906250, -0.1665039062500,
         0.0891113281250, -0.0517578125000, 0.0292968750000, -0.0291748046875],
        [-0.0083007812500, 0.0148925781250, -0.0266113281250, 0.0476074218750,
         -0.1022949218750, 0.9721679687500, 0.1373291015625, -0.0594482421875,
         0.0332031250000, -0.0196533203125, 0.0109863281250, 0.0017089843750],
    ],
    dtype=np.float64,
)


def k_weighting_sos(sample_rate: float) -> np.ndarray:
    """Second-order sections of the BS.1770-4 K-weighting filter.

    Args:
        sample_rate: Hz, > 0.

    Returns:
        float64 array of shape (2, 6) for :func:`scipy.signal.sosfilt`: the
        high-shelf pre-filter (+4 dB above ~1.7 kHz), then the RLB high-pass
        (~38 Hz). At 48 kHz it equals the coefficients printed in BS.1770-4.

    Raises:
        ValueError: if ``sample_rate`` is not positive.

    Source: BS.1770-4 Annex 1; analogue-prototype design as in libebur128.
    """
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / sample_rate)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = [
        (vh + vb * k / q + k * k) / a0,
        2.0 * (k * k - vh) / a0,
        (vh - vb * k / q + k * k) / a0,
        1.0,
        2.0 * (k * k - 1.0) / a0,
        (1.0 - k / q + k * k) / a0,
    ]
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / sample_rate)
    a0 = 1.0 + k / q + k * k
    highpass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf, highpass], dtype=np.float64)


def channel_weights(n_channels: int) -> np.ndarray:
    """BS.1770-4 channel weights G_i for a channel count (SMPTE order).

    1-4 channels: all 1.0. 5 channels (L R C Ls Rs): surrounds 1.41.
    6 channels (L R C LFE Ls Rs): LFE 0, surrounds 1.41. More: 1.0 each.

    Raises:
        ValueError: if ``n_channels`` < 1.
    """
    if n_channels < 1:
        raise ValueError(f"n_channels must be >= 1, got {n_channels}")
    w = np.ones(n_channels)
    if n_channels == 5:
        w[3:5] = 1.41
    elif n_channels == 6:
        w[3] = 0.0
        w[4:6] = 1.41
    return w


def _lufs(power: np.ndarray | float) -> np.ndarray:
    """-0.691 + 10 log10(power); -inf for 0 (callers map to None)."""
    with np.errstate(divide="ignore"):
        return -0.691 + 10.0 * np.log10(power)


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


@dataclass
class LoudnessResult:
    """Loudness of one programme (all values None where undefined).

    Attributes:
        integrated_lufs: gated integrated loudness, LUFS.
        loudness_range_lu: EBU Tech 3342 LRA, LU.
        max_momentary_lufs: largest 400 ms loudness (10 ms hop), LUFS.
        max_short_term_lufs: largest 3 s loudness (10 ms hop), LUFS.
        momentary_lufs: 400 ms loudness every 100 ms, shape (n_blocks,), float64,
            -inf for digital silence (kept internal: silence/level checks).
        block_hop_s: hop of ``momentary_lufs``, seconds (0.1).
    """

    integrated_lufs: float | None = None
    loudness_range_lu: float | None = None
    max_momentary_lufs: float | None = None
    max_short_term_lufs: float | None = None
    momentary_lufs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    block_hop_s: float = 0.1


def _window_power(csum: np.ndarray, bounds: np.ndarray, width: int, step: int) -> np.ndarray:
    """Mean power of windows of ``width`` sub-blocks every ``step`` sub-blocks."""
    n_sub = len(bounds) - 1
    if n_sub < width:
        return np.zeros(0)
    starts = np.arange(0, n_sub - width + 1, step)
    energy = csum[starts + width] - csum[starts]
    samples = bounds[starts + width] - bounds[starts]
    return np.maximum(energy, 0.0) / samples


def subblock_power(x: np.ndarray, sample_rate: float, channel_major: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Channel-weighted K-weighted energy per 10 ms sub-block.

    Args:
        x: samples, shape (n_samples, n_channels) (or (n_channels, n_samples)
            with ``channel_major=True``, the fast layout), float, full scale 1.0.
        sample_rate: Hz.

    Returns:
        ``(csum, bounds)``: ``csum`` float64 shape (n_sub + 1,), the cumulative
        sum of sum_i G_i y_i^2 over sub-blocks (csum[0] = 0); ``bounds`` int64
        shape (n_sub + 1,), sample index of each sub-block boundary. The
        incomplete last sub-block is dropped.
    """
    ch = x if channel_major else x.T
    c, n = ch.shape
    sub = sample_rate * SUB_BLOCK_S
    n_sub = int(n // sub)
    bounds = np.round(np.arange(n_sub + 1) * sub).astype(np.int64)
    if n_sub == 0:
        return np.zeros(1), bounds
    sos = k_weighting_sos(sample_rate).astype(np.float32)
    w = channel_weights(c)
    total = np.zeros(n_sub)
    end = int(bounds[-1])
    for i in range(c):
        if w[i] == 0.0:
            continue
        y = sosfilt(sos, np.ascontiguousarray(ch[i, :end], dtype=np.float32))
        np.square(y, out=y)
        if sub == int(sub):  # equal sub-blocks: a reshaped (pairwise) sum is faster than reduceat
            total += w[i] * y.reshape(n_sub, int(sub)).sum(axis=1).astype(np.float64)
        else:
            total += w[i] * np.add.reduceat(y, bounds[:-1], dtype=np.float64)
    csum = np.concatenate(([0.0], np.cumsum(total)))
    return csum, bounds


def measure_loudness(x: np.ndarray, sample_rate: float) -> LoudnessResult:
    """Integrated loudness, LRA and max momentary / short-term loudness.

    Args:
        x: samples, shape (n_samples, n_channels) or (n_samples,), float,
            full scale 1.0.
        sample_rate: Hz.

    Returns:
        :class:`LoudnessResult`. Audio shorter than 400 ms has no gating block
        and gets ``None`` everywhere; shorter than 3 s has no short-term value
        and no LRA; silence gives ``None`` integrated loudness.

    Raises:
        ValueError: on a non-finite sample or a bad shape.

    Source: BS.1770-4 §2 (gating), EBU Tech 3341 (M, S), EBU Tech 3342 (LRA).
    """
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n_samples, n_channels), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinity")
    csum, bounds = subblock_power(x, sample_rate)
    return measure_loudness_from_power(csum, bounds)


def measure_loudness_from_power(csum: np.ndarray, bounds: np.ndarray) -> LoudnessResult:
    """:func:`measure_loudness` from the output of :func:`subblock_power`."""
    res = LoudnessResult()
    mom = _window_power(csum, bounds, 40, 1)
    if len(mom) == 0:
        return res
    res.max_momentary_lufs = _finite_or_none(float(_lufs(mom.max())))
    blocks = mom[::10]
    res.momentary_lufs = _lufs(blocks)
    lb = res.momentary_lufs
    above_abs = blocks[lb > ABSOLUTE_GATE_LUFS]
    if len(above_abs):
        rel_gate = float(_lufs(above_abs.mean())) + RELATIVE_GATE_LU
        gated = above_abs[_lufs(above_abs) > rel_gate]
        if len(gated):
            res.integrated_lufs = _finite_or_none(float(_lufs(gated.mean())))
    st = _window_power(csum, bounds, 300, 1)
    if len(st):
        res.max_short_term_lufs = _finite_or_none(float(_lufs(st.max())))
        st_l = _lufs(st[::10])
        st_p = st[::10][st_l > ABSOLUTE_GATE_LUFS]
        if len(st_p):
            rel = float(_lufs(st_p.mean())) + LRA_RELATIVE_GATE_LU
            kept = _lufs(st_p)
            kept = kept[kept > rel]
            if len(kept):
                lo, hi = np.percentile(kept, [10.0, 95.0])
                res.loudness_range_lu = _finite_or_none(float(hi - lo))
    return res


def _oversampling_phases(sample_rate: float) -> np.ndarray:
    """Interpolation phases used at a sample rate (BS.1770-4 Annex 2 note)."""
    if sample_rate >= 192000:
        return TRUE_PEAK_PHASES[:1] * 0.0  # no oversampling: phase handled by sample peak
    if sample_rate >= 96000:
        return TRUE_PEAK_PHASES[[0, 2]]
    return TRUE_PEAK_PHASES


def true_peak_channel(x: np.ndarray, sample_rate: float, block: int = 64) -> float:
    """True peak of one channel, linear (full scale 1.0).

    The 4x polyphase interpolation of BS.1770-4 Annex 2 is evaluated only
    where it can change the result: blocks are visited in decreasing order of
    their local sample maximum, and the search stops once a block's bound
    ``sum|h_p| * max|x|`` (the most any phase can reach there) is below the
    largest interpolated value found. The result equals full oversampling.

    Args:
        x: samples, shape (n_samples,), float.
        sample_rate: Hz (4x below 96 kHz, 2x below 192 kHz, 1x above).
        block: samples per pruning block.

    Returns:
        max(|sample peak|, |interpolated peak|), linear, >= 0.

    Source: ITU-R BS.1770-4 Annex 2.
    """
    x = np.asarray(x)
    n = len(x)
    if n == 0:
        return 0.0
    sample_peak = float(np.max(np.abs(x)))
    phases = _oversampling_phases(sample_rate)
    if sample_peak == 0.0 or not np.any(phases):
        return sample_peak
    taps = phases.shape[1]
    n_blocks = (n + taps - 1 + block - 1) // block
    xp = np.zeros((n_blocks + 1) * block + taps, dtype=np.float32)
    xp[taps - 1 : taps - 1 + n] = x
    ab = np.abs(xp[: (n_blocks + 1) * block]).reshape(n_blocks + 1, block).max(axis=1)
    bound_blocks = np.maximum(ab[:-1], ab[1:])
    l1 = float(np.abs(phases).sum(axis=1).max())
    # the result is at least the sample peak: blocks that cannot beat it are skipped
    cand = np.flatnonzero(l1 * bound_blocks > sample_peak)
    order = cand[np.argsort(-bound_blocks[cand], kind="stable")]
    best = 0.0
    chunk = 256
    span = np.arange(block + taps - 1)
    for i in range(0, len(order), chunk):
        sel = order[i : i + chunk]
        if len(sel) == 0:
            break
        if l1 * float(bound_blocks[sel[0]]) <= best:
            break
        w = xp[(sel * block)[:, None] + span].astype(np.float64)
        for h in phases:
            y = np.zeros((len(sel), block))
            for j in range(taps):
                y += h[j] * w[:, taps - 1 - j : taps - 1 - j + block]
            best = max(best, float(np.abs(y).max()))
    return max(best, sample_peak)


def true_peak(x: np.ndarray, sample_rate: float) -> np.ndarray:
    """True peak per channel, linear; ``x`` shape (n_samples, n_channels).

    Returns float64 array of shape (n_channels,). See :func:`true_peak_channel`.
    """
    if x.ndim == 1:
        x = x[:, None]
    return np.array([true_peak_channel(x[:, c], sample_rate) for c in range(x.shape[1])])


def db(linear: float) -> float | None:
    """20 log10(linear) in dB, or ``None`` for 0 (undefined)."""
    if not linear > 0 or not math.isfinite(linear):
        return None
    return 20.0 * math.log10(linear)
