"""Defect checks on synthetic signals, alerts, catalog model and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from audio_qc.alerts import report_alerts
from audio_qc.analyze import declared_defects, measure_and_check, profile_defects
from audio_qc.catalog import CatalogOutlierModel
from audio_qc.profiles import PROFILES, get_profile
from detectors.serialize import dumps, loads
from stream.schemas import AudioIngested, Defect, QCMeasurements, QCReport, Severity, audio_alert_id

FS = 44100


def music_like(seconds: float = 20.0, seed: int = 0) -> np.ndarray:
    """Band-limited stereo 'music': partials with slow envelopes plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    mono = env * sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / (i + 1)
                     for i, f in enumerate((110, 220, 330, 440, 880, 1760, 3520)))
    noise = rng.standard_normal((len(t), 2)) * 0.003
    x = mono[:, None] * np.array([1.0, 0.9]) + noise
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


def codes(x, codec="pcm_f32"):
    return {d["code"] for d in measure_and_check(x, FS, codec)[1]}


def test_clean_signal_has_no_defects():
    meas, defects = measure_and_check(music_like(), FS, "pcm_f32")
    assert defects == []
    assert meas["integrated_lufs"] is not None and meas["lr_correlation"] > 0.5
    assert len(meas["dc_offset"]) == 2


def test_each_damage_gives_its_code():
    x = music_like()
    clipped = np.clip(x * 8, -1, 1)
    assert "clipping" in codes(clipped)
    assert "clipping" in codes((clipped * 0.5).astype(np.float32))
    g = x.copy()
    g[5 * FS : 5 * FS + int(0.08 * FS)] = 0
    assert "gap" in codes(g)
    short = x.copy()
    short[5 * FS : 5 * FS + int(0.03 * FS)] = 0  # 30 ms: under the 50 ms minimum
    assert "gap" not in codes(short)
    d = x.copy()
    d[:, 0] += 0.05
    assert "dc_offset" in codes(d)
    p = x.copy()
    p[:, 1] *= -1
    assert "polarity_inverted" in codes(p)
    m = x.copy()
    m[:, 1] = m[:, 0]
    assert "dual_mono" in codes(m)
    c = x.copy()
    c[7 * FS, 0] += 0.6
    assert "click" in codes(c)
    pad = np.zeros((12 * FS, 2), np.float32)
    assert "leading_silence" in codes(np.concatenate([pad, x]))
    assert "trailing_silence" in codes(np.concatenate([x, pad]))
    assert codes(np.zeros_like(x)) == {"silence"}


def test_lowpass_is_bandwidth_limited_but_lossy_cutoff_is_not():
    from scipy.signal import resample_poly

    x = music_like() + np.random.default_rng(1).standard_normal((20 * FS, 2)).astype(np.float32) * 0.05
    low = resample_poly(resample_poly(x, 160, 441, axis=0), 441, 160, axis=0)[: len(x)].astype(np.float32)
    assert "bandwidth_limited" in codes(low, "pcm_s16")
    lossy_like = resample_poly(resample_poly(x, 320, 441, axis=0), 441, 320, axis=0)[: len(x)].astype(np.float32)
    assert "bandwidth_limited" not in codes(lossy_like, "vorbis")  # 16 kHz edge: normal for Vorbis


def test_profiles_and_declared_metadata():
    meas = {"integrated_lufs": -9.0, "true_peak_dbtp": 0.5}
    got = {d["code"] for d in profile_defects(meas, get_profile("streaming"))}
    assert got == {"loudness_out_of_range", "true_peak_over"}
    assert profile_defects({"integrated_lufs": -23.2, "true_peak_dbtp": -3.0}, PROFILES["ebu_r128"]) == []
    assert profile_defects({"integrated_lufs": None, "true_peak_dbtp": None}, PROFILES["streaming"]) == []
    with pytest.raises(ValueError, match="known"):
        get_profile("nope")
    res = {"sample_rate_hz": 44100, "channels": 2, "duration_s": 100.0}
    dec = AudioIngested(file_id="f", uri="u", sample_rate_hz=48000, channels=1, duration_s=130.0)
    assert {d["code"] for d in declared_defects(res, dec)} == {
        "sample_rate_mismatch", "channel_mismatch", "duration_mismatch"}
    ok = AudioIngested(file_id="f", uri="u", sample_rate_hz=44100, channels=2, duration_s=100.5)
    assert declared_defects(res, ok) == []


