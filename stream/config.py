"""PlayGuard configuration: one pydantic-settings object, env vars ``PLAYGUARD_*``.

Every option can be set by environment variable (``PLAYGUARD_BOOTSTRAP_SERVERS``,
``PLAYGUARD_TOPIC_PREFIX``, ...) or a ``.env`` file; CLI options override them.
Nested detector thresholds use ``__`` (``PLAYGUARD_DETECTION__ALERT_THRESHOLD``).

Source: pydantic-settings (https://docs.pydantic.dev/latest/concepts/pydantic_settings/).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_ROOT = Path(__file__).resolve().parent.parent
#: Default real-data folder: ``../shared/data`` beside the repository.
DEFAULT_DATA_DIR = _REPO_ROOT.parent / "shared" / "data"


class TopicNames(BaseModel):
    """Resolved topic names, all under one prefix (CONVENTIONS.md)."""

    plays: str
    plays_by_artist: str
    audio_ingested: str
    alerts: str
    qc_reports: str
    deadletter: str
    changelog: str

    def all(self) -> list[str]:
        """Every topic name, in a stable order."""
        return list(self.model_dump().values())


class DetectionSettings(BaseModel):
    """Detector thresholds and windows (play fraud)."""

    #: Fixed event-time window of play-fraud alerts, seconds.
    window_s: int = 3600
    #: Tail probability under which a calibrated score alerts.
    alert_tail_probability: float = 1e-4
    #: Rules detector: plays of one track by one account in one day.
    rule_track_plays_per_day: int = 100
    #: Rules detector: plays by one account in one 30-day window.
    rule_plays_per_month: int = 1000
    #: State of an entity is dropped after this much event-time inactivity (s).
    state_ttl_s: int = 7 * 24 * 3600


class QCSettings(BaseModel):
    """Audio-QC limits and profile."""

    profile: str = "streaming"
    #: Roots under which ``audio.ingested`` URIs may point (empty: data audio dir).
    allowed_roots: list[Path] = Field(default_factory=list)
    cpu_seconds: int = 60
    memory_mb: int = 2048
    wall_seconds: float = 120.0
    max_file_mb: int = 2048
    concurrency: int = 2


class Settings(BaseSettings):
    """All PlayGuard settings (env prefix ``PLAYGUARD_``).

    Kafka security: ``security_protocol`` is ``PLAINTEXT``, ``SSL``,
    ``SASL_PLAINTEXT`` or ``SASL_SSL``; SASL credentials come from the
    environment (e.g. a Kubernetes Secret), never from the repository.
    """

    model_config = SettingsConfigDict(
        env_prefix="PLAYGUARD_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    app_id: str = "playguard"
    topic_prefix: str = "playguard."
    partitions: int = 4
    replication_factor: int = 1
    #: Largest accepted record value, bytes (bigger ones: ``oversized``).
    max_record_bytes: int = 64 * 1024
    #: Snapshot chunk size, bytes; stays under the broker's max message size.
    snapshot_chunk_bytes: int = 512 * 1024
    #: Compression of state snapshots: ``snapshot_codec`` at
    #: ``snapshot_compress_level`` (0: uncompressed; every form is read back).
    #: zstd level 1 turns a 33-MB catalog state into 3.3 MB in 36 ms (zlib
    #: level 1: 189 ms, which is why compression was off until 2026-11-22);
    #: it runs after the stage lock is released, in a thread of its own, and
    #: spares the broker 90% of the snapshot bytes (RELIABILITY.md,
    #: "Forwards merged per micro-batch, paced snapshots").
    snapshot_codec: Literal["zstd", "zlib"] = "zstd"
    snapshot_compress_level: int = Field(1, ge=0)

    # Faust / consumer-group timing (short defaults suit the embedded broker).
    broker_rebalance_timeout_s: float = 10.0
    broker_session_timeout_s: float = 6.0
    broker_heartbeat_interval_s: float = 1.0
    broker_max_poll_interval_s: float = 300.0
    commit_interval_s: float = 2.0
    #: State snapshots per partition are written at least this often (s).
    snapshot_interval_s: float = 5.0
    #: The same for the catalog stage. Its pending messages are forwarded
    #: batches (a few per second, held without their payload until acked),
    #: while its state is large (up to 17 MB per partition at soak rates):
    #: every 5 s its snapshots held the stage for 0.05-0.17 s each, 400 times
    #: in 10 minutes, and the batch after each one waited (RELIABILITY.md,
    #: "Fewer broker batches ..."). A crash re-reads at most this much of
    #: ``plays.by_artist``.
    catalog_snapshot_interval_s: float = Field(30.0, gt=0)
    #: The snapshot interval stretches to this many times the summed cost of
    #: the partitions' last snapshots (20: snapshots take at most ~5% of a
    #: stage's time), never past ``snapshot_max_interval_s``.
    snapshot_cost_factor: float = Field(20.0, gt=0)
    #: Upper bound of the stretched snapshot interval (s): the interval grows
    #: with the snapshots' cost, but never past this, so commits (and the
    #: records re-read after a crash) lag by at most this much.
    snapshot_max_interval_s: float = 60.0
    #: Longest time a fetch request may wait at the broker for new records
    #: (ms). Faust hard-codes 1500 ms; the embedded broker (Tansu) holds a
    #: parked fetch for its whole wait even when records arrive meanwhile, so
    #: records waited up to 1.5 s before the worker saw them
    #: (RELIABILITY.md, "Soak"). A real Kafka broker answers as soon as data
    #: arrives, so a short wait only costs a few more idle fetches.
    consumer_fetch_max_wait_ms: int = Field(50, ge=1)
    #: Freeze the objects alive when the worker starts (modules, compiled
    #: detector kernels: about 300k objects) out of the cyclic garbage
    #: collector's reach (``gc.freeze``), so full collections stop scanning
    #: them; they blocked the event loop for 0.2-0.6 s about every 20 s.
    gc_freeze: bool = True
    #: ``gc.set_threshold`` of the worker, applied at start (CPython defaults:
    #: 700, 10, 10). At 15k plays/s the defaults ran a full (generation-2)
    #: collection every ~2 s over the growing model state, 0.3 s each (max
    #: 1 s) and collecting nothing: 29 s of a 215 s soak with the event loop
    #: stopped (RELIABILITY.md, "Soak"). Objects still die by reference
    #: counting; only cyclic garbage waits longer.
    gc_thresholds: tuple[int, int, int] = (50_000, 20, 100)
    #: Optional JSONL file of per-batch, per-snapshot and per-alert timings
    #: (latency diagnosis; ``bench/soak.py --trace``). None: no trace.
    trace_path: Path | None = None

    # Micro-batches
    #: Plays per account-stage micro-batch. Each batch forwards one record
    #: per ``plays.by_artist`` partition, and the embedded broker's fetch
    #: cost grows with the record batches a partition holds: at 20k plays/s,
    #: 2,000 made 11 forwarded batches/s per partition and the broker's CPU
    #: 0.32 of a core; 8,000 gave 0.21, p99 1.08 s instead of 2.1 s, and the
    #: same worker CPU (RELIABILITY.md, "The embedded broker's fetch cost").
    #: Batches only fill under load: a caught-up worker takes what arrived
    #: within ``batch_within_s``.
    batch_max_records: int = Field(8000, ge=1)
    batch_within_s: float = 0.05
    #: Records of ``plays.by_artist`` per catalog-stage micro-batch. Each
    #: holds the plays one account-stage micro-batch sends to the partition
    #: (about ``batch_max_records`` / ``partitions``: 2,000 at the defaults);
    #: 2,000 records made catalog batches of ~14k plays (0.1-0.5 s of one
    #: event loop) at 20k plays/s (RELIABILITY.md, "Soak"); 4 keep a step
    #: at ~8k plays, as 16 did when each input partition sent its own record.
    catalog_batch_max_records: int = Field(4, ge=1)

    # Time (CONVENTIONS.md, "Time")
    allowed_lateness_s: float = 3600.0
    max_clock_skew_s: float = 300.0
    #: Dedupe memory: event ids kept per time bucket (s of event time), and
    #: buckets kept (3 h in all), at most ``dedupe_max_ids`` ids per
    #: partition (oldest buckets dropped first). With live traffic every
    #: play of a partition falls in the current bucket, so a bucket must
    #: stay under the cap: 60-s buckets hold 2M ids up to 33k plays/s per
    #: partition (one-hour buckets could not be trimmed at all).
    dedupe_bucket_s: int = Field(60, gt=0)
    dedupe_buckets: int = Field(180, gt=0)
    dedupe_max_ids: int = Field(2_000_000, gt=0)

    # Metrics
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9308

    # Data (real data is optional; paths are checked where used)
    data_dir: Path = DEFAULT_DATA_DIR
    listening_dir: Path | None = None
    audio_dir: Path | None = None

    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    qc: QCSettings = Field(default_factory=QCSettings)

    @model_validator(mode="after")
    def _snapshot_codec_level(self) -> "Settings":
        """The level must be one the codec has (:func:`stream.snapshots.check_codec`)."""
        from stream.snapshots import check_codec

        check_codec(self.snapshot_codec, self.snapshot_compress_level)
        return self

    @property
    def listening_path(self) -> Path:
        """Folder of the listening exports (``<data_dir>/listening`` by default)."""
        return self.listening_dir or self.data_dir / "listening"

    @property
    def audio_path(self) -> Path:
        """Folder of the real music (``<data_dir>/audio`` by default)."""
        return self.audio_dir or self.data_dir / "audio"

    @cached_property
    def topics(self) -> TopicNames:
        """Topic names under :attr:`topic_prefix`."""
        p = self.topic_prefix
        return TopicNames(
            plays=f"{p}plays",
            plays_by_artist=f"{p}plays.by_artist",
            audio_ingested=f"{p}audio.ingested",
            alerts=f"{p}alerts",
            qc_reports=f"{p}qc.reports",
            deadletter=f"{p}deadletter",
            changelog=f"{p}changelog",
        )

    def qc_roots(self) -> list[Path]:
        """Roots that ``audio.ingested`` URIs may point into (resolved)."""
        roots = self.qc.allowed_roots or [self.audio_path]
        return [Path(os.path.realpath(r)) for r in roots]

    def kafka_client_kwargs(self) -> dict:
        """Security keyword arguments shared by aiokafka and kafka-python clients."""
        kw: dict = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            ctx = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
            if self.ssl_certfile:
                ctx.load_cert_chain(
                    str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
                )
            kw["ssl_context"] = ctx
        return kw


def get_settings(**overrides) -> Settings:
    """Build :class:`Settings` from the environment, with keyword overrides."""
    return Settings(**overrides)
