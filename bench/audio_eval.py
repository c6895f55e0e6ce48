"""Audio-QC evaluation on the real music: recall per defect code on labelled
damaged variants, false-positive rate per check on the clean tracks.

Usage: ``.venv/bin/python bench/audio_eval.py [--tracks N] [--seed S]``
(default: every stereo track of ``<data_dir>/audio``; 25 variants per track,
each QC'd in the sandbox, two of them Vorbis re-encodes of clipped audio).
Prints the false-positive table, the recall per code and per kind of damage,
and the targets (recall >= 0.98 per code, false positives <= 2 % per check).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio_qc.evaluation import false_positives, recall_on_variants  # noqa: E402
from stream.config import Settings  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=0, help="use only the first N tracks (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    audio = Settings().audio_path
    tracks = sorted(p for p in audio.rglob("*") if p.suffix in (".ogg", ".opus"))
    if not tracks:
        print(f"no tracks under {audio}", file=sys.stderr)
        return 2
    t0 = time.time()
    fp, known, flagged = false_positives(tracks)
    print(f"False positives on {len(tracks)} unmodified real tracks (profile codes excluded):")
    for c, (a, b) in fp.items():
        print(f"  {c:20s} {a:3d}/{b:<3d} = {a / b if b else 0:6.1%}")
    for name, c in flagged:
        print(f"    flagged: {name}: {c}")
    print("Known real defects found:")
    for c, (a, b) in known.items():
        print(f"  {c:20s} {a}/{b}")
    src = [t for t in tracks if t.name != "silence.ogg"]
    if args.tracks:
        src = src[: args.tracks]
    with tempfile.TemporaryDirectory() as d:
        by_kind: dict[str, list[int]] = {}
        per, misses = recall_on_variants(src, Path(d), seed=args.seed, by_kind=by_kind)
    print(f"Recall per defect code on damaged variants of {len(src)} tracks:")
    for c in sorted(per):
        a, b = per[c]
        print(f"  {c:22s} {a:3d}/{b:<3d} = {a / b:6.1%}{'' if a / b >= 0.98 else '   (below 0.98)'}")
    print("Recall per kind of damage:")
    for k in sorted(by_kind):
        a, b = by_kind[k]
        print(f"  {k:26s} {a:3d}/{b:<3d} = {a / b:6.1%}")
    for name, exp, got in misses:
        print(f"    missed: {name}: expected {exp}, got {got}")
    print(f"total time {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