def _report(defects, file_id="file-1", outcome="warn", **meas):
    return QCReport(file_id=file_id, uri="file:///x.ogg", qc_version="qc-test", profile="streaming",
                    duration_s=meas.pop("duration_s", 200.0), measurements=QCMeasurements(**meas),
                    defects=defects, outcome=outcome)


def test_report_alerts_rule_and_ids():
    defects = [
        Defect(code="dc_offset", severity=Severity.warning, detail="dc"),
        Defect(code="polarity_inverted", severity=Severity.uncertain, detail="maybe"),
        Defect(code="note", severity=Severity.info, detail="info only"),
        Defect(code="dc_offset", severity=Severity.error, detail="worse"),
    ]
    alerts = report_alerts(_report(defects))
    assert [a.reasons[0].split(":")[0] for a in alerts] == ["dc_offset", "polarity_inverted"]
    a = alerts[0]
    assert a.alert_id == audio_alert_id("audio_qc", "file-1", "dc_offset", "qc-test")
    assert a.severity == Severity.error and a.entity_type == "file" and a.entity_id == "file-1"
    assert a.kind.value == "audio_qc" and a.window_start is None and a.window_end is None
    assert report_alerts(_report(defects))[0].alert_id == a.alert_id  # deterministic
    assert report_alerts(_report([], outcome="pass")) == []


def test_catalog_outlier_model_flags_and_round_trips():
    rng = np.random.default_rng(3)

    def rep(i, lufs, tp, lra=6.0):
        return _report([], file_id=str(i), integrated_lufs=lufs, true_peak_dbtp=tp,
                       loudness_range_lu=lra + rng.normal(), lr_correlation=0.6 + 0.05 * rng.normal(),
                       duration_s=200 + 30 * rng.normal())

    model = CatalogOutlierModel(min_files=20)
    hits = [model.update_and_score(rep(i, -14 + rng.normal(), -1 + rng.normal())) for i in range(80)]
    assert sum(h is not None for h in hits) <= 1
    snap = loads(dumps(model.state_dict()))
    other = CatalogOutlierModel()
    other.load_state_dict(snap)
    odd = rep(999, -40.0, -25.0, lra=30.0)
    d = other.update_and_score(odd)
    assert d is not None and d.code == "catalog_outlier" and d.severity == Severity.uncertain
    assert "integrated_lufs" in d.detail or "true_peak_dbtp" in d.detail or "loudness_range_lu" in d.detail
    assert model.score(odd) == pytest.approx(other.score(odd) if other.n_files_ == model.n_files_ else model.score(odd))
    assert model.update_and_score(_report([], integrated_lufs=None)) is None
    with pytest.raises(ValueError):
        other.load_state_dict({"model": "x"})


@pytest.fixture(scope="module")
def cli_app():
    from audio_qc.cli import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    return app


