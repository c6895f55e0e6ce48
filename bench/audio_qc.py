"""Audio-QC speed: full QC of one file (decode included) in x realtime, on
one core, next to ffmpeg's ebur128 filter and libebur128 (pyebur128) with
true peak, in the same run.

Usage: ``.venv/bin/python bench/audio_qc.py [--repeat N] [--track NAME] [--stages]``

Files: a 44.1 kHz stereo Ogg Vorbis track of ``<data_dir>/audio`` (default
``wesnoth/battle.ogg``, 318 s) and a 24-bit FLAC made from it with ffmpeg in a
temporary folder. Each figure is the median of ``--repeat`` runs, as audio
duration / time, both wall clock and CPU time (the machine is shared: CPU time
is the steadier figure), plus the best (smallest) CPU time of the runs; the
process (and its children) is pinned to CPU 0.
Every timed row is run once untimed first (numba kernels compiled, file in the
page cache).

* ``playguard QC (sandboxed)``: :func:`audio_qc.check.check_file`, what
  ``playguard qc`` and the stream worker run per file: the request to the fork
  server, the forked child (resource limits, integrity checks, decode,
  BS.1770-4 loudness, LRA, true peak, every signal check, JSON result), and
  the parent's report (declared-metadata and profile checks, QCReport). CPU
  time = the parent's + the child's (reported by the fork server from
  ``wait4``).
* ``playguard QC (in-process)``: :func:`audio_qc.analyze.analyze_path`, the
  child's work without the fork and the JSON.
* ``ffmpeg ebur128=peak=true``: ``ffmpeg -i F -af ebur128=peak=true -f null -``
  (CPU: the ffmpeg process).
* ``pyebur128 I+LRA+TP (+decode)``: soundfile decode then libebur128 with
  integrated loudness, LRA and true peak.
* ``soundfile decode only``: ``sf.read(F, dtype="float32")``.

``--stages`` also prints the CPU time of each stage of the in-process QC
(integrity, decode + analysis pass, true peak, each signal check), with the
statistics that the analysis pass takes for the checks
(:mod:`audio_qc.pass_stats`) handed to them, as :func:`analyze_path` does.

``--reports OUT.json [--compare BASE.json]`` does not time anything: it
writes the in-process QC report (:func:`audio_qc.analyze.analyze_path`, what
the sandboxed child returns) of every real track, of 24-bit FLAC copies of
three of them, and of every damaged variant of :mod:`audio_qc.corrupt` made
from every stereo real track (seeded, re-made each run), together with the
unrounded values of the signal-check functions (:func:`raw_values`); with
``--compare`` it then lists every difference from a file written the same
way by other code (reports: exact; raw values: 1e-6 relative) and exits 1 if
there is one (``--no-run``: compare an existing ``--reports`` file only). It is how the speed work shows that no QC result changed.
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from audio_qc.analyze import analyze_path, warm_up  # noqa: E402
from audio_qc.check import check_file, last_child_cpu_seconds  # noqa: E402
from stream.config import QCSettings, Settings  # noqa: E402


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(fn, repeat: int, extra_cpu=None) -> tuple[float, float, float]:
    """Median wall time, median CPU time and smallest CPU time of ``fn()``
    over ``repeat`` runs, seconds, after one untimed run. CPU = this process
    + its waited-for children (ffmpeg) + ``extra_cpu()`` (the sandboxed
    child's)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        c0 = time.process_time() + _children_cpu()
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() + _children_cpu() - c0 + (extra_cpu() if extra_cpu else 0.0))
    return statistics.median(walls), statistics.median(cpus), min(cpus)


