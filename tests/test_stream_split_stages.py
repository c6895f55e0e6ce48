"""One play stage per worker process (``playguard worker --stages``), on the embedded broker.

The account-stage worker reads only ``plays`` and forwards to
``plays.by_artist``; the catalog-stage worker reads only ``plays.by_artist``.
Each commits in its own consumer group (``<app_id>.<stage>``), so neither is
handed partitions it never reads.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.app import parse_stages
from stream.config import Settings
from stream.schemas import Alert
from tests.kafka_helpers import WorkerProcess, produce, read_all

pytestmark = pytest.mark.integration


async def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        return {p: await c.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await c.stop()


def test_parse_stages_orders_and_rejects():
    assert parse_stages("catalog,account") == ("account", "catalog")
    assert parse_stages(["catalog"]) == ("catalog",)
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stages("account,audio2")
    with pytest.raises(ValueError, match="no stage"):
        parse_stages(" , ")


def test_split_stage_workers_each_read_only_their_topic(broker, tmp_path):
    prefix = f"split{int(time.time() * 1000) % 10**8}."
    app_id = prefix + "w"
    env = {"PLAYGUARD_BOOTSTRAP_SERVERS": broker.bootstrap, "PLAYGUARD_TOPIC_PREFIX": prefix,
           "PLAYGUARD_PARTITIONS": "2", "PLAYGUARD_APP_ID": app_id, "PLAYGUARD_SNAPSHOT_INTERVAL_S": "1"}
    s = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix, partitions=2)
    acc = WorkerProcess(env, ["--models", "rules", "--no-audio", "--stages", "account"], log=tmp_path / "a.log")
    cat = WorkerProcess(env, ["--models", "rules", "--no-audio", "--stages", "catalog"], log=tmp_path / "c.log")
    try:
        acc.start()
        cat.start()
        day0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
        if (day0 + timedelta(seconds=40 * 101)).date() != day0.date():
            day0 = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC) + timedelta(seconds=1)
        plays = [{"event_id": f"bot-{i}", "ts": (day0 + timedelta(seconds=40 * i)).isoformat(),
                  "account_id": "bot-1", "track_id": "t-loop", "artist_id": "a-loop", "ms_played": 35_000}
                 for i in range(101)]
        plays += [{"event_id": f"h-{i}", "ts": (day0 + timedelta(minutes=4 * i)).isoformat(),
                   "account_id": f"human-{i % 3}", "track_id": f"t-{i}", "artist_id": f"a-{i % 7}",
                   "ms_played": 200_000} for i in range(20)]
        plays.sort(key=lambda p: p["ts"])
        asyncio.run(produce(s.bootstrap_servers, s.topics.plays,
                            [(p["account_id"].encode(), json.dumps(p).encode()) for p in plays]))

        assert acc.wait_metric("playguard_events_consumed_total", len(plays), topic=s.topics.plays) == len(plays)
        assert cat.wait_metric("playguard_events_consumed_total", 1, topic=s.topics.plays_by_artist) >= 1
        # each worker reads only its own topic
        assert acc.metric("playguard_events_consumed_total", topic=s.topics.plays_by_artist) == 0
        assert cat.metric("playguard_events_consumed_total", topic=s.topics.plays) == 0
        alerts = [Alert.model_validate_json(r.value)
                  for r in asyncio.run(read_all(s.bootstrap_servers, s.topics.alerts, expect=1, timeout=60))]
        assert [(a.detector, a.entity_id) for a in alerts] == [("rule_track_day", "bot-1")]

        # commits land in one group per stage, each only on its own topic
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            c_acc = asyncio.run(_committed(s.bootstrap_servers, app_id + ".account", s.topics.plays, 2))
            c_cat = asyncio.run(_committed(s.bootstrap_servers, app_id + ".catalog", s.topics.plays_by_artist, 2))
            if sum(v or 0 for v in c_acc.values()) == len(plays) and any(c_cat.values()):
                break
            time.sleep(1)
        assert sum(v or 0 for v in c_acc.values()) == len(plays), c_acc
        assert any(c_cat.values()), c_cat
        assert not any(asyncio.run(_committed(s.bootstrap_servers, app_id + ".catalog", s.topics.plays, 2)).values())
        assert not any(asyncio.run(_committed(s.bootstrap_servers, app_id, s.topics.plays, 2)).values())
        # both stages snapshot to the changelog under their own keys
        keys = {r.key.decode().split("/")[0]
                for r in asyncio.run(read_all(s.bootstrap_servers, s.topics.changelog, timeout=30))}
        assert {"account", "catalog"} <= keys
    finally:
        codes = [w.stop() for w in (acc, cat)]
    assert codes == [0, 0], (tmp_path / "a.log").read_text()[-2000:] + (tmp_path / "c.log").read_text()[-2000:]
