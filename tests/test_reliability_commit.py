"""Offsets, alerts and snapshots move together; SIGTERM drains (issue 13, "Delivery guarantees").

One ``playguard worker`` (``--models rules`` with low thresholds, snapshots
every 6 s, Faust commits every 0.5 s) takes a paced replay of real plays. While
it runs, the test samples, in this order: the group's committed offsets
(OffsetFetch), then the ``changelog`` snapshots, then the ``alerts`` topic. For
every sample and partition:

* the newest account snapshot covers the committed offset (``seq >= committed``);
* every alert that a reference run raises on a record before the committed
  offset is already on ``alerts``.

Faust's ``take_events`` acks a batch by itself when it resumes; before the
driver held its own message reference, commits ran up to ~6 s ahead of the
snapshot and the first property failed. Then the worker gets SIGTERM while
plays still arrive: it must exit 0 within 30 s, and the offsets committed after
exit must equal what it processed (audit file) and what its final snapshots
cover, on both stages.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import pytest

from stream.driver import read_snapshots
from tests.kafka_helpers import WorkerProcess, read_all
from tests.test_reliability_crash import (
    committed_offsets,
    crash_settings,
    end_offsets,
    paced_produce,
    read_audit,
    reference_run,
    replay_events,
)

pytestmark = pytest.mark.integration

SIGTERM_EXIT_S = 30.0
REPLAY_EVENTS, REPLAY_RATE = 18000, 450.0  # 40 s of plays: sampling and SIGTERM both fall inside it
MIN_SAMPLES, MIN_COMMIT_SAMPLES = 8, 4


@pytest.fixture(scope="module")
def run(broker, tmp_path_factory):
    d = tmp_path_factory.mktemp("commit")
    prefix = f"commit{int(time.time() * 1000) % 10**9}."
    s, env = crash_settings(broker.bootstrap, prefix)
    env.update({"PLAYGUARD_SNAPSHOT_INTERVAL_S": "6", "PLAYGUARD_COMMIT_INTERVAL_S": "0.5"})
    audit = d / "audit.jsonl"
    w = WorkerProcess(env, ["--models", "rules", "--no-audio", "--audit", str(audit)], log=d / "w.log").start()
    batch = replay_events(REPLAY_EVENTS)
    progress = {"sent": 0}
    prod = threading.Thread(target=lambda: asyncio.run(paced_produce(s, batch, REPLAY_RATE, progress)), daemon=True)
    prod.start()
    yield {"s": s, "w": w, "audit": audit, "batch": batch, "progress": progress, "prod": prod, "log": d / "w.log"}
    w.stop(signal.SIGKILL, 5)


def test_commits_never_run_ahead_of_alerts_or_snapshots(run):
    s, progress = run["s"], run["progress"]
    samples = []

    def commit_samples() -> int:
        return sum(1 for committed, _, _ in samples if any(committed.values()))

    # Sample by count, not by wall time: on a slow machine one sample (three
    # broker round trips) can take 2 s. Stop early enough that plays are still
    # in flight for the SIGTERM test that follows.
    while progress["sent"] < 0.6 * len(run["batch"]):
        if len(samples) >= MIN_SAMPLES and commit_samples() >= MIN_COMMIT_SAMPLES:
            break
        committed = asyncio.run(committed_offsets(s, s.topics.plays))
        latest = asyncio.run(read_snapshots(s)).latest()
        alerts = {json.loads(r.value)["alert_id"]
                  for r in asyncio.run(read_all(s.bootstrap_servers, s.topics.alerts, timeout=10, idle=0.5))}
        samples.append((committed, {p: latest.get(("account", p), (0,))[0] for p in range(s.partitions)}, alerts))
        time.sleep(0.5)
    assert progress["sent"] < len(run["batch"]), "the replay ended before sampling did: nothing was in flight"

    # reference: which alert each record triggers (records read back with their offsets)
    plays = asyncio.run(read_all(s.bootstrap_servers, s.topics.plays, expect=progress["sent"], timeout=30))
    ref_alerts, _, _ = reference_run(s, plays)
    offset_of = {(r.partition, json.loads(r.value)["event_id"]): r.offset for r in plays}
    from stream.runtime import kafka_partition

    trigger = []  # (partition, offset of the record that raised it, alert_id)
    for a in ref_alerts:
        p = kafka_partition(a.entity_id, s.partitions)
        trigger.append((p, offset_of[(p, a.evidence["sample_event_ids"][0])], a.alert_id))

    checked_alerts = 0
    for committed, snap_seq, alerts in samples:
        for p, c in committed.items():
            if c is None:
                continue
            assert snap_seq[p] >= c, f"partition {p}: committed {c} but newest snapshot covers only {snap_seq[p]}"
            due = {aid for q, off, aid in trigger if q == p and off < c}
            assert due <= alerts, f"partition {p}: committed {c} before alerts {sorted(due - alerts)[:3]}"
            checked_alerts += len(due)
    assert commit_samples() >= MIN_COMMIT_SAMPLES, (
        f"{commit_samples()} of {len(samples)} samples saw a committed offset before 60% of the replay was sent")
    assert checked_alerts > 0, "no alert fell before a committed offset: the check proved nothing"


def test_sigterm_drains_commits_and_exits_in_bounded_time(run):
    s, w = run["s"], run["w"]
    assert run["prod"].is_alive(), "the replay should still be running when SIGTERM is sent"
    t0 = time.monotonic()
    code = w.stop(signal.SIGTERM, timeout=SIGTERM_EXIT_S + 10)
    took = time.monotonic() - t0
    assert code == 0, f"exit code {code}; log:\n{run['log'].read_text()[-3000:]}"
    assert took < SIGTERM_EXIT_S, f"exit took {took:.1f} s"
    run["prod"].join(timeout=60)

    aud = read_audit([run["audit"]])
    latest = asyncio.run(read_snapshots(s)).latest()
    fwd_end = asyncio.run(end_offsets(s.bootstrap_servers, s.topics.plays_by_artist))
    for stage, topic in (("account", s.topics.plays), ("catalog", s.topics.plays_by_artist)):
        committed = asyncio.run(committed_offsets(s, topic))
        for p in range(s.partitions):
            ranges = aud.get((stage, p), [])
            processed = max((b for _, b, _ in ranges), default=-1) + 1
            c = committed[p] or 0
            assert c == processed, f"{stage}/{p}: committed {c}, processed up to {processed}"
            if processed:
                assert latest[(stage, p)][0] == processed, f"{stage}/{p}: final snapshot behind"
    # forwarded batches produced during the drain and not yet consumed by the
    # catalog stage stay after its committed offset: the next start reads them.
    assert sum(fwd_end.values()) >= sum(
        max((b for _, b, _ in aud.get(("catalog", p), [])), default=-1) + 1 for p in range(s.partitions))