def stages(path: Path, repeat: int) -> dict[str, float]:
    """Median CPU seconds of each stage of :func:`analyze_path` (same calls)."""
    from audio_qc import integrity, loudness, signal_checks
    from audio_qc.decode import LOSSY_CODECS, decode

    def cpu() -> float:
        return time.process_time() + _children_cpu()

    out: dict[str, list[float]] = {}

    def run(name, fn, *a, **k):
        t = cpu()
        r = fn(*a, **k)
        out.setdefault(name, []).append(cpu() - t)
        return r

    for _ in range(repeat):
        with open(path, "rb") as fh:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # as analyze_path does
            fmt = integrity.sniff_format(data[:16])
            checker = {"ogg": integrity.check_ogg, "flac": integrity.check_flac, "wav": integrity.check_wav}[fmt]
            run(f"integrity ({checker.__name__}, file mapped)", checker, data)
            data.close()
        sink = loudness.AnalysisPass()
        dec = run("decode + K-weighting/peak/DC/corr pass", decode, path, 2**31, check_finite=False, sink=sink)
        ps = sink.result()
        ch, sr = ps.channels, dec.sample_rate
        run("gating, M/S max, LRA", loudness.measure_loudness_from_power, ps.csum, ps.bounds)
        st = ps.stats  # block maxima, low-band means, side energies: taken in the decode pass
        run("true peak (4x polyphase)", lambda: [loudness.true_peak_channel(ch[i], sr, block_max_bits=st.bmax_bits[i])
                                                 for i in range(len(ch))])
        blk = signal_checks.block_loudness(ps.csum, ps.bounds)
        run("signal: check_clipping", signal_checks.check_clipping, ch, ps.peak)
        run("signal: check_gaps", lambda: signal_checks.check_gaps(ch, sr, blk, block_max=st.gap_block_max()))
        run("signal: check_clicks", signal_checks.check_clicks, ch, sr)
        low = run("signal: low_band_correlation",
                  lambda: signal_checks.low_band_correlation(ch, sr, means=st.means if st.lowband else None))
        run("signal: check_stereo", lambda: signal_checks.check_stereo(
            ch, ps.lr_correlation, low, energies=tuple(st.side) if st.stereo else None))
        cut = run("signal: spectral_cutoff", signal_checks.spectral_cutoff, ch, sr)
        signal_checks.check_bandwidth(cut, sr, dec.codec, (dec.codec or "") in LOSSY_CODECS)
        del ch, ps, sink
    return {k: statistics.median(v) for k, v in out.items()}


def pyebur128_run(path: Path) -> None:
    import pyebur128

    x, fs = sf.read(str(path), dtype="float32", always_2d=True)
    m = pyebur128.MeasurementMode
    st = pyebur128.R128State(x.shape[1], fs, m.MODE_I | m.MODE_LRA | m.MODE_TRUE_PEAK)
    st.add_frames(np.ascontiguousarray(x).ravel(), len(x))
    pyebur128.get_loudness_global(st)
    pyebur128.get_loudness_range(st)
    [pyebur128.get_true_peak(st, c) for c in range(x.shape[1])]


def ffmpeg_run(path: Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-af", "ebur128=peak=true",
                    "-f", "null", "-"], check=True, capture_output=True)


def agreement() -> int:
    """Integrated loudness and true peak against libebur128 on every real file."""
    import math

    import pyebur128

    from audio_qc.loudness import measure_loudness, true_peak

    m = pyebur128.MeasurementMode
    worst_i = worst_tp = 0.0
    files = sorted(p for p in Settings().audio_path.rglob("*") if p.suffix in (".ogg", ".opus", ".flac", ".wav"))
    for f in files:
        x, fs = sf.read(str(f), dtype="float32", always_2d=True)
        ours = measure_loudness(x, fs).integrated_lufs
        tp = 20 * math.log10(max(float(true_peak(x, fs).max()), 1e-12))
        st = pyebur128.R128State(x.shape[1], fs, m.MODE_I | m.MODE_TRUE_PEAK)
        st.add_frames(np.ascontiguousarray(x).ravel(), len(x))
        ref = pyebur128.get_loudness_global(st)
        ref_tp = 20 * math.log10(max(max(pyebur128.get_true_peak(st, c) for c in range(x.shape[1])), 1e-12))
        d = None if (ours is None or not math.isfinite(ref)) else ours - ref
        if d is not None:
            worst_i = max(worst_i, abs(d))
        worst_tp = max(worst_tp, abs(tp - ref_tp)) if ref_tp > -70 else worst_tp
        print(f"  {f.name[:34]:34s} ours {ours if ours is None else round(ours, 3)!s:>8} LUFS  "
              f"libebur128 {ref:8.3f}  diff {'-' if d is None else f'{d:+.4f}'}  TP {tp:+.2f} vs {ref_tp:+.2f} dBTP")
    print(f"largest |diff| where libebur128 is finite: {worst_i:.4f} LU; true peak (above -70 dBTP): {worst_tp:.2f} dB")
    return 0


