"""Sandboxed child: QC of one file, result as JSON on stdout.

Run as ``python -m audio_qc.child PATH`` by :func:`audio_qc.check.check_file`
with resource limits applied before ``exec`` (RLIMIT_CPU, RLIMIT_AS,
RLIMIT_FSIZE=0, RLIMIT_CORE=0; see :mod:`audio_qc.sandbox`). It reads the
memory budget from the ``PLAYGUARD_QC_BUDGET_BYTES`` environment variable and
writes exactly one JSON object (the dict of
:func:`audio_qc.analyze.analyze_path`) to stdout. Nothing is pickled: the
parent parses JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 when JSON was written)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m audio_qc.child PATH\n")
        return 2
    budget = int(os.environ.get("PLAYGUARD_QC_BUDGET_BYTES", str(512 * 2**20)))
    ff_timeout = float(os.environ.get("PLAYGUARD_QC_FFMPEG_TIMEOUT_S", "60"))
    from audio_qc.analyze import analyze_path

    try:
        result = analyze_path(Path(args[0]), memory_budget_bytes=budget, ffmpeg_timeout_s=ff_timeout)
    except MemoryError:
        result = {"finished": False, "defects": [{"code": "decode_error", "severity": "critical",
                  "detail": "sandbox limit: out of memory", "start_s": None, "end_s": None}]}
    sys.stdout.write(json.dumps(result, allow_nan=False))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
