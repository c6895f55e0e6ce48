"""Schemas: severity order, validation, deterministic ids, JSON Schema export."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from stream.schemas import (
    Alert, Defect, PlayEvent, Severity, audio_alert_id, group_entity_id, outcome_for,
    window_alert_id, window_bounds,
)


def test_severity_order_and_max():
    order = [Severity.info, Severity.uncertain, Severity.warning, Severity.error, Severity.critical]
    assert sorted(reversed(order)) == order
    assert Severity.uncertain < Severity.warning <= Severity.warning < Severity.error
    assert max(Severity.warning, Severity.critical, Severity.info) is Severity.critical


def test_play_event_validation_and_country_normalisation():
    base = dict(event_id="e", ts="2024-05-01T10:00:00", account_id="a", track_id="t", artist_id="x", ms_played=1)
    ev = PlayEvent.model_validate({**base, "country": "ZZ"})
    assert ev.country is None and ev.ts.tzinfo is not None and ev.ts.utcoffset().total_seconds() == 0
    assert PlayEvent.model_validate({**base, "country": "DE"}).country == "DE"
    for bad in ({"country": "Germany"}, {"ms_played": -1}, {"ms_played": 24 * 3600 * 1000 + 1},
                {"unknown_field": 1}, {"ms_played": "12"}):
        with pytest.raises(ValidationError):
            PlayEvent.model_validate({**base, **bad})
    with pytest.raises(ValidationError):
        PlayEvent.model_validate({k: v for k, v in base.items() if k != "account_id"})


def test_alert_ids_are_deterministic_and_distinct():
    ws, we = window_bounds(1_700_000_123.0, 3600)
    assert ws.timestamp() % 3600 == 0 and (we - ws).total_seconds() == 3600
    a = window_alert_id("d", "account", "u1", ws, we)
    assert a == window_alert_id("d", "account", "u1", ws, we)
    assert a != window_alert_id("d", "account", "u2", ws, we)
    assert a != window_alert_id("d", "account", "u1", we, we.replace(hour=(we.hour + 1) % 24))
    assert audio_alert_id("qc", "f", "clipping", "1") != audio_alert_id("qc", "f", "gap", "1")
    assert group_entity_id(["b", "a"]) == group_entity_id({"a", "b"})
    assert group_entity_id(["a", "b"]).startswith("group:")
    with pytest.raises(ValueError):
        window_bounds(1.0, 0)


def test_outcome_rules():
    d = lambda sev: Defect(code="x", severity=sev)  # noqa: E731
    assert outcome_for([]) == "pass"
    assert outcome_for([d(Severity.info)]) == "pass"
    assert outcome_for([d(Severity.info), d(Severity.uncertain)]) == "warn"
    assert outcome_for([d(Severity.warning)]) == "warn"
    assert outcome_for([d(Severity.warning), d(Severity.error)]) == "fail"
    assert outcome_for([d(Severity.info)], qc_finished=False) == "error"


def test_alert_rejects_negative_or_nan_score():
    base = dict(alert_id="x", kind="play_fraud", detector="d", entity_type="account", entity_id="u",
                severity="warning", created_at=datetime.now(UTC))
    Alert.model_validate({**base, "score": 0.5})
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            Alert.model_validate({**base, "score": bad})


def test_schema_command_exports_json_schema(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stream.cli", "schema", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["Alert.schema.json", "AudioIngested.schema.json", "PlayEvent.schema.json", "QCReport.schema.json"]
    doc = json.loads((tmp_path / "PlayEvent.schema.json").read_text())
    assert doc["additionalProperties"] is False
    assert {"event_id", "ts", "account_id", "track_id", "artist_id", "ms_played"} <= set(doc["required"])
    r = subprocess.run([sys.executable, "-m", "stream.cli", "schema", "Nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unknown schema" in r.stderr
