"""Public entry point: sandboxed QC of one file -> :class:`stream.schemas.QCReport`.

Every file is decoded and measured in a child process forked from a
``multiprocessing`` fork server that has the analysis modules preloaded (a
child starts in milliseconds instead of the ~1.5 s that importing scipy takes).
The child puts itself in its own session and sets:

* ``RLIMIT_CPU`` = ``QCSettings.cpu_seconds`` (the kernel sends SIGXCPU, then SIGKILL);
* ``RLIMIT_AS`` = ``QCSettings.memory_mb`` MiB (allocation fails with MemoryError);
* ``RLIMIT_CORE`` = 0;
* a wall-clock limit of ``QCSettings.wall_seconds``: the child's whole process
  group (ffmpeg included) is killed with SIGKILL when it runs out.

The child answers with one JSON document as raw bytes on a pipe
(``Connection.send_bytes``); the parent parses JSON and unpickles nothing it
receives. (``python -m audio_qc.child PATH`` runs the same analysis as a plain
command, JSON on stdout, for debugging.)
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
import multiprocessing as mp
import os
import resource
import signal
import time
from pathlib import Path

from audio_qc.analyze import QC_VERSION, declared_defects, profile_defects
from audio_qc.profiles import get_profile
from stream.config import QCSettings
from stream.schemas import AudioIngested, Defect, QCMeasurements, QCReport, Severity, outcome_for

#: Virtual memory the child needs besides the decoded audio (Python, numpy,
#: scipy, libsndfile), MiB.
_BASE_MIB = 400


def memory_budget_bytes(settings: QCSettings) -> int:
    """Largest decoded float32 audio the child accepts, bytes: a third of
    what remains of ``memory_mb`` after the interpreter (analysis holds about
    three copies: interleaved, channel-major, filter output)."""
    return max(16 * 2**20, (settings.memory_mb - _BASE_MIB) * 2**20 // 3)


def _child_main(path: str, cpu: int, mem: int, budget: int, ff_timeout: float, conn) -> None:
    """Body of the sandboxed child (forked from the fork server): own session,
    resource limits, analysis, one JSON document back through ``conn``."""
    os.setsid()
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        from audio_qc.analyze import analyze_path

        try:
            result = analyze_path(Path(path), memory_budget_bytes=budget, ffmpeg_timeout_s=ff_timeout)
        except MemoryError:
            result = {"finished": False, "defects": [{"code": "decode_error", "severity": "critical",
                      "detail": "sandbox limit: memory limit exceeded", "start_s": None, "end_s": None}]}
        conn.send_bytes(json.dumps(result, allow_nan=False).encode("utf-8"))
    except BaseException as exc:  # report, never hang the parent  # noqa: BLE001
        try:
            conn.send_bytes(json.dumps({"child_error": f"{type(exc).__name__}: {str(exc)[:300]}"}).encode())
        except Exception:  # noqa: BLE001
            pass
    finally:
        conn.close()
        os._exit(0)


_CTX = None


def _context():
    """The ``forkserver`` multiprocessing context, with the analysis modules
    preloaded so that each sandboxed child starts in milliseconds."""
    global _CTX
    if _CTX is None:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["audio_qc.analyze"])
        _CTX = ctx
    return _CTX


def run_sandboxed(path: Path, settings: QCSettings) -> tuple[dict, str | None]:
    """Run the analysis of ``path`` in a sandboxed child process.

    Returns:
        ``(result, failure)``: the child's JSON dict, or ``({}, reason)`` when
        the child hit a limit or died (``reason`` is one readable line).
    """
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child_main,
        args=(str(path), max(1, int(settings.cpu_seconds)), int(settings.memory_mb) * 2**20,
              memory_budget_bytes(settings), max(1.0, settings.wall_seconds * 0.8), send),
        daemon=True,
    )
    proc.start()
    send.close()
    raw = None
    try:
        if recv.poll(settings.wall_seconds):
            try:
                raw = recv.recv_bytes(maxlength=16 * 2**20)
            except (EOFError, OSError):
                raw = None
        else:
            _kill(proc)
            return {}, f"sandbox limit: wall-clock limit of {settings.wall_seconds:g} s exceeded"
    finally:
        recv.close()
        proc.join(timeout=5)
        _kill(proc)
    if raw is None:
        code = proc.exitcode
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            return {}, f"sandbox limit: CPU-time limit of {settings.cpu_seconds} s exceeded"
        return {}, f"QC child died (exit status {code})"
    try:
        result = json.loads(raw.decode("utf-8"))
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


def _kill(proc) -> None:
    """SIGKILL the child's process group (its ffmpeg too), then the child."""
    if proc.pid is None:
        return
    for fn in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            fn()
        except (ProcessLookupError, PermissionError, OSError, AttributeError):
            pass
    proc.join(timeout=5)


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
