"""The embedded broker's CPU under a steady produce + fetch load (not a test).

Starts a fresh embedded broker (Tansu, :class:`stream.broker.EmbeddedBroker`),
creates a ``--partitions``-partition topic (8), and produces ~300-byte JSON
plays at ``--rate`` plays/s with aiokafka, one record batch per partition
every ``--every`` seconds, while ``--consumers`` consumer groups read the
topic with a fetch wait of ``--wait`` ms (committing every
``--commit-every`` s, or aiokafka's 5-s auto-commit), and optionally
``--side-mb-s`` MB/s of 512-KiB records go to a topic no one reads. Every
15 s it prints the broker's CPU (share of one core, from
``/proc/<pid>/stat``) and RSS.

It isolates what made the broker's CPU grow during soaks (RELIABILITY.md,
"The embedded broker's fetch cost"): each fetch costs in proportion to the
record batches the partition holds, so the growth depends on how many
batches are produced, not on the bytes.

Usage::

    .venv/bin/python bench/broker_fetch_cost.py --rate 20000 --seconds 105 --every 0.05
    .venv/bin/python bench/broker_fetch_cost.py --rate 20000 --seconds 105 --every 0.25
    .venv/bin/python bench/broker_fetch_cost.py --consumers 0      # produce only
    .venv/bin/python bench/broker_fetch_cost.py --rate 30000 --every 0.25 --partitions 4 --seconds 240 \
        --consumers 2 --commit-every 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
# the repository before bench/ (whose detectors.py would shadow the package)
sys.path[:] = [p for p in sys.path if p not in ("", _HERE)] + [str(Path(_HERE).parent), _HERE]

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from soak import cpu_s, rss_mb  # noqa: E402  (the soak's /proc readers)
from stream.broker import EmbeddedBroker  # noqa: E402



def _plays(n: int) -> list[bytes]:
    rng = random.Random(0)
    return [json.dumps({
        "event_id": f"e{i}", "account_id": f"acc{i % 100}", "track_id": f"spotify:track:{rng.getrandbits(64):x}",
        "artist_id": "Some Artist Name", "ts": "2024-01-01T00:00:00Z", "ms_played": rng.randint(1000, 300000),
        "device_id": "d", "country": "FR", "ip": "192.0.2.1",
    }).encode() for i in range(n)]


async def run(a: argparse.Namespace) -> None:
    """Start a broker, run the load of ``a`` (see the module docstring) and
    print the broker's CPU and RSS every 15 s; stops the broker at the end."""
    with EmbeddedBroker() as b:
        pid = b.proc.pid
        admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("plays", a.partitions, 1), NewTopic("changelog", 1, 1)])
        await admin.close()
        prod = AIOKafkaProducer(bootstrap_servers=b.bootstrap, linger_ms=10, max_batch_size=960 * 1024,
                                max_request_size=2 * 1024 * 1024, acks=1)
        await prod.start()
        got = [0]
        consumers: list[AIOKafkaConsumer] = []

        async def consume(i: int) -> None:
            c = AIOKafkaConsumer("plays", bootstrap_servers=b.bootstrap, group_id=f"g{i}", fetch_max_wait_ms=a.wait,
                                 auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
                                 rebalance_timeout_ms=10000, enable_auto_commit=a.commit_every <= 0)
            await c.start()
            consumers.append(c)
            t_commit = time.monotonic()
            while True:
                r = await c.getmany(timeout_ms=200, max_records=20000)
                got[0] += sum(len(v) for v in r.values())
                if a.commit_every > 0 and time.monotonic() - t_commit >= a.commit_every:
                    await c.commit()  # as a Faust worker does every commit_interval_s
                    t_commit = time.monotonic()

        tasks = [asyncio.create_task(consume(i)) for i in range(a.consumers)]

        async def write_side() -> None:
            # unread snapshot-like records (512 KiB each), as the workers'
            # state snapshots in `changelog`
            chunk, step = bytes(512 * 1024), 1.0
            per_step = max(1, round(a.side_mb_s * step * 2))
            while True:
                fs = [await prod.send("changelog", chunk) for _ in range(per_step)]
                await asyncio.gather(*fs)
                await asyncio.sleep(step)

        if a.side_mb_s > 0:
            tasks.append(asyncio.create_task(write_side()))
        vals = _plays(5000)
        t0 = time.monotonic()
        sent, cpu_last, t_last, t_next = 0, cpu_s(pid), t0, t0 + 15
        print(f"rate {a.rate}/s, one batch per partition every {a.every} s, {a.consumers} consumer group(s), "
              f"fetch wait {a.wait} ms, {a.side_mb_s} MB/s to an unread topic")
        while time.monotonic() - t0 < a.seconds:
            target = int((time.monotonic() - t0) * a.rate)
            by_dest: dict[int, list[bytes]] = {}
            for i in range(sent, target):
                by_dest.setdefault(i % a.partitions, []).append(vals[i % len(vals)])
            futs = []
            for dest, recs in by_dest.items():
                batch = prod.create_batch()
                for v in recs:
                    if batch.append(key=None, value=v, timestamp=None) is None:
                        futs.append(await prod.send_batch(batch, "plays", partition=dest))
                        batch = prod.create_batch()
                        batch.append(key=None, value=v, timestamp=None)
                futs.append(await prod.send_batch(batch, "plays", partition=dest))
            await asyncio.gather(*futs)
            sent = max(sent, target)
            await asyncio.sleep(a.every)
            now = time.monotonic()
            if now >= t_next:
                cpu = cpu_s(pid)
                print(f"{now - t0:5.0f} s  sent {sent:>10,}  consumed {got[0]:>10,}  "
                      f"broker {(cpu - cpu_last) / (now - t_last):.2f} core  RSS {rss_mb(pid):,.0f} MiB",
                      flush=True)
                cpu_last, t_last, t_next = cpu, now, now + 15
        for t in tasks:
            t.cancel()
        for c in consumers:
            await c.stop()
        await prod.stop()


def main(argv=None) -> int:
    """Command line; returns 0, or 2 (one line on stderr) for bad arguments."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=20000, help="plays/s")
    ap.add_argument("--seconds", type=float, default=105.0)
    ap.add_argument("--every", type=float, default=0.05, help="seconds between produce steps")
    ap.add_argument("--wait", type=int, default=50, help="consumer fetch_max_wait_ms")
    ap.add_argument("--consumers", type=int, default=1, help="consumer groups reading the topic")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--commit-every", type=float, default=0.0,
                    help="seconds between each consumer's offset commits (0: aiokafka's auto-commit, 5 s)")
    ap.add_argument("--side-mb-s", type=float, default=0.0,
                    help="MB/s of 512-KiB records written to an unread topic (state snapshots)")
    a = ap.parse_args(argv)
    if (a.rate <= 0 or a.every <= 0 or a.seconds <= 0 or a.consumers < 0 or a.wait < 1 or a.side_mb_s < 0
            or a.partitions < 1):
        print("error: --rate, --every, --seconds and --wait must be positive, --consumers >= 0", file=sys.stderr)
        return 2
    asyncio.run(run(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
