"""Statistics for the signal checks, gathered while the decoded audio is in cache.

:class:`audio_qc.loudness.AnalysisPass` writes each decoded chunk into the
channel-major copy that the signal checks read. Every extra full pass over
that copy afterwards costs ~7 ms per channel of a 5-minute track in memory
traffic alone (56 MB per channel, ~8 GB/s here), so the statistics that do
not depend on the whole file are taken right after each chunk is written,
from the part of the copy that is still in cache:

* the largest |x| of every 64-sample block of each channel (the pruning bound
  of :func:`audio_qc.loudness.true_peak_channel`; the 256-sample block maxima
  of :func:`audio_qc.signal_checks.check_gaps` are maxima of four of them);
* the means of the ``dec``-sample blocks of channels 0 and 1 that
  :func:`audio_qc.signal_checks.low_band_correlation` low-passes;
* sum (L - R)^2 and sum (L + R)^2 for :func:`audio_qc.signal_checks.check_stereo`.

Each value equals what the check computes from the finished copy (block
maxima and means bit for bit; the two float64 sums to rounding, as they are
summed chunk by chunk). Blocks are completed as samples arrive, so any chunk
sizes give the same result.

Sources: ITU-R BS.1770-4 Annex 2 (the true-peak bound is
:func:`audio_qc.loudness.true_peak_channel`'s); the checks' own modules.
"""

from __future__ import annotations

import numba as nb
import numpy as np

#: Samples per true-peak pruning block (:func:`audio_qc.loudness.true_peak_channel`'s default).
TP_BLOCK = 64
_ABS = np.int32(0x7FFFFFFF)


