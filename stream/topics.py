"""Topic administration: create PlayGuard's topics under the configured prefix.

``changelog`` is compacted (``cleanup.policy=compact``) with one partition;
every other topic gets ``settings.partitions`` partitions. Existing topics are
left as they are.

Source: Kafka CreateTopics API through aiokafka's admin client.
"""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.config import Settings


def topic_specs(settings: Settings) -> list[NewTopic]:
    """The topics PlayGuard needs, with partitions and configs."""
    t = settings.topics
    rf = settings.replication_factor
    specs = [NewTopic(name, settings.partitions, rf) for name in
             (t.plays, t.plays_by_artist, t.audio_ingested, t.alerts, t.qc_reports, t.deadletter)]
    specs.append(NewTopic(t.changelog, 1, rf, topic_configs={"cleanup.policy": "compact"}))
    return specs


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; returns the names it created.

    Raises:
        aiokafka.errors.KafkaError: if the cluster cannot be reached or refuses.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        **settings.kafka_client_kwargs(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        todo = [s for s in topic_specs(settings) if s.name not in existing]
        if todo:
            await admin.create_topics(todo)
            # wait until metadata shows them
            for _ in range(50):
                if {s.name for s in todo} <= set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.1)
        return [s.name for s in todo]
    finally:
        await admin.close()
