"""Audio-QC speed: full QC of one file (decode included) in x realtime, on
one core, next to ffmpeg's ebur128 filter and libebur128 (pyebur128) with
true peak, in the same run.

Usage: ``.venv/bin/python bench/audio_qc.py [--repeat N] [--track NAME]``

Files: a 44.1 kHz stereo Ogg Vorbis track of ``<data_dir>/audio`` (default
``wesnoth/battle.ogg``, 318 s) and a FLAC made from it with ffmpeg in a
temporary folder. Each figure is the median of ``--repeat`` runs, as
audio duration / wall time; the process (and its children) is pinned to CPU 0.

* ``playguard QC (in-process)``: :func:`audio_qc.analyze.analyze_path`:
  integrity checks, decode, BS.1770-4 loudness, LRA, true peak, every signal
  check.
* ``playguard QC (sandboxed)``: :func:`audio_qc.check.check_file`, the public
  entry point (forked child with resource limits, JSON result).
* ``ffmpeg ebur128=peak=true``: ``ffmpeg -i F -af ebur128=peak=true -f null -``.
* ``pyebur128 I+LRA+TP (+decode)``: soundfile decode then libebur128 with
  integrated loudness, LRA and true peak.
* ``soundfile decode only``.
"""

from __future__ import annotations

import argparse
import os
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

from audio_qc.analyze import analyze_path  # noqa: E402
from audio_qc.check import check_file  # noqa: E402
from stream.config import QCSettings, Settings  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--track", default="wesnoth/battle.ogg")
    ap.add_argument("--agreement", action="store_true", help="compare with libebur128 on every real file instead")
    args = ap.parse_args()
    if args.agreement:
        return agreement()
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
        check_file(src, file_id="warm", uri="warm", settings=settings)  # start the fork server
        print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
        for path in (src, flac):
            info = sf.info(str(path))
            dur = info.frames / info.samplerate
            print(f"\n{path.name}: {info.subtype_info}, {info.samplerate} Hz, {info.channels} ch, {dur:.1f} s")
            rows = [
                ("playguard QC (in-process)", lambda: analyze_path(path, memory_budget_bytes=2**31)),
                ("playguard QC (sandboxed)", lambda: check_file(path, file_id="b", uri="b", settings=settings)),
                ("ffmpeg ebur128=peak=true", lambda: ffmpeg_run(path)),
                ("pyebur128 I+LRA+TP (+decode)", lambda: pyebur128_run(path)),
                ("soundfile decode only", lambda: sf.read(str(path), dtype="float32")),
            ]
            for name, fn in rows:
                t = timed(fn, args.repeat)
                print(f"  {name:30s} {t:7.3f} s  {dur / t:7.1f}x realtime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
