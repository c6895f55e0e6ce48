"""Wire schemas of PlayGuard (pydantic v2, JSON on the wire).

This module is the single home of the contracts fixed in ``CONVENTIONS.md``:

* :class:`Severity`, the one ordered enum shared by alerts and QC defects
  (``info < uncertain < warning < error < critical``);
* :class:`PlayEvent` (topic ``plays``), :class:`AudioIngested`
  (``audio.ingested``), :class:`Alert` (``alerts``) and :class:`QCReport`
  (``qc.reports``);
* :class:`DeadLetterReason`, the fixed set of dead-letter reasons, used both as
  the ``reason`` header and as a metric label;
* the deterministic identities :func:`play_event_id`, :func:`window_alert_id`,
  :func:`audio_alert_id` and :func:`group_entity_id`.

It imports neither Kafka nor Faust, so ``detectors/``, ``audio_qc/`` and
``playguard eval`` can use it freely.

Unknown-field policy: every schema forbids unknown fields (``extra="forbid"``).
A producer that adds a field gets its record dead-lettered as ``schema_error``
with the field named in the ``detail`` header, rather than silently losing data.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
)

#: Largest ``ms_played`` accepted: 24 h in ms. Real plays reach 22 h.
MAX_MS_PLAYED = 24 * 3600 * 1000
#: Timestamps before this instant are dead-lettered as ``ts_out_of_range``.
MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
#: Version of the alert and report model family, stamped in ``model_version``.
MODEL_VERSION = "playguard-0.1.0"


class Severity(str, enum.Enum):
    """Ordered severity of an alert or a QC defect.

    Order: ``info < uncertain < warning < error < critical``. ``uncertain``
    marks a finding the evidence cannot settle (for example near-zero L/R
    correlation in orchestral music). Comparison operators follow that order,
    so ``--fail-on SEVERITY`` is ``worst >= Severity(SEVERITY)``.

    Source: CONVENTIONS.md, "Severities".

    >>> Severity.warning > Severity.uncertain
    True
    >>> max([Severity.info, Severity.error, Severity.warning]).value
    'error'
    """

    info = "info"
    uncertain = "uncertain"
    warning = "warning"
    error = "error"
    critical = "critical"

    @property
    def rank(self) -> int:
        """Position in the order, 0 for ``info`` to 4 for ``critical``."""
        return _SEVERITY_ORDER[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank >= other.rank


_SEVERITY_ORDER = {s: i for i, s in enumerate(Severity)}


class DeadLetterReason(str, enum.Enum):
    """Fixed set of dead-letter reasons (header ``reason`` and metric label).

    Source: CONVENTIONS.md, "Dead-letter reasons".
    """

    invalid_utf8 = "invalid_utf8"
    invalid_json = "invalid_json"
    schema_error = "schema_error"
    oversized = "oversized"
    value_out_of_range = "value_out_of_range"
    too_late = "too_late"
    ts_in_future = "ts_in_future"
    ts_out_of_range = "ts_out_of_range"
    uri_rejected = "uri_rejected"


class AlertKind(str, enum.Enum):
    """Kind of an alert: play fraud or audio QC."""

    play_fraud = "play_fraud"
    audio_qc = "audio_qc"


EntityType = Literal["account", "track", "artist", "ip", "device", "file", "group"]
QCOutcome = Literal["pass", "warn", "fail", "error"]


def _digest(*parts: object) -> str:
    """SHA-256 hex digest (first 32 hex digits) of ``parts`` joined by NUL."""
    text = "\x00".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def play_event_id(
    account_id: str, ts: datetime | str, track_id: str, ms_played: int, extra: str = ""
) -> str:
    """Deterministic ``event_id`` for a source without one.

    Args:
        account_id, track_id: entity ids.
        ts: end of play (UTC), datetime or ISO-8601 string.
        ms_played: play length in ms.
        extra: anything else that separates two events (e.g. a replay pass,
            or a row ordinal for exact repeats in a source file).

    Returns:
        32 hex digits. The same inputs always give the same id.
    """
    if isinstance(ts, datetime):
        ts = ts.astimezone(UTC).isoformat()
    return _digest("play", account_id, ts, track_id, ms_played, extra)


def window_alert_id(
    detector: str,
    entity_type: str,
    entity_id: str,
    window_start: datetime | None,
    window_end: datetime | None,
) -> str:
    """``alert_id`` of a play-fraud alert: digest of (detector, entity_type,
    entity_id, window_start, window_end). Source: CONVENTIONS.md."""
    ws = window_start.astimezone(UTC).isoformat() if window_start else None
    we = window_end.astimezone(UTC).isoformat() if window_end else None
    return _digest(detector, entity_type, entity_id, ws, we)


def audio_alert_id(detector: str, file_id: str, defect_code: str, qc_version: str) -> str:
    """``alert_id`` of an audio-QC alert: digest of (detector, file_id, defect
    code, qc_version). Source: CONVENTIONS.md."""
    return _digest(detector, file_id, defect_code, qc_version)


def group_entity_id(member_account_ids: list[str] | set[str]) -> str:
    """``entity_id`` of a group alert: ``group:`` + digest of sorted members."""
    return "group:" + _digest(*sorted(member_account_ids))


def window_bounds(ts_s: float, window_s: int) -> tuple[datetime, datetime]:
    """Fixed event-time window containing ``ts_s`` (Unix seconds).

    Windows are aligned to whole multiples of ``window_s`` seconds since the
    Unix epoch, so a replay after a crash lands in the same windows.

    Raises:
        ValueError: if ``window_s`` is not positive.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    start = int(ts_s // window_s) * window_s
    return (
        datetime.fromtimestamp(start, UTC),
        datetime.fromtimestamp(start + window_s, UTC),
    )


def _utc(v: datetime) -> datetime:
    if v.tzinfo is None:
        return v.replace(tzinfo=UTC)
    return v.astimezone(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


class PlayEvent(_Strict):
    """One listening event (a "play"), the value of topic ``plays``.

    ``ts`` is event time: the end of the play, in UTC (naive datetimes are read
    as UTC). ``ms_played`` is in milliseconds, 0 to 24 h. ``country`` is ISO
    3166-1 alpha-2; ``ZZ`` (unknown) becomes ``None``.

    Raises:
        pydantic.ValidationError: on a wrong type, a missing or unknown field,
            or a value out of range (the stream maps these to dead-letter
            reasons ``schema_error`` / ``value_out_of_range``).
    """

    event_id: Annotated[str, Field(min_length=1, max_length=256)]
    ts: datetime
    account_id: Annotated[str, Field(min_length=1, max_length=256)]
    track_id: Annotated[str, Field(min_length=1, max_length=512)]
    artist_id: Annotated[str, Field(min_length=1, max_length=512)]
    ms_played: Annotated[int, Field(ge=0, le=MAX_MS_PLAYED, strict=True)]
    track_duration_ms: Annotated[int, Field(ge=0, le=MAX_MS_PLAYED, strict=True)] | None = None
    platform: Annotated[str, Field(max_length=256)] | None = None
    device_id: Annotated[str, Field(max_length=256)] | None = None
    ip: Annotated[str, Field(max_length=64)] | None = None
    country: str | None = None
    reason_start: Annotated[str, Field(max_length=64)] | None = None
    reason_end: Annotated[str, Field(max_length=64)] | None = None
    shuffle: bool | None = None
    skipped: bool | None = None
    offline: bool | None = None

    @field_validator("ts")
    @classmethod
    def _ts_utc(cls, v: datetime) -> datetime:
        return _utc(v)

    @field_validator("country")
    @classmethod
    def _country(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if v == "ZZ" or v == "":
            return None
        if len(v) != 2 or not v.isascii() or not v.isalpha() or not v.isupper():
            raise ValueError("country must be ISO 3166-1 alpha-2 (two upper-case letters)")
        return v


class AudioIngested(_Strict):
    """Notice of a newly ingested audio file (topic ``audio.ingested``).

    ``uri`` is a local path or a ``file://`` URI; other schemes are rejected by
    the stream as ``uri_rejected``. Declared metadata (``sample_rate_hz`` in Hz,
    ``channels``, ``duration_s`` in seconds, ``codec``) drives the mismatch
    checks of audio QC.
    """

    file_id: Annotated[str, Field(min_length=1, max_length=256)]
    uri: Annotated[str, Field(min_length=1, max_length=4096)]
    sample_rate_hz: Annotated[int, Field(gt=0, le=1_536_000)] | None = None
    channels: Annotated[int, Field(gt=0, le=64)] | None = None
    duration_s: Annotated[float, Field(ge=0, le=7 * 24 * 3600)] | None = None
    codec: Annotated[str, Field(max_length=64)] | None = None
    track_id: Annotated[str, Field(max_length=512)] | None = None


class FeatureValue(BaseModel):
    """Actual versus typical value of one contributing feature."""

    model_config = ConfigDict(extra="forbid")
    actual: float | None
    typical: float | None


class Alert(_Strict):
    """An alert (topic ``alerts``, key ``entity_id``).

    ``alert_id`` is deterministic (see :func:`window_alert_id`,
    :func:`audio_alert_id`), so consumers drop duplicates that at-least-once
    delivery may produce. ``score`` is non-negative, higher is more anomalous.
    ``window_start``/``window_end`` are the fixed event-time window of a
    play-fraud alert and ``None`` for audio QC.
    """

    alert_id: str
    kind: AlertKind
    detector: str
    entity_type: EntityType
    entity_id: str
    score: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    severity: Severity
    reasons: list[str] = Field(default_factory=list)
    features: dict[str, FeatureValue] = Field(default_factory=dict)
    window_start: datetime | None = None
    window_end: datetime | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    model_version: str = MODEL_VERSION
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    # Record timestamp (Unix seconds) of the newest ``plays`` record behind the
    # alert; drives ``playguard_alert_latency_seconds``. Not serialised.
    _source_record_ts: float | None = PrivateAttr(default=None)


class Defect(BaseModel):
    """One QC defect: ``{code, severity, detail, start_s, end_s}`` (seconds)."""

    model_config = ConfigDict(extra="forbid")
    code: str
    severity: Severity
    detail: str = ""
    start_s: float | None = None
    end_s: float | None = None


class QCMeasurements(BaseModel):
    """BS.1770-4 / EBU R128 measurements of one file.

    Loudness in LUFS, range in LU, peaks in dBTP / dBFS, ``dc_offset`` per
    channel (linear, full scale 1.0), ``lr_correlation`` in [-1, 1] or ``None``
    for mono. An undefined value is ``None``, never -inf or NaN.
    """

    model_config = ConfigDict(extra="forbid")
    integrated_lufs: float | None = None
    loudness_range_lu: float | None = None
    max_momentary_lufs: float | None = None
    max_short_term_lufs: float | None = None
    true_peak_dbtp: float | None = None
    sample_peak_dbfs: float | None = None
    dc_offset: list[float] = Field(default_factory=list)
    lr_correlation: float | None = None


class QCReport(BaseModel):
    """One file's QC report (value of ``qc.reports``; element of
    ``playguard qc --json``). Fields exactly as CONVENTIONS.md fixes them.

    ``outcome``: ``pass`` (no defect above info), ``warn`` (worst is uncertain
    or warning), ``fail`` (worst is error or critical), ``error`` (QC itself
    could not finish).
    """

    model_config = ConfigDict(extra="forbid")
    file_id: str
    uri: str
    track_id: str | None = None
    checked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    qc_version: str
    profile: str
    decoder: str | None = None
    codec: str | None = None
    duration_s: float | None = None
    sample_rate_hz: int | None = None
    channels: int | None = None
    measurements: QCMeasurements = Field(default_factory=QCMeasurements)
    defects: list[Defect] = Field(default_factory=list)
    outcome: QCOutcome


def outcome_for(defects: list[Defect], qc_finished: bool = True) -> QCOutcome:
    """QC outcome from a defect list, as CONVENTIONS.md fixes it.

    Returns ``"error"`` when ``qc_finished`` is false, else ``"pass"``,
    ``"warn"`` or ``"fail"`` from the worst severity.
    """
    if not qc_finished:
        return "error"
    if not defects:
        return "pass"
    worst = max(d.severity for d in defects)
    if worst >= Severity.error:
        return "fail"
    if worst >= Severity.uncertain:
        return "warn"
    return "pass"


SCHEMAS: dict[str, type[BaseModel]] = {
    "PlayEvent": PlayEvent,
    "AudioIngested": AudioIngested,
    "Alert": Alert,
    "QCReport": QCReport,
}
