"""`playguard demo` end to end on a subsample: one command, its own broker, a summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stream.schemas import Alert

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_on_a_subsample(listening_dir, tmp_path):
    out = tmp_path / "alerts.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--out", str(out), "--window", "3",
         "--accounts", "40", "--real-accounts", "12", "--audio-limit", "3", "--max-seconds", "200"],
        capture_output=True, text=True, timeout=400, env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "alerts by detector" in r.stdout and "metrics: http://127.0.0.1:" in r.stdout
    assert out.exists()
    alerts = [Alert.model_validate_json(line) for line in out.read_text().splitlines() if line.strip()]
    assert len({a.alert_id for a in alerts}) == len(alerts)  # deduped by alert_id
    assert "audio QC:" in r.stdout


def test_demo_without_data_says_what_it_needs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stream.cli", "demo", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "PLAYGUARD_DATA_DIR" in r.stderr and "apt-get install" in r.stderr