def raw_values(path: Path) -> dict | None:
    """Unrounded outputs of the measurement and signal-check functions on the
    decoded audio of ``path`` (None when it does not decode): loudness, true
    peak, sample peak, DC, correlations, click events, flat runs, amplitude
    pile-up, side energies, gap blocks and spectral cutoff."""
    from audio_qc import loudness, signal_checks
    from audio_qc.decode import DecodeError, ResourceLimit, decode

    sink = loudness.AnalysisPass()
    try:
        dec = decode(path, 2**31, check_finite=False, sink=sink)
    except (DecodeError, ResourceLimit):
        return None
    ps = sink.result()
    if not ps.finite:
        return {"finite": False}
    ch, sr = ps.channels, dec.sample_rate
    st = getattr(ps, "stats", None)  # what analyze_path uses, where the code has it
    lr = loudness.measure_loudness_from_power(ps.csum, ps.bounds)
    out: dict = {
        "loudness": [lr.integrated_lufs, lr.loudness_range_lu, lr.max_momentary_lufs, lr.max_short_term_lufs],
        "true_peak": [loudness.true_peak_channel(ch[i], sr) for i in range(len(ch))],
        "true_peak_as_analyze": [loudness.true_peak_channel(ch[i], sr, **({} if st is None else {
            "block_max_bits": st.bmax_bits[i]})) for i in range(len(ch))],
        "low_band_as_analyze": signal_checks.low_band_correlation(ch, sr, **({} if st is None or not st.lowband else {
            "means": st.means})),
        "side_as_analyze": None if len(ch) < 2 else (
            list(signal_checks._side_energies(ch[0], ch[1])) if st is None else st.side.tolist()),
        "gap_blocks_as_analyze": (signal_checks._block_abs_max(ch, 256) if st is None else st.gap_block_max()).tolist(),
        "peak": ps.peak.tolist(), "dc": ps.dc.tolist(), "corr": ps.lr_correlation,
        "csum_last": float(ps.csum[-1]),
        "flat_runs": [list(signal_checks.flat_runs(ch[i], 3, float(ps.peak[i]))) for i in range(len(ch))],
        "pile_up": [[list(t) for t in signal_checks.amplitude_pile_up(ch[i], float(ps.peak[i]))]
                    if ps.peak[i] > 0 else None for i in range(len(ch))],
        "clicks": [[a.tolist() for a in signal_checks.click_events(ch[i])] for i in range(len(ch))],
        "low_band_correlation": signal_checks.low_band_correlation(ch, sr),
        "spectral_cutoff": signal_checks.spectral_cutoff(ch, sr),
        "gap_blocks": signal_checks._block_abs_max(ch, 256).tolist()[:: 97] if ch.shape[1] >= 256 else [],
    }
    if len(ch) >= 2:
        out["side_energies"] = list(signal_checks._side_energies(ch[0], ch[1]))
    return out


def _close(a, b, rel: float = 1e-6) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(u, v, rel) for u, v in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        return a == b or abs(a - b) <= rel * max(abs(a), abs(b))
    return a == b


def reports(out_path: Path, compare: Path | None, reuse: bool = False) -> int:
    """Write (and compare) the reports and raw values; see the module docstring.
    With ``reuse``, ``out_path`` is an earlier output: only the comparison runs."""
    import json

    if reuse:
        return _compare(json.loads(out_path.read_text()), compare)

    from audio_qc.corrupt import make_variants

    audio = Settings().audio_path
    tracks = sorted(p for p in audio.rglob("*") if p.suffix in (".ogg", ".opus", ".flac", ".wav"))
    if not tracks:
        print(f"no tracks under {audio}", file=sys.stderr)
        return 2
    res: dict[str, dict] = {}

    def one(key: str, p: Path) -> None:
        res[key] = {"report": analyze_path(p, memory_budget_bytes=2**31), "raw": raw_values(p)}

    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        for t in tracks:
            one(str(t.relative_to(audio)), t)
        for t in tracks[:: 12]:
            f = Path(d) / (t.stem.replace(" ", "_") + ".flac")
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(t), "-c:a", "flac", "-sample_fmt", "s32",
                            str(f)], check=True)
            one("flac24/" + f.name, f)
            f.unlink()
        rng = np.random.default_rng(0)
        for i, t in enumerate(x for x in tracks if sf.info(str(x)).channels == 2 and x.name != "silence.ogg"):
            for v in make_variants(t, Path(d) / f"t{i}", rng):
                one(f"variant/{t.stem}/{v.kind}", v.path)
                v.path.unlink(missing_ok=True)
    out_path.write_text(json.dumps(res, indent=0, sort_keys=True, allow_nan=True))
    print(f"{len(res)} reports written to {out_path} in {time.time() - t0:.0f} s")
    return _compare(res, compare)


