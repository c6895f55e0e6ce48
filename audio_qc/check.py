"""Public entry point: sandboxed QC of one file -> :class:`stream.schemas.QCReport`.

Every file is decoded and measured in a child process forked from a small
fork server (:mod:`audio_qc.zygote`, one per calling thread) that has numpy
and scipy imported already, so a child starts in milliseconds instead of the
~1.5 s that importing scipy takes. The child puts itself in its own session
and sets:

* ``RLIMIT_CPU`` = ``QCSettings.cpu_seconds`` (the kernel sends SIGXCPU, then SIGKILL);
* ``RLIMIT_AS`` = ``QCSettings.memory_mb`` MiB (allocation fails with MemoryError);
* ``RLIMIT_CORE`` = 0;
* a wall-clock limit of ``QCSettings.wall_seconds``: the child's whole process
  group (ffmpeg included) is killed with SIGKILL when it runs out.

The child answers with one JSON document on a pipe, relayed as a JSON line;
nothing is pickled. (``python -m audio_qc.child PATH`` runs the same analysis
as a plain command, JSON on stdout, for debugging.)
Files over ``QCSettings.max_file_mb`` are not opened at all.

Where ``decode_error`` ends and ``error`` begins (CONVENTIONS.md, outcome):

* the file is judged bad -> ``decode_error`` (critical) and outcome ``fail``:
  the decoders refuse it (0 bytes, random bytes, non-audio with an audio
  extension), its header declares an impossible stream (absurd sample rate or
  channel count, more than 7 days, a decompression bomb whose declared PCM is
  over 20,000x the file size), or its pages/frames fail their CRC;
* QC could not finish -> outcome ``error``, still with a ``decode_error``
  defect naming the limit: CPU or wall-clock limit hit, memory exhausted, a
  plausible file too large for the memory budget or over ``max_file_mb``, or
  the child died. A hostile file can cost a timeout; it never costs the
  caller's process.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from audio_qc.analyze import QC_VERSION, declared_defects, profile_defects
from audio_qc.profiles import get_profile
from stream.config import QCSettings
from stream.schemas import AudioIngested, Defect, QCMeasurements, QCReport, Severity, outcome_for

#: Virtual memory the child needs besides the decoded audio (Python, numpy,
#: scipy, numba/LLVM with the compiled kernels, libsndfile), MiB. Measured:
#: VmPeak of a child is 585 MiB + 2.46x the decoded audio (318 s and 955 s
#: stereo files).
_BASE_MIB = 640
#: Peak memory of the analysis per byte of decoded audio: the channel-major
#: copy (the decoder streams into it in 1 MiB chunks) plus the signal checks'
#: temporaries (measured 2.46, with margin).
_AUDIO_COPIES = 2.75


def memory_budget_bytes(settings: QCSettings) -> int:
    """Largest decoded float32 audio the child accepts, bytes: what remains
    of ``memory_mb`` after the interpreter, divided by the analysis' copies
    (2,048 MiB -> 512 MiB, ~23 min of 48 kHz stereo)."""
    return max(16 * 2**20, int((settings.memory_mb - _BASE_MIB) * 2**20 / _AUDIO_COPIES))


class _Zygote:
    """Client of one :mod:`audio_qc.zygote` process (JSON lines over pipes)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent)]
                                            + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audio_qc.zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        self._buf = b""

    def alive(self) -> bool:
        """True while the zygote process runs."""
        return self.proc.poll() is None

    def send(self, req: dict) -> None:
        """Send one request line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(req) + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def read_line(self, timeout: float) -> dict | None:
        """Next JSON line, or None on timeout or EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line.decode("utf-8"))
        except ValueError:
            return None
        return msg if isinstance(msg, dict) else None

    def close(self) -> None:
        """Stop the zygote."""
        for fn in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
            try:
                fn()
            except (ProcessLookupError, PermissionError, OSError):
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


_LOCAL = threading.local()
#: Seconds allowed for the zygote to import numpy/scipy on first use.
_START_S = 60.0


def _zygote() -> _Zygote:
    z = getattr(_LOCAL, "zygote", None)
    if z is None or not z.alive():
        z = _Zygote()
        _LOCAL.zygote = z
    return z


def _drop_zygote() -> None:
    z = getattr(_LOCAL, "zygote", None)
    if z is not None:
        z.close()
        _LOCAL.zygote = None


def last_child_cpu_seconds() -> float | None:
    """CPU seconds (user + system) of the last sandboxed child of this thread,
    its ffmpeg subprocesses included; None if it was killed or never ran.
    For benchmarks: the caller's own CPU time does not include the child's."""
    return getattr(_LOCAL, "child_cpu_s", None)


