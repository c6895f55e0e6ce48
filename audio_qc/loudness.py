"""Loudness and peak measurement per ITU-R BS.1770-4 and EBU R128 (numpy/scipy).

Implements, vectorised over whole files:

* K-weighting (BS.1770-4 Annex 1): the high-shelf "pre-filter" and the RLB
  high-pass, designed for any sample rate from their analogue prototypes
  (the same bilinear design libebur128 uses), run as two cascaded float64
  biquads (direct form I) in a compiled loop (numba) that also sums the
  energy per 10 ms sub-block, the sample peak, the DC sum and the L/R
  products in the same pass (:func:`analysis_pass`);
* channel weights G_i (1.0 for L, R, C; 1.41 for surrounds; 0 for LFE);
* momentary (400 ms) and short-term (3 s) loudness, evaluated every 10 ms;
* gated integrated loudness (BS.1770-4 §2: 400 ms blocks with 75 % overlap,
  absolute gate -70 LUFS, relative gate -10 LU);
* loudness range (EBU Tech 3342: short-term values every 100 ms, absolute gate
  -70 LUFS, relative gate -20 LU, LRA = 95th - 10th percentile);
* true peak (BS.1770-4 Annex 2: 4x polyphase interpolation with the 48-tap
  filter of the Annex; 2x at 96 kHz and up, none at 192 kHz and up), a
  compiled polyphase kernel evaluated only on blocks that can raise the maximum.

Undefined values are ``None`` (silence, audio shorter than one gating block),
never -inf or NaN.

Sources: ITU-R BS.1770-4 (10/2015); EBU R128 (2020), EBU Tech 3341 (2016),
EBU Tech 3342 (2016); libebur128 (filter design at arbitrary sample rates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from audio_qc.pass_stats import PassStats

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


@nb.njit(nogil=True, fastmath={"contract"})
def _channel_pass(x, out, off, sos, gain, bounds, energy, other, st):  # pragma: no cover - compiled
    """One channel of one chunk: K-weighting, weighted energy per sub-block,
    statistics; resumable across chunks through ``st``.

    x: (m,) float32 chunk (any stride) holding samples off .. off + m - 1;
    out: full-length float32 row receiving the copy at [off, off + m), or size
    0 for none; sos: (2, 6) float64; gain: channel weight G_i; bounds: int64
    sub-block boundaries (global sample indices); energy: float64 per
    sub-block, ``gain * sum(y^2)`` is added when a sub-block completes;
    other: (m,) float32 chunk of the channel to correlate with (size 0: none);
    st: (13,) float64 state: filter memories x1 x2 y1 y2 z1 z2, the open
    sub-block's sum, its index, max, min, sum, sum of squares, sum of x*other.
    Two biquads in direct form I, float64, so each output depends on the
    previous one through a single multiply-add.
    """
    m = x.shape[0]
    b0, b1, b2, a1, a2 = sos[0, 0], sos[0, 1], sos[0, 2], sos[0, 4], sos[0, 5]
    d0, d1, d2, e1, e2 = sos[1, 0], sos[1, 1], sos[1, 2], sos[1, 4], sos[1, 5]
    x1, x2, y1, y2, z1, z2 = st[0], st[1], st[2], st[3], st[4], st[5]
    acc = st[6]
    k = np.int64(st[7])
    mx, mn, s, ss, sx = st[8], st[9], st[10], st[11], st[12]
    copy = out.shape[0] > 0
    cross = other.shape[0] == m
    n_sub = bounds.shape[0] - 1
    never = np.int64(1) << 62
    nxt = bounds[k + 1] - off if k < n_sub else never  # chunk-relative end of the open sub-block
    for i in range(m):
        xi = x[i]
        if copy:
            out[off + i] = xi
        v = np.float64(xi)
        y = (b0 * v + b1 * x1 + b2 * x2 - a2 * y2) - a1 * y1
        z = (d0 * y + d1 * y1 + d2 * y2 - e2 * z2) - e1 * z1
        x2 = x1
        x1 = v
        y2 = y1
        y1 = y
        z2 = z1
        z1 = z
        acc += z * z
        if i + 1 == nxt:
            energy[k] += gain * acc
            acc = 0.0
            k += 1
            nxt = bounds[k + 1] - off if k < n_sub else never
        mx = max(mx, v)
        mn = min(mn, v)
        s += v
        ss += v * v
        if cross:
            sx += v * np.float64(other[i])
    st[0], st[1], st[2], st[3], st[4], st[5] = x1, x2, y1, y2, z1, z2
    st[6] = acc
    st[7] = np.float64(k)
    st[8], st[9], st[10], st[11], st[12] = mx, mn, s, ss, sx


def _bounds(n: int, sample_rate: float) -> np.ndarray:
    sub = sample_rate * SUB_BLOCK_S
    n_sub = int(n // sub)
    return np.round(np.arange(n_sub + 1) * sub).astype(np.int64)


@dataclass
class PassResult:
    """Output of :func:`analysis_pass` (one read of the decoded audio).

    Attributes:
        csum, bounds: as returned by :func:`subblock_power`.
        channels: float32 shape (n_channels, n_samples), channel-major copy of
            the input (None when not requested).
        peak: sample peak per channel, shape (n_channels,), linear.
        dc: mean per channel, shape (n_channels,), linear.
        lr_correlation: Pearson correlation of channels 0 and 1 (None for mono
            or a constant channel).
        finite: False when any sample is NaN or infinite (every other field is
            then meaningless).
        stats: block maxima, low-band block means and side energies taken
            while the copy was written (:class:`audio_qc.pass_stats.PassStats`;
            None without ``channels``).
    """

    csum: np.ndarray
    bounds: np.ndarray
    channels: np.ndarray | None
    peak: np.ndarray
    dc: np.ndarray
    lr_correlation: float | None
    finite: bool
    stats: PassStats | None = None


class AnalysisPass:
    """:func:`analysis_pass` fed chunk by chunk (e.g. straight from a decoder).

    The decoder's small interleaved buffer is read while it is still in
    cache and copied into the channel-major array the signal checks use, so
    the whole interleaved file never exists in memory.

    Args:
        copy_channels: keep the channel-major float32 copy (``PassResult.channels``).

    Example:
        >>> import numpy as np
        >>> p = AnalysisPass()
        >>> p.start(2, 48000, 96000)
        >>> x = np.full((96000, 2), 0.5, dtype=np.float32)
        >>> p.update(x[:1000]); p.update(x[1000:])
        >>> r = p.result()
        >>> r.channels.shape, float(r.peak[0]), r.finite
        ((2, 96000), 0.5, True)
    """

    def __init__(self, copy_channels: bool = True) -> None:
        self.copy_channels = copy_channels
        self.n_ = 0
        self.channels_: np.ndarray | None = None

    def start(self, n_channels: int, sample_rate: float, capacity: int) -> None:
        """Prepare for ``n_channels`` at ``sample_rate`` Hz, with room for
        ``capacity`` samples per channel (grown if more arrive).

        Raises:
            ValueError: for a non-positive sample rate or channel count.
        """
        if n_channels < 1:
            raise ValueError(f"n_channels must be >= 1, got {n_channels}")
        self.sample_rate_ = float(sample_rate)
        self.sos_ = k_weighting_sos(sample_rate)
        self.weights_ = channel_weights(n_channels)
        self.n_ = 0
        self.state_ = np.zeros((n_channels, 13))
        self.state_[:, 8] = -np.inf
        self.state_[:, 9] = np.inf
        self.stats_ = PassStats(n_channels, sample_rate, max(int(capacity), 0)) if self.copy_channels else None
        self._alloc(max(int(capacity), 0))

    def _alloc(self, capacity: int) -> None:
        c = len(self.weights_)
        bounds = _bounds(capacity, self.sample_rate_)
        energy = np.zeros(max(len(bounds) - 1, 0))
        if self.n_:
            energy[: len(self.energy_)] = self.energy_
        self.bounds_, self.energy_ = bounds, energy
        if self.copy_channels:
            out = np.empty((c, capacity), dtype=np.float32)
            if self.n_:
                out[:, : self.n_] = self.channels_[:, : self.n_]
            self.channels_ = out
            self.stats_.grow(capacity)
        self.capacity_ = capacity

    def update(self, chunk: np.ndarray) -> None:
        """Add consecutive samples, shape (m, n_channels), float32 (others
        are converted); the chunk may be a reused buffer."""
        if chunk.ndim != 2 or chunk.shape[1] != len(self.weights_):
            raise ValueError(f"chunk must have shape (m, {len(self.weights_)}), got {chunk.shape}")
        if chunk.dtype != np.float32:
            chunk = chunk.astype(np.float32)
        m = chunk.shape[0]
        if self.n_ + m > self.capacity_:
            self._alloc(max(self.n_ + m, int(self.capacity_ * 1.25)))
        empty = np.zeros(0, dtype=np.float32)
        for i in range(chunk.shape[1]):
            dst = self.channels_[i] if self.copy_channels else empty
            other = chunk[:, 0] if i == 1 else empty
            _channel_pass(chunk[:, i], dst, self.n_, self.sos_, float(self.weights_[i]), self.bounds_,
                          self.energy_, other, self.state_[i])
        self.n_ += m
        if self.stats_ is not None:  # while the chunk just copied is in cache
            self.stats_.update(self.channels_, self.n_)

    def result(self) -> PassResult:
        """The :class:`PassResult` of every sample given so far."""
        n, st = self.n_, self.state_
        c = st.shape[0]
        bounds = _bounds(n, self.sample_rate_)
        energy = self.energy_[: len(bounds) - 1]
        finite = bool(np.isfinite(st[:, 10]).all() and np.isfinite(st[:, 11]).all())
        csum = np.concatenate(([0.0], np.cumsum(np.maximum(energy, 0.0))))
        peak = np.maximum(st[:, 8], -st[:, 9]) if n else np.zeros(c)
        dc = st[:, 10] / n if n else np.zeros(c)
        corr = None
        if c >= 2 and n and finite:
            lm, rm = dc[0], dc[1]
            sll = st[0, 11] - n * lm * lm
            srr = st[1, 11] - n * rm * rm
            slr = st[1, 12] - n * lm * rm
            if sll > 0 and srr > 0:
                corr = max(-1.0, min(1.0, float(slr / math.sqrt(sll * srr))))
        out = None
        if self.copy_channels:
            self.stats_.finish(self.channels_, n)
            out = self.channels_ if n == self.capacity_ else np.ascontiguousarray(self.channels_[:, :n])
        return PassResult(csum, bounds, out, peak, dc, corr, finite, self.stats_)


def analysis_pass(x: np.ndarray, sample_rate: float, channel_major: bool = False,
                  copy_channels: bool = False) -> PassResult:
    """K-weighted sub-block energies, sample peak, DC and L/R correlation in
    one compiled pass per channel.

    Args:
        x: samples, shape (n_samples, n_channels) (or (n_channels, n_samples)
            with ``channel_major=True``), float, full scale 1.0. float32 is
            read in place; other dtypes are converted first.
        sample_rate: Hz, > 0.
        channel_major: layout of ``x``.
        copy_channels: also return the channel-major float32 copy (written in
            the same pass; saves a separate transpose).

    Returns:
        :class:`PassResult`. The K-weighting runs in float64 (two biquads,
        BS.1770-4 Annex 1); sums are float64. See :class:`AnalysisPass` for
        the same pass fed chunk by chunk.

    Raises:
        ValueError: if ``sample_rate`` is not positive or ``x`` is not 2-D.

    Source: BS.1770-4 Annex 1 (K-weighting, channel weights G_i).
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    frames = x.T if channel_major else x
    p = AnalysisPass(copy_channels=copy_channels)
    p.start(frames.shape[1], sample_rate, frames.shape[0])
    p.update(frames)
    return p.result()


