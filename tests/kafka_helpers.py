"""Helpers for integration tests: worker processes, produce and read topics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from stream.broker import free_port

REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """A ``playguard worker`` subprocess with its own metrics port.

    Args:
        env: extra environment (``PLAYGUARD_*``).
        args: extra CLI arguments.
    """

    def __init__(self, env: dict, args: list[str] = (), log: Path | None = None):
        self.metrics_port = free_port()
        self.env = {**os.environ, **env, "PLAYGUARD_METRICS_PORT": str(self.metrics_port),
                    "PLAYGUARD_METRICS_HOST": "127.0.0.1"}
        self.args = list(args)
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker", "--loglevel", "warn", *self.args],
            env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}")
            try:
                self.scrape()
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("worker metrics endpoint never came up")

    def scrape(self) -> str:
        """Text of ``/metrics`` over HTTP."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.scrape()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def wait_metric(self, name: str, at_least: float, timeout: float = 90, **labels) -> float:
        """Poll ``/metrics`` until ``name`` reaches ``at_least``; returns the value."""
        deadline = time.monotonic() + timeout
        v = 0.0
        while time.monotonic() < deadline:
            v = self.metric(name, **labels)
            if v >= at_least:
                return v
            time.sleep(0.5)
        return v

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send ``sig`` and wait; returns the exit code (None if still running)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return None


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Send ``(key, value)`` records and wait for all acks."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, v, key=k) for k, v in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def read_all(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 60.0,
                   idle: float = 3.0) -> list:
    """Read a topic from the beginning until ``expect`` records (or ``idle``
    seconds with nothing new after the high watermark is reached)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    out = []
    try:
        parts = c.partitions_for_topic(topic)
        for _ in range(50):
            if parts:
                break
            await c._client.force_metadata_update()
            await asyncio.sleep(0.1)
            parts = c.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts or [])]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            got = await c.getmany(timeout_ms=300)
            n = sum(len(v) for v in got.values())
            for recs in got.values():
                out.extend(recs)
            if n:
                last_new = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last_new > idle:
                break
    finally:
        await c.stop()
    return out