def test_cli_json_table_and_exit_codes(tmp_path, cli_app):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(str(folder / "good.wav"), music_like(5.0), FS, subtype="FLOAT")
    (folder / "bad.ogg").write_bytes(b"not audio" * 100)
    (folder / "notes.txt").write_text("ignored: not an audio extension")
    runner = CliRunner()
    res = runner.invoke(cli_app, ["qc", str(folder), "--json"])
    assert res.exit_code == 1, res.output  # bad.ogg fails (decode_error >= error)
    reports = json.loads(res.stdout)
    assert sorted(Path(r["uri"]).name for r in reports) == ["bad.ogg", "good.wav"]
    assert {r["outcome"] for r in reports} == {"fail", "warn"}
    res = runner.invoke(cli_app, ["qc", str(folder / "good.wav"), "--fail-on", "critical"])
    assert res.exit_code == 0 and "good.wav" in res.stdout
    res = runner.invoke(cli_app, ["qc", str(folder / "good.wav"), "--fail-on", "warning"])
    assert res.exit_code == 1  # -23 LUFS-ish file is out of the streaming profile: a warning
    decl = tmp_path / "declared.json"
    decl.write_text(json.dumps([{"file_id": "g1", "uri": "good.wav", "sample_rate_hz": 48000}]))
    res = runner.invoke(cli_app, ["qc", str(folder / "good.wav"), "--json", "--declared", str(decl)])
    rep = json.loads(res.stdout)[0]
    assert rep["file_id"] == "g1" and "sample_rate_mismatch" in {d["code"] for d in rep["defects"]}
    for args in (["qc", str(tmp_path / "missing.wav")], ["qc", str(folder), "--profile", "nope"],
                 ["qc", str(folder), "--fail-on", "bogus"], ["qc", str(folder), "--declared", str(folder / "notes.txt")]):
        res = runner.invoke(cli_app, args)
        assert res.exit_code == 2 and "Traceback" not in res.output


def test_click_events_estimate_the_impulse_amplitude():
    from audio_qc.signal_checks import click_candidates, click_events

    x = music_like(6.0, seed=4)
    loud = (x * 2.0).astype(np.float32)  # peaks at 0.8: a loud passage
    loud[3 * FS + 123, 1] -= 0.3
    idx, score, amp, expl = click_events(loud[:, 1])
    k = int(np.argmax(score))
    assert abs(int(idx[k]) - (3 * FS + 123)) <= 1
    assert amp[k] == pytest.approx(-0.3, abs=0.03) and expl[k] > 0.8
    assert [(c, i) for c, i, _ in click_candidates(np.ascontiguousarray(loud.T), FS)] == [(1, int(idx[k]))]
    # an abrupt (but band-limited) onset after silence is not an impulse
    onset = np.zeros(4 * FS, np.float32)
    t = np.arange(2 * FS) / FS
    onset[2 * FS :] = 0.5 * np.sin(2 * np.pi * 220 * t) * np.exp(-3 * t)
    assert click_candidates(np.stack([onset, onset]), FS) == []


def test_clipping_survives_a_lossy_encode(tmp_path):
    from audio_qc.corrupt import encode_vorbis

    x = music_like(12.0, seed=2)
    for name, y, want in (("clean", x * 2.0, False), ("clipped", np.clip(x * 8, -1, 1), True),
                          ("clipped_att", np.clip(x * 8, -1, 1) * 0.5, True)):
        p = tmp_path / f"{name}.ogg"
        encode_vorbis(y.astype(np.float32), FS, p)
        dec, sr = sf.read(str(p), dtype="float32", always_2d=True)
        got = measure_and_check(dec, sr, "vorbis")[1]
        clip = [d for d in got if d["code"] == "clipping"]
        assert bool(clip) == want, (name, got)
        if want:
            assert "lossy" in clip[0]["detail"]  # no flat runs survive the codec


def test_click_events_at_block_edges_and_in_the_last_block():
    """The kernel keeps only a ring of four residual blocks: impulses on block
    boundaries, in the first block and in the last whole block (next to the
    tail) must all be found, at their own sample, with their amplitude."""
    from audio_qc.signal_checks import click_events

    rng = np.random.default_rng(5)
    n = 1024 * 40 + 300  # 300-sample tail after the last whole block
    t = np.arange(n) / 44100
    x = (0.2 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)
    pos = [200, 1023, 2048, 4095, 20480, 1024 * 39 + 500, 1024 * 40 - 1]
    for p in pos:
        x[p] += 0.5
    idx, score, amp, _ = click_events(x)
    assert sorted(idx[score >= 20].tolist()) == pos
    # the last sample of the last whole block: the matched filter sees only
    # the residual up to the end of that block (the tail is not analysed)
    assert sorted(idx[score >= 50].tolist()) == pos[:-1]
    for p in pos[:-1]:
        assert abs(float(amp[idx == p][0]) - 0.5) < 0.1
    with pytest.raises(ValueError):
        click_events(x, order=600)