def run_sandboxed(path: Path, settings: QCSettings) -> tuple[dict, str | None]:
    """Run the analysis of ``path`` in a sandboxed child process.

    Returns:
        ``(result, failure)``: the child's JSON dict, or ``({}, reason)`` when
        the child hit a limit or died (``reason`` is one readable line).
    """
    z = _zygote()
    try:
        z.send({"path": str(path), "cpu": max(1, int(settings.cpu_seconds)),
                "mem": int(settings.memory_mb) * 2**20, "budget": memory_budget_bytes(settings),
                "ffmpeg_timeout": max(1.0, settings.wall_seconds * 0.8)})
    except (BrokenPipeError, OSError):
        _drop_zygote()
        return {}, "QC sandbox could not start"
    hello = z.read_line(_START_S + settings.wall_seconds)
    if not hello or not isinstance(hello.get("pid"), int):
        _drop_zygote()
        return {}, "QC sandbox did not answer"
    pid = hello["pid"]
    done = z.read_line(settings.wall_seconds)
    _LOCAL.child_cpu_s = float(done.get("cpu_s") or 0.0) if done else None
    if done is None:
        for fn in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                fn()
            except (ProcessLookupError, PermissionError, OSError):
                pass
        if z.read_line(10.0) is None:  # resynchronise the protocol, or start afresh
            _drop_zygote()
        return {}, f"sandbox limit: wall-clock limit of {settings.wall_seconds:g} s exceeded"
    sig = done.get("signal")
    text = done.get("result")
    if sig in (signal.SIGXCPU, signal.SIGKILL) and not text:
        return {}, f"sandbox limit: CPU-time limit of {settings.cpu_seconds} s exceeded"
    if not text:
        return {}, f"QC child died (status {done.get('status')}, signal {sig})"
    try:
        result = json.loads(text)
    except ValueError:
        return {}, "QC child sent an unreadable result"
    if not isinstance(result, dict):
        return {}, "QC child sent an unreadable result"
    if "child_error" in result:
        msg = str(result["child_error"])
        if "MemoryError" in msg:
            return {}, "sandbox limit: memory limit exceeded"
        return {}, f"QC child failed: {msg}"
    return result, None


def check_file(
    path: Path,
    *,
    file_id: str,
    uri: str,
    declared: AudioIngested | None = None,
    settings: QCSettings | None = None,
) -> QCReport:
    """Sandboxed QC of one file; never raises on bad audio.

    Args:
        path: the file (already resolved by :func:`audio_qc.paths.resolve_uri`).
        file_id, uri: copied into the report.
        declared: declared metadata (drives the ``*_mismatch`` checks).
        settings: limits and delivery profile (defaults: ``QCSettings()``).

    Returns:
        The :class:`~stream.schemas.QCReport` (outcome ``error`` when a
        sandbox limit stopped QC; see the module docstring).

    Raises:
        ValueError: for an unknown delivery profile name in ``settings``.
    """
    settings = settings or QCSettings()
    profile = get_profile(settings.profile)
    path = Path(path)
    t0 = time.monotonic()  # noqa: F841
    base = dict(file_id=file_id, uri=uri, track_id=declared.track_id if declared else None,
                qc_version=QC_VERSION, profile=profile.name)
    failure = None
    try:
        size = path.stat().st_size
    except OSError as exc:
        size, failure = None, f"cannot read file: {exc.strerror or exc}"
    result: dict = {}
    if failure is None and size is not None and size > settings.max_file_mb * 2**20:
        failure = f"sandbox limit: file of {size / 2**20:.0f} MiB exceeds max_file_mb={settings.max_file_mb}"
    if failure is None:
        result, failure = run_sandboxed(path, settings)
    finished = failure is None and bool(result.get("finished", True))
    defects = [Defect(**d) for d in result.get("defects", [])]
    if failure is not None:
        defects.append(Defect(code="decode_error", severity=Severity.critical, detail=failure))
    meas = result.get("measurements") or {}
    if finished and meas:
        defects += [Defect(**d) for d in profile_defects(meas, profile)]
    defects += [Defect(**d) for d in declared_defects(result, declared)]
    report = QCReport(
        **base,
        decoder=result.get("decoder"),
        codec=result.get("codec"),
        duration_s=result.get("duration_s"),
        sample_rate_hz=result.get("sample_rate_hz"),
        channels=result.get("channels"),
        measurements=QCMeasurements(**meas) if meas else QCMeasurements(),
        defects=defects,
        outcome=outcome_for(defects, qc_finished=finished),
    )
    del t0
    return report
