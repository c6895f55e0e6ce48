"""Fork server for sandboxed QC children ("zygote"), JSON lines on stdin/stdout.

Run as ``python -m audio_qc.zygote`` by :mod:`audio_qc.check`. It imports the
analysis modules once (numpy, scipy: ~1.5 s) and compiles their numba kernels
(:func:`audio_qc.analyze.warm_up`, a few seconds), then for each request line::

    {"path": str, "cpu": int, "mem": int, "budget": int, "ffmpeg_timeout": float}

forks a child that calls :func:`os.setsid`, sets RLIMIT_CPU, RLIMIT_AS and
RLIMIT_CORE, runs :func:`audio_qc.analyze.analyze_path` and writes its JSON
result to a pipe. The zygote answers with two lines: ``{"pid": int}`` at once
(so the caller can kill the child's process group on a wall-clock timeout),
then ``{"status": int, "signal": int|null, "result": str|null, "cpu_s": float}``
when the child has exited (``result`` is the child's JSON text, parsed by the
caller; ``cpu_s`` its user + system CPU time, its own children included).
The zygote never reads the audio itself, and nothing is pickled anywhere.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys


def _child(req: dict, wfd: int) -> None:
    os.setsid()
    code = 0
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (int(req["cpu"]), int(req["cpu"]) + 1))
        resource.setrlimit(resource.RLIMIT_AS, (int(req["mem"]), int(req["mem"])))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        from pathlib import Path

        from audio_qc.analyze import analyze_path

        try:
            result = analyze_path(Path(req["path"]), memory_budget_bytes=int(req["budget"]),
                                  ffmpeg_timeout_s=float(req["ffmpeg_timeout"]))
        except MemoryError:
            result = {"finished": False, "defects": [{"code": "decode_error", "severity": "critical",
                      "detail": "sandbox limit: memory limit exceeded", "start_s": None, "end_s": None}]}
        data = json.dumps(result, allow_nan=False).encode("utf-8")
    except BaseException as exc:  # noqa: BLE001 - report, never hang the caller
        data = json.dumps({"child_error": f"{type(exc).__name__}: {str(exc)[:300]}"}).encode("utf-8")
        code = 1
    try:
        view = memoryview(data)
        while view:
            n = os.write(wfd, view)
            view = view[n:]
    finally:
        os._exit(code)


def serve() -> None:
    """Serve requests from stdin until EOF."""
    import audio_qc.analyze  # preload: children start warm

    audio_qc.analyze.warm_up()  # compile the numba kernels once, before any fork
    # every object alive now (modules, numba's compiled kernels) lives as long
    # as the zygote: move them out of the collector's sight, so that no
    # collection in a child walks them (CPU time, and copy-on-write faults on
    # every page it touches)
    gc.collect()
    gc.freeze()

    out = sys.stdout
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            out.write(json.dumps({"pid": None}) + "\n" + json.dumps({"status": -1, "signal": None, "result": None}) + "\n")
            out.flush()
            continue
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _child(req, wfd)
        os.close(wfd)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        chunks = []
        while True:
            b = os.read(rfd, 1 << 16)
            if not b:
                break
            chunks.append(b)
        os.close(rfd)
        _, status, usage = os.wait4(pid, 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        text = b"".join(chunks).decode("utf-8", "replace") or None
        cpu = round(usage.ru_utime + usage.ru_stime, 4)  # the child's CPU seconds (ffmpeg included)
        out.write(json.dumps({"status": code, "signal": sig, "result": text, "cpu_s": cpu}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