def low_band_decimation(sample_rate: float) -> int:
    """Block length of :func:`audio_qc.signal_checks.low_band_correlation`'s
    decimation (to ~1.4 kHz), samples."""
    return max(1, int(sample_rate // 1400))


@nb.njit(nogil=True)
def _block_absmax_bits(ch, n, nb_from, nb_to, out):  # pragma: no cover - compiled
    """out[c, b] = max |ch[c, 64 b : min(64 b + 64, n)]| as int32 bit
    patterns (sign cleared) for blocks nb_from <= b < nb_to (the last may be
    partial; samples from ``n`` on are not read)."""
    c = ch.shape[0]
    for k in range(c):
        row = ch[k].view(np.int32)
        for b in range(nb_from, nb_to):
            s0 = b * 64
            seg = row[s0 : min(n, s0 + 64)]
            m = np.int32(0)
            for i in range(seg.shape[0]):
                v = seg[i] & _ABS
                m = v if v > m else m
            out[k, b] = m


@nb.njit(nogil=True)
def _pairwise_sum32(a, s0, n):  # pragma: no cover - compiled
    """sum(a[s0 : s0 + n]) in float32 in numpy's pairwise order for n <= 128
    (``FLOAT_pairwise_sum``: 8 accumulators, a fixed tree, then the rest in
    sequence), so the result equals ``a[s0:s0 + n].sum()`` bit for bit."""
    if n < 8:
        res = np.float32(0.0)
        for i in range(n):
            res += a[s0 + i]
        return res
    r0, r1, r2, r3 = a[s0], a[s0 + 1], a[s0 + 2], a[s0 + 3]
    r4, r5, r6, r7 = a[s0 + 4], a[s0 + 5], a[s0 + 6], a[s0 + 7]
    i = 8
    top = n - (n % 8)
    while i < top:
        j = s0 + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[s0 + i]
        i += 1
    return res


@nb.njit(nogil=True)
def block_means2(ch, dec, j_from, j_to, out):  # pragma: no cover - compiled
    """out[j, c] = mean of ch[c, j dec : (j + 1) dec] for c in (0, 1) and
    j_from <= j < j_to, as float64 holding the float32 mean: equal bit for
    bit to ``ch[c, :n * dec].reshape(n, dec).mean(axis=1)`` (float32
    pairwise sum, float32 division) for ``dec <= 128``."""
    d = np.float32(dec)
    for c in range(2):
        row = ch[c]
        for j in range(j_from, j_to):
            out[j, c] = np.float64(_pairwise_sum32(row, j * dec, dec) / d)


@nb.njit(nogil=True, fastmath={"reassoc", "contract"})
def side_energies(l, r):  # pragma: no cover - compiled
    """(sum (l - r)^2, sum (l + r)^2) in float64, one pass, no temporaries."""
    d2 = 0.0
    m2 = 0.0
    for i in range(l.shape[0]):
        a = np.float64(l[i])
        b = np.float64(r[i])
        d2 += (a - b) * (a - b)
        m2 += (a + b) * (a + b)
    return d2, m2


class PassStats:
    """The statistics above, fed with the channel-major copy as it grows.

    Args:
        n_channels: channel count (>= 1).
        sample_rate: Hz (> 0), sets the low-band block length.
        capacity: samples per channel expected (grown by :meth:`grow`).

    Raises:
        ValueError: for a channel count < 1 or a non-positive sample rate.
    """

    def __init__(self, n_channels: int, sample_rate: float, capacity: int) -> None:
        if n_channels < 1 or not sample_rate > 0:
            raise ValueError(f"need n_channels >= 1 and sample_rate > 0, got {n_channels}, {sample_rate}")
        self.n_channels = n_channels
        self.dec = low_band_decimation(sample_rate)
        self.stereo = n_channels >= 2
        self.lowband = self.stereo and self.dec <= 128
        self.n_done = 0  # samples per channel seen by update()
        self.b64_done = 0  # complete 64-sample blocks done
        self.dec_done = 0  # complete low-band blocks done
        self.side = np.zeros(2)
        self.bmax_bits = np.zeros((n_channels, 0), dtype=np.int32)
        self.means = np.zeros((0, 2))
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` samples per channel (keeps what is done)."""
        nb64 = -(-max(capacity, 0) // TP_BLOCK)
        if nb64 > self.bmax_bits.shape[1]:
            b = np.zeros((self.n_channels, nb64), dtype=np.int32)
            b[:, : self.bmax_bits.shape[1]] = self.bmax_bits
            self.bmax_bits = b
        nd = max(capacity, 0) // self.dec
        if self.lowband and nd > self.means.shape[0]:
            m = np.zeros((nd, 2))
            m[: self.means.shape[0]] = self.means
            self.means = m

    def update(self, channels: np.ndarray, n: int) -> None:
        """Take the statistics of ``channels[:, n_done:n]`` (float32,
        C-contiguous, shape (n_channels, >= n)); the caller wrote those
        samples just before."""
        self.grow(n)
        b_to = n // TP_BLOCK
        if b_to > self.b64_done:
            _block_absmax_bits(channels, n, self.b64_done, b_to, self.bmax_bits)
            self.b64_done = b_to
        if self.lowband:
            d_to = n // self.dec
            if d_to > self.dec_done:
                block_means2(channels, self.dec, self.dec_done, d_to, self.means)
                self.dec_done = d_to
        if self.stereo and n > self.n_done:
            d2, m2 = side_energies(channels[0, self.n_done : n], channels[1, self.n_done : n])
            self.side[0] += d2
            self.side[1] += m2
        self.n_done = n

    def finish(self, channels: np.ndarray, n: int) -> None:
        """Complete the last, partial 64-sample block once all ``n`` samples
        per channel are in (call after the last :meth:`update`)."""
        self.update(channels, n)
        nb64 = -(-n // TP_BLOCK)
        if nb64 > self.b64_done:
            _block_absmax_bits(channels, n, self.b64_done, nb64, self.bmax_bits)
        self.bmax_bits = self.bmax_bits[:, :nb64]
        if self.lowband:
            self.means = self.means[: n // self.dec]

    def gap_block_max(self, block: int = 256) -> np.ndarray:
        """Max |x| over all channels of each whole ``block``-sample block,
        float32 shape (n // block,), ``block`` a multiple of 64 (equals
        :func:`audio_qc.signal_checks._block_abs_max`)."""
        if block % TP_BLOCK:
            raise ValueError(f"block must be a multiple of {TP_BLOCK}, got {block}")
        k = block // TP_BLOCK
        nbk = self.n_done // block
        bits = self.bmax_bits[:, : nbk * k].reshape(self.n_channels, nbk, k).max(axis=(0, 2))
        return np.ascontiguousarray(bits, dtype=np.int32).view(np.float32)