def subblock_power(x: np.ndarray, sample_rate: float, channel_major: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Channel-weighted K-weighted energy per 10 ms sub-block.

    Args:
        x: samples, shape (n_samples, n_channels) (or (n_channels, n_samples)
            with ``channel_major=True``), float, full scale 1.0.
        sample_rate: Hz.

    Returns:
        ``(csum, bounds)``: ``csum`` float64 shape (n_sub + 1,), the cumulative
        sum of sum_i G_i y_i^2 over sub-blocks (csum[0] = 0); ``bounds`` int64
        shape (n_sub + 1,), sample index of each sub-block boundary. The
        incomplete last sub-block is dropped.
    """
    r = analysis_pass(x, sample_rate, channel_major=channel_major)
    return r.csum, r.bounds


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


_TAPS = 12
_ABS = np.int32(0x7FFFFFFF)


@nb.njit(nogil=True, fastmath=True)
def _fir12(xs, h, out, n_out):  # pragma: no cover - compiled
    """out[t] = sum_j h[j] * xs[t + 11 - j] for t < n_out (xs holds n_out + 11
    samples). Written out for 12 taps with unsigned indices, so LLVM
    vectorises the loop (no negative-index wraparound, no reduction)."""
    h0, h1, h2, h3, h4, h5 = h[0], h[1], h[2], h[3], h[4], h[5]
    h6, h7, h8, h9, h10, h11 = h[6], h[7], h[8], h[9], h[10], h[11]
    for t in range(n_out):
        u = np.uint64(t)
        out[u] = (h0 * xs[u + 11] + h1 * xs[u + 10] + h2 * xs[u + 9] + h3 * xs[u + 8]
                  + h4 * xs[u + 7] + h5 * xs[u + 6] + h6 * xs[u + 5] + h7 * xs[u + 4]
                  + h8 * xs[u + 3] + h9 * xs[u + 2] + h10 * xs[u + 1] + h11 * xs[u])


@nb.njit(nogil=True)
def _absmax_bits(bits, start, stop):  # pragma: no cover - compiled
    """max |v| over float32 values given as their int32 bit patterns: with the
    sign bit cleared, IEEE-754 order equals integer order, and an integer max
    reduction vectorises where a float one does not (numba 0.68)."""
    best = np.int32(0)
    for i in range(start, stop):
        v = bits[i] & _ABS
        best = v if v > best else best
    return best


@nb.njit(nogil=True)
def _true_peak_kernel(x, phases, block, pre):  # pragma: no cover - compiled
    """max(|x|, |interpolated x|) of one channel; see :func:`true_peak_channel`.

    x: (n,) float32 contiguous, finite; phases: (P, 12) float32; block: output
    samples per pruning block (>= 11); pre: the block maxima of |x| as int32
    bit patterns, shape (ceil(n / block),), or size 0 to compute them here.
    Output m of phase p is sum_j phases[p, j] * x[m - j], m in [0, n + 11)
    (zeros outside x).
    """
    n = x.shape[0]
    n_ph = phases.shape[0]
    taps = _TAPS
    xb = x.view(np.int32)
    nbx = (n + block - 1) // block
    bmi = np.zeros(nbx + 1, dtype=np.int32)  # bm[k + 1]: max |x| over x block k; bm[0] = 0
    if pre.shape[0] == nbx:
        bmi[1:] = pre
    else:
        for k in range(nbx):
            bmi[k + 1] = _absmax_bits(xb, k * block, min(n, (k + 1) * block))
    bm = bmi.view(np.float32)
    kmax = 0
    top = np.int32(0)
    for k in range(nbx):
        if bmi[k + 1] > top:
            top = bmi[k + 1]
            kmax = k
    peak = bm[kmax + 1]
    if top == 0 or n_ph == 0:
        return np.float64(peak)
    l1 = 0.0
    for p in range(n_ph):
        sp = 0.0
        for j in range(taps):
            sp += abs(np.float64(phases[p, j]))
        l1 = max(l1, sp)
    n_ob = (n + taps - 1 + block - 1) // block  # output blocks
    w = np.zeros(block + taps - 1, dtype=np.float32)  # zero-padded window for the edge blocks
    buf = np.zeros(block, dtype=np.float32)
    bufb = buf.view(np.int32)
    best = np.float64(peak)
    # output block k reads x[k*block - 11 : (k+1)*block], inside x blocks k-1 and k
    for step in range(n_ob + 2):
        if step < 2:  # first the two output blocks around the loudest sample: a high bar early
            k = kmax + step
            if k >= n_ob:
                continue
        else:
            k = step - 2
            if k == kmax or k == kmax + 1:
                continue
        bound = l1 * np.float64(max(bm[k], bm[k + 1] if k < nbx else np.float32(0.0)))
        if bound <= best:
            continue
        m0 = k * block
        m1 = min((k + 1) * block, n + taps - 1)
        if m0 >= taps - 1 and m1 <= n:
            xs = x[m0 - (taps - 1) : m1]
        else:  # edge block: x[m0 - 11 : m1] with zeros outside x
            for t in range(m1 - m0 + taps - 1):
                i = m0 - (taps - 1) + t
                w[t] = x[i] if 0 <= i < n else np.float32(0.0)
            xs = w
        for p in range(n_ph):
            _fir12(xs, phases[p], buf, m1 - m0)
            vb = _absmax_bits(bufb, 0, m1 - m0)
            buf[0] = 0.0
            bufb[0] = vb
            v = np.float64(buf[0])
            if v > best:
                best = v
    return best


def true_peak_channel(x: np.ndarray, sample_rate: float, block: int = 64,
                      block_max_bits: np.ndarray | None = None) -> float:
    """True peak of one channel, linear (full scale 1.0).

    The polyphase interpolation of BS.1770-4 Annex 2 (4 phases of 12 taps) is
    evaluated only where it can change the result: output blocks of ``block``
    samples are skipped when their bound ``max_p sum_j |h_pj| * max|x|`` (over
    the 12-sample window of every output in the block, the most any phase can
    reach there) is not above the largest value found so far; the blocks
    around the loudest sample are evaluated first. The result equals full
    oversampling (float32 products, within ~1e-6 relative).

    Args:
        x: samples, shape (n_samples,), float.
        sample_rate: Hz (4x below 96 kHz, 2x below 192 kHz, 1x above).
        block: samples per pruning block (>= 11).
        block_max_bits: max |x| of every ``block``-sample block as int32 bit
            patterns (sign bit cleared), shape (ceil(n_samples / block),), if
            already known (:class:`audio_qc.pass_stats.PassStats`); ignored
            when its length does not match.

    Returns:
        max(|sample peak|, |interpolated peak|), linear, >= 0.

    Raises:
        ValueError: if ``block`` < 11.

    Source: ITU-R BS.1770-4 Annex 2.
    """
    if block < _TAPS - 1:
        raise ValueError(f"block must be >= {_TAPS - 1}, got {block}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        return 0.0
    phases = _oversampling_phases(sample_rate)
    if not np.any(phases):
        phases = phases[:0]
    pre = np.zeros(0, dtype=np.int32) if block_max_bits is None else np.ascontiguousarray(block_max_bits, dtype=np.int32)
    return float(_true_peak_kernel(x, np.ascontiguousarray(phases, dtype=np.float32), int(block), pre))


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
