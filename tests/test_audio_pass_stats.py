"""The statistics taken during the decode (audio_qc.pass_stats) and the
faster check kernels give exactly what the checks compute from the finished
channel-major copy, whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest

from audio_qc import loudness, signal_checks
from audio_qc.pass_stats import PassStats, block_means2, low_band_decimation


def _music_like(rng: np.random.Generator, n: int, channels: int = 2) -> np.ndarray:
    """Correlated noise with a loud burst and a stretch of digital silence, (n, channels) float32."""
    base = np.cumsum(rng.standard_normal(n)) * 0.002
    x = np.stack([base + 0.05 * rng.standard_normal(n) for _ in range(channels)], axis=1)
    x[n // 3 : n // 3 + 500] *= 8.0
    x[n // 2 : n // 2 + 4000] = 0.0
    return x.astype(np.float32)


def _feed(x: np.ndarray, sr: int, sizes: list[int]) -> loudness.PassResult:
    p = loudness.AnalysisPass(copy_channels=True)
    p.start(x.shape[1], sr, x.shape[0] // 2)  # capacity too small on purpose: the arrays grow
    i = 0
    for m in sizes:
        if i >= len(x):
            break
        p.update(x[i : i + m])
        i += m
    if i < len(x):
        p.update(x[i:])
    return p.result()


@pytest.mark.parametrize("sr", [44100, 48000])
def test_pass_stats_equal_the_checks_computed_afterwards(sr):
    rng = np.random.default_rng(sr)
    n = 200_003
    x = _music_like(rng, n)
    sizes = [int(s) for s in rng.integers(1, 9000, 200)]
    ps = _feed(x, sr, sizes)
    st, ch = ps.stats, ps.channels
    assert st is not None and ch.shape == (2, n)
    # 64-sample block maxima (bit patterns of |x|), the last block partial
    nb64 = -(-n // 64)
    pad = np.zeros((2, nb64 * 64), np.float32)
    pad[:, :n] = np.abs(ch)
    want = pad.reshape(2, nb64, 64).max(axis=2)
    assert st.bmax_bits.shape == (2, nb64)
    assert np.array_equal(st.bmax_bits.view(np.float32), want)
    assert np.array_equal(st.gap_block_max(), signal_checks._block_abs_max(ch, 256))
    dec = low_band_decimation(sr)
    nd = n // dec
    ref = np.stack([ch[i, : nd * dec].reshape(nd, dec).mean(axis=1) for i in (0, 1)], axis=1).astype(np.float64)
    assert np.array_equal(st.means, ref)  # bit for bit
    d2, m2 = signal_checks._side_energies(ch[0], ch[1])
    assert st.side[0] == pytest.approx(d2, rel=1e-12) and st.side[1] == pytest.approx(m2, rel=1e-12)
    # the checks give the same answers with and without them
    for i in range(2):
        assert loudness.true_peak_channel(ch[i], sr, block_max_bits=st.bmax_bits[i]) == \
            loudness.true_peak_channel(ch[i], sr)
    assert signal_checks.low_band_correlation(ch, sr, means=st.means) == signal_checks.low_band_correlation(ch, sr)
    blk = signal_checks.block_loudness(ps.csum, ps.bounds)
    got = signal_checks.check_gaps(ch, sr, blk, block_max=st.gap_block_max())
    assert got == signal_checks.check_gaps(ch, sr, blk)
    assert [d.code for d in got] == ["gap"]


def test_pass_stats_mono_has_no_stereo_statistics():
    x = _music_like(np.random.default_rng(1), 30_000, channels=1)
    ps = _feed(x, 48000, [7000])
    assert ps.stats is not None and not ps.stats.stereo and not ps.stats.lowband
    assert ps.stats.bmax_bits.shape == (1, -(-30_000 // 64))
    assert np.array_equal(ps.stats.gap_block_max(), signal_checks._block_abs_max(ps.channels, 256))


def test_pass_stats_bad_arguments():
    with pytest.raises(ValueError):
        PassStats(0, 48000, 10)
    with pytest.raises(ValueError):
        PassStats(2, 0.0, 10)
    with pytest.raises(ValueError):
        PassStats(2, 48000, 1000).gap_block_max(100)


def test_block_means_equal_numpy_for_every_block_length():
    rng = np.random.default_rng(3)
    ch = (rng.standard_normal((2, 20_000)) * 0.3).astype(np.float32)
    for dec in list(range(1, 40)) + [63, 64, 65, 127, 128]:
        n = ch.shape[1] // dec
        out = np.empty((n, 2))
        block_means2(ch, dec, 0, n, out)
        ref = np.stack([ch[i, : n * dec].reshape(n, dec).mean(axis=1) for i in (0, 1)], axis=1).astype(np.float64)
        assert np.array_equal(out, ref), dec


def test_flat_run_count_float32_equals_the_plain_loop():
    rng = np.random.default_rng(4)
    for trial in range(60):
        n = int(rng.integers(1, 3000))
        x = (rng.standard_normal(n) * 0.3).astype(np.float32)
        peak = np.float32(rng.choice([0.5, 0.9, 1.0]))
        # plateaus at the peak of random lengths and signs, some across 64-sample block edges
        for _ in range(int(rng.integers(0, 12))):
            s = int(rng.choice([rng.integers(0, n), 64 * int(rng.integers(0, n // 64 + 1)) - 2]))
            s = min(max(s, 0), n - 1)
            x[s : s + int(rng.integers(1, 7))] = peak * rng.choice([-1, 1])
        if trial % 5 == 0:
            x = np.clip(x * 4, -peak, peak).astype(np.float32)
        pk = float(np.max(np.abs(x)))
        thr = np.float32(pk * (1 - 1e-6))
        want = signal_checks._flat_run_count(x, thr, 3)
        got, _ = signal_checks.flat_runs(x, 3, pk)
        assert got == want, trial
        assert signal_checks.flat_runs(x.astype(np.float64), 3, pk)[0] == signal_checks._flat_run_count(
            x.astype(np.float64), np.float64(pk * (1 - 1e-6)), 3)