def _compare(res: dict, compare: Path | None) -> int:
    """Print every difference between ``res`` and the ``--reports`` file ``compare``."""
    import json

    if compare is None:
        return 0
    base = json.loads(compare.read_text())
    diffs = 0
    for k in sorted(set(base) | set(res)):
        if k not in base or k not in res:
            print(f"  only in {'new' if k in res else 'base'}: {k}")
            diffs += 1
            continue
        if base[k]["report"] != res[k]["report"]:
            print(f"  REPORT differs: {k}\n    base {base[k]['report']}\n    new  {res[k]['report']}")
            diffs += 1
        braw, nraw = base[k]["raw"], res[k]["raw"]
        if isinstance(braw, dict) and isinstance(nraw, dict):
            # values that only newer code records (``*_as_analyze``) are checked against
            # the standalone value of the same run below; every value of the base must match
            bad = [f for f in braw if f not in nraw or not _close(braw[f], nraw[f])]
        else:
            bad = [] if _close(braw, nraw) else ["all"]
        if bad:
            print(f"  raw values differ: {k}: {bad}")
            diffs += 1
        if isinstance(nraw, dict):
            for fa, fs in (("true_peak_as_analyze", "true_peak"), ("low_band_as_analyze", "low_band_correlation"),
                           ("side_as_analyze", "side_energies")):
                if fa in nraw and fs in nraw and not _close(nraw[fa], nraw[fs], 1e-9):
                    print(f"  {fa} != {fs}: {k}: {nraw[fa]} {nraw[fs]}")
                    diffs += 1
            ga = nraw.get("gap_blocks_as_analyze")
            if ga is not None and ga[::97] != nraw["gap_blocks"]:
                print(f"  gap_blocks_as_analyze != gap_blocks: {k}")
                diffs += 1
    print(f"compared {len(res)} files with {compare}: {diffs} difference(s)")
    return 1 if diffs else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--track", default="wesnoth/battle.ogg")
    ap.add_argument("--agreement", action="store_true", help="compare with libebur128 on every real file instead")
    ap.add_argument("--stages", action="store_true", help="also print the CPU time of each QC stage")
    ap.add_argument("--reports", type=Path, help="write every QC report and raw check values here instead (JSON)")
    ap.add_argument("--compare", type=Path, help="with --reports: compare with this earlier --reports file")
    ap.add_argument("--no-run", action="store_true", help="with --reports and --compare: --reports is an earlier "
                    "output, only compare it")
    args = ap.parse_args()
    if args.agreement:
        return agreement()
    if args.reports:
        return reports(args.reports, args.compare, reuse=args.no_run)
    try:
        os.sched_setaffinity(0, {0})
    except (AttributeError, OSError):
        print("note: could not pin to one CPU", file=sys.stderr)
    src = Settings().audio_path / args.track
    if not src.is_file():
        print(f"missing {src}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        flac = Path(d) / (src.stem + ".flac")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-c:a", "flac", str(flac)], check=True)
        settings = QCSettings(wall_seconds=600, cpu_seconds=600)
        check_file(src, file_id="warm", uri="warm", settings=settings)  # start the fork server (compiles its kernels)
        warm_up()  # the same kernels in this process, for the in-process row
        print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
        for path in (src, flac):
            info = sf.info(str(path))
            dur = info.frames / info.samplerate
            print(f"\n{path.name}: {info.subtype_info}, {info.samplerate} Hz, {info.channels} ch, {dur:.1f} s, "
                  f"{path.stat().st_size / 2**20:.1f} MiB")
            print(f"  {'':30s} {'wall':>8s} {'x realtime':>11s}  {'CPU':>8s} {'x realtime':>11s}  {'best CPU':>10s}")
            rows = [
                ("playguard QC (sandboxed)", lambda: check_file(path, file_id="b", uri="b", settings=settings),
                 lambda: last_child_cpu_seconds() or 0.0),
                ("playguard QC (in-process)", lambda: analyze_path(path, memory_budget_bytes=2**31), None),
                ("ffmpeg ebur128=peak=true", lambda: ffmpeg_run(path), None),
                ("pyebur128 I+LRA+TP (+decode)", lambda: pyebur128_run(path), None),
                ("soundfile decode only", lambda: sf.read(str(path), dtype="float32"), None),
            ]
            for name, fn, extra in rows:
                wall, cpu, best = timed(fn, args.repeat, extra)
                print(f"  {name:30s} {wall:7.3f}s {dur / wall:10.1f}x  {cpu:7.3f}s {dur / cpu:10.1f}x  {dur / best:9.1f}x")
            if args.stages:
                print("  CPU time per stage of the in-process QC (median):")
                st = stages(path, args.repeat)
                for k, v in st.items():
                    print(f"    {k:44s} {v * 1000:7.1f} ms  {100 * v / sum(st.values()):5.1f} %")
                print(f"    {'sum':44s} {sum(st.values()) * 1000:7.1f} ms  ({dur / sum(st.values()):.0f}x realtime)")
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
