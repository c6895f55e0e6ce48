"""End to end on the embedded broker: plays in, alerts / dead letters out, /metrics scraped."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from stream.config import Settings
from stream.schemas import Alert
from tests.kafka_helpers import WorkerProcess, produce, read_all

pytestmark = pytest.mark.integration


def _play(i: int, account: str, track: str, ts: datetime, ms: int = 35_000) -> dict:
    return {"event_id": f"{account}-{track}-{i}", "ts": ts.isoformat(), "account_id": account,
            "track_id": track, "artist_id": "artist-" + track, "ms_played": ms}


@pytest.fixture(scope="module")
def worker(broker, tmp_path_factory):
    prefix = f"it{int(time.time() * 1000) % 10**8}."
    env = {"PLAYGUARD_BOOTSTRAP_SERVERS": broker.bootstrap, "PLAYGUARD_TOPIC_PREFIX": prefix,
           "PLAYGUARD_PARTITIONS": "2", "PLAYGUARD_APP_ID": prefix + "worker",
           "PLAYGUARD_SNAPSHOT_INTERVAL_S": "1"}
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    w = WorkerProcess(env, ["--models", "rules", "--no-audio"], log=log).start()
    w.settings = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix, partitions=2)
    yield w
    code = w.stop()
    assert code == 0, f"worker did not exit cleanly on SIGTERM (code {code}); log:\n{log.read_text()[-3000:]}"


def test_rule_alert_deadletter_duplicates_and_metrics(worker):
    s = worker.settings
    now = datetime.now(UTC).replace(microsecond=0)
    day0 = now - timedelta(hours=3)
    if (day0 + timedelta(seconds=40 * 101)).date() != day0.date():
        # keep the 101 plays in one UTC day (the rule counts per day): start
        # them just after midnight, still more than an hour in the past
        day0 = datetime.combine(now.date(), datetime.min.time(), UTC) + timedelta(seconds=1)
    # 101 plays of one track in the same day by 'bot-1' -> rule_track_day alert;
    # 'human-1' plays 20 different tracks -> nothing.
    plays = [_play(i, "bot-1", "t-loop", day0 + timedelta(seconds=40 * i)) for i in range(101)]
    plays += [_play(i, "human-1", f"t-{i}", day0 + timedelta(minutes=4 * i), 200_000) for i in range(20)]
    plays.sort(key=lambda p: p["ts"])
    records = [(p["account_id"].encode(), json.dumps(p).encode()) for p in plays]
    records.append((b"bot-1", json.dumps(plays[0]).encode()))  # duplicate event_id
    bad = [(b"k1", b"{not json"), (b"k2", b"\xff\xfe\x00"),
           (b"k3", json.dumps({**plays[1], "event_id": "neg", "ms_played": -1}).encode())]
    asyncio.run(produce(s.bootstrap_servers, s.topics.plays, records + bad))

    assert worker.wait_metric("playguard_events_consumed_total", len(records) + len(bad),
                              topic=s.topics.plays) == len(records) + len(bad)
    alerts = [Alert.model_validate_json(r.value)
              for r in asyncio.run(read_all(s.bootstrap_servers, s.topics.alerts, expect=1, timeout=60))]
    assert [(a.detector, a.entity_id) for a in alerts] == [("rule_track_day", "bot-1")]
    a = alerts[0]
    assert a.features["track_plays_per_day"].actual == 101
    assert a.window_end - a.window_start == timedelta(days=1)

    dead = asyncio.run(read_all(s.bootstrap_servers, s.topics.deadletter, expect=3, timeout=60))
    reasons = {dict(r.headers)["reason"].decode(): r for r in dead}
    assert set(reasons) == {"invalid_json", "invalid_utf8", "value_out_of_range"}
    assert reasons["invalid_utf8"].value == b"\xff\xfe\x00"  # original bytes kept
    h = dict(reasons["invalid_json"].headers)
    assert h["source_topic"].decode() == s.topics.plays and int(h["offset"]) >= 0

    assert worker.metric("playguard_deadletter_total", topic=s.topics.plays, reason="invalid_json") == 1
    assert worker.metric("playguard_duplicates_dropped_total", topic=s.topics.plays) == 1
    assert worker.metric("playguard_alerts_total", detector="rule_track_day", severity="warning") == 1
    # the catalog stage received the forwarded batches
    assert worker.wait_metric("playguard_events_consumed_total", 1, topic=s.topics.plays_by_artist) >= 1
    assert worker.metric("playguard_alert_latency_seconds_count", kind="play_fraud") == 1
    # every known label value exists before its first event
    assert "playguard_deadletter_total" in worker.scrape()
    assert worker.metric("playguard_deadletter_total", topic=s.topics.plays, reason="too_late") == 0


def test_promtool_check_metrics_on_a_live_worker_scrape(worker):
    from tests.test_deploy_tools import promtool_check_metrics

    text = worker.scrape()
    assert "playguard_events_consumed_total" in text and "playguard_build_info" in text
    r = promtool_check_metrics(text)
    assert r.returncode == 0, r.stdout + r.stderr


def test_idle_worker_sees_a_new_record_promptly(worker):
    """Records reach an idle worker within a fraction of a second: Faust's
    hard-coded 1500 ms fetch wait, which the embedded broker honours in full
    even when records arrive, is replaced by ``consumer_fetch_max_wait_ms``
    (50 ms). Measured under load 6: median 0.08 s with 50 ms, 0.38 s with
    ``PLAYGUARD_CONSUMER_FETCH_MAX_WAIT_MS=1500`` (this test then fails). The
    first record of a partition also waits for the restore (seconds), hence
    the median."""
    s = worker.settings
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    topic = s.topics.plays
    delays = []
    pause = random.Random(0)
    for i in range(7):
        before = worker.metric("playguard_events_consumed_total", topic=topic)
        p = _play(i, f"idle-{i}", f"t-idle-{i}", now + timedelta(seconds=i))
        asyncio.run(produce(s.bootstrap_servers, topic, [(p["account_id"].encode(), json.dumps(p).encode())]))
        t0 = time.monotonic()
        while worker.metric("playguard_events_consumed_total", topic=topic) <= before:
            assert time.monotonic() - t0 < 10, "record never consumed"
            time.sleep(0.01)
        delays.append(time.monotonic() - t0)
        time.sleep(pause.uniform(0.1, 0.8))  # no fixed phase against the fetch cycle
    delays.sort()
    assert delays[len(delays) // 2] < 0.25, f"delays after the produce ack: {[round(d, 3) for d in delays]}"
