"""``playguard demo``: the whole service on one machine, in one command.

1. start the embedded broker (unless ``--bootstrap`` names a Kafka) and a
   worker process with every play detector and audio QC;
2. replay the newest ``window_days`` of every real listening history
   (CONVENTIONS.md replay rules), grown to ``n_accounts`` benign accounts
   with labelled fraud injected by :mod:`stream.fraud.simulate` when present;
3. send an ``AudioIngested`` notice for every real music file;
4. wait for the worker to consume everything, read the ``alerts`` topic,
   write the alerts to a JSONL file and print a summary table that tells
   alerts on injected fraud apart from alerts on real, benign accounts.

Without ``../shared/data`` it says which data it needs and where to get it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from stream.adapters import DataMissingError, load_listening
from stream.broker import EmbeddedBroker, free_port
from stream.config import Settings
from stream.replay import plan_replay, produce_plays
from stream.schemas import Alert, AudioIngested

AUDIO_EXT = {".ogg", ".opus", ".flac", ".wav", ".mp3"}
REPO = Path(__file__).resolve().parent.parent


class DemoError(RuntimeError):
    """The demo cannot run (missing data, worker failure)."""


def _metrics(port: int) -> dict[tuple[str, tuple], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict = defaultdict(float)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return out


def _sum(m: dict, name: str, **labels) -> float:
    return sum(v for (n, lab), v in m.items() if n == name and all((k, val) in lab for k, val in labels.items()))


def _audio_notices(audio_dir: Path) -> list[AudioIngested]:
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_EXT and p.is_file())
    return [AudioIngested(file_id=str(p.relative_to(audio_dir)), uri=p.resolve().as_uri()) for p in files]


async def _send_notices(settings: Settings, notices: list[AudioIngested]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_kwargs())
    await p.start()
    try:
        futs = [await p.send(settings.topics.audio_ingested, n.model_dump_json(exclude_none=True).encode(),
                             key=n.file_id.encode()) for n in notices]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def _read_alerts(settings: Settings) -> list[Alert]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                         auto_offset_reset="earliest", **settings.kafka_client_kwargs())
    await c.start()
    alerts: dict[str, Alert] = {}
    try:
        tps = [TopicPartition(settings.topics.alerts, p)
               for p in sorted(c.partitions_for_topic(settings.topics.alerts) or [])]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        idle = time.monotonic()
        while time.monotonic() - idle < 2.0:
            got = await c.getmany(timeout_ms=300)
            for recs in got.values():
                for r in recs:
                    a = Alert.model_validate_json(r.value)
                    alerts[a.alert_id] = a  # dedupe by alert_id (at-least-once)
                    idle = time.monotonic()
            done = True
            for tp in tps:
                done = done and (c.highwater(tp) or 0) <= await c.position(tp)
            if done and not got:
                break
    finally:
        await c.stop()
    return list(alerts.values())


def _label_alert(a: Alert, fraud_accounts: set[str], fraud_tracks: set[str]) -> str:
    if a.kind.value == "audio_qc":
        return "audio"
    if a.entity_type == "account":
        return "fraud" if a.entity_id in fraud_accounts else "benign"
    if a.entity_type == "group":
        members = a.evidence.get("members") or []
        hit = sum(m in fraud_accounts for m in members)
        return "fraud" if members and hit * 2 >= len(members) else "benign"
    if a.entity_type == "track":
        return "fraud" if a.entity_id in fraud_tracks else "benign"
    if a.entity_type in ("ip", "device", "artist"):
        accts = a.evidence.get("accounts") or a.evidence.get("members") or []
        if accts:
            return "fraud" if sum(x in fraud_accounts for x in accts) * 2 >= len(accts) else "benign"
        return "fraud" if a.entity_id in fraud_tracks else "unknown"
    return "unknown"


def run_demo(
    data_dir: Path | None = None,
    out: Path = Path("out/demo-alerts.jsonl"),
    window_days: int = 14,
    n_accounts: int = 300,
    fraud_share: float = 0.03,
    follow: bool = False,
    bootstrap: str | None = None,
    max_seconds: float = 240.0,
    console: Console | None = None,
    max_real_accounts: int | None = None,
    audio_limit: int | None = None,
) -> dict:
    """Run the demo (see module docstring); returns the summary as a dict.

    Raises:
        DemoError: when the listening data is missing or the worker fails.
    """
    con = console or Console()
    t_start = time.monotonic()
    base = Settings(**({"data_dir": data_dir} if data_dir else {}))
    try:
        raw = load_listening(base.listening_path, max_accounts=max_real_accounts)
    except DataMissingError as exc:
        raise DemoError(
            f"{exc} The demo needs the real listening exports; real music (optional) comes from "
            "`apt-get install wesnoth-1.16-music singularity-music warzone2100-music` "
            "(pass its folder with PLAYGUARD_AUDIO_DIR)."
        ) from exc
    audio_dir = base.audio_path
    notices = _audio_notices(audio_dir) if audio_dir.exists() else []
    if audio_limit is not None:
        notices = notices[:audio_limit]
    if not notices:
        con.print(f"[yellow]no audio under {audio_dir}: audio QC is skipped. Real music: "
                  "apt-get install wesnoth-1.16-music singularity-music warzone2100-music, "
                  "then set PLAYGUARD_AUDIO_DIR=/usr/share/games[/yellow]")

    start = time.time()
    plan = plan_replay(raw, start, window_days)
    labels = None
    try:
        from stream.fraud.simulate import simulate
    except ImportError:
        simulate = None
    if simulate is not None and (fraud_share > 0 or n_accounts > len(set(plan.account_id))):
        # one camouflage level (L1, partly human-like) keeps the injected share near
        # fraud_share on a small demo background; `playguard eval` covers L0-L2.
        lab = simulate(plan, n_accounts=n_accounts, fraud_share=fraud_share, levels=("L1",), seed=7)
        plan, labels = lab.batch, lab
    fraud_accounts: set[str] = set()
    fraud_tracks: set[str] = set()
    if labels is not None:
        fa = np.asarray(plan.account_id, dtype=object)[labels.is_fraud]
        fraud_accounts = set(fa.tolist())
        tr = Counter(np.asarray(plan.track_id, dtype=object)[labels.is_fraud].tolist())
        alltr = Counter(plan.track_id)
        fraud_tracks = {t for t, c in tr.items() if c * 2 >= alltr[t]}
    keep = plan.ts < time.time()
    plan = plan.take(keep)

    broker = None if bootstrap else EmbeddedBroker().start()
    bs = bootstrap or broker.bootstrap
    prefix = f"demo{int(start)}." if bootstrap else base.topic_prefix
    metrics_port = free_port()
    env = {**os.environ, "PLAYGUARD_BOOTSTRAP_SERVERS": bs, "PLAYGUARD_TOPIC_PREFIX": prefix,
           "PLAYGUARD_METRICS_PORT": str(metrics_port), "PLAYGUARD_METRICS_HOST": "127.0.0.1",
           "PLAYGUARD_PARTITIONS": str(base.partitions), "PLAYGUARD_APP_ID": f"{prefix}worker"}
    if notices:
        env["PLAYGUARD_QC__ALLOWED_ROOTS"] = json.dumps([str(audio_dir.resolve())])
    settings = Settings(bootstrap_servers=bs, topic_prefix=prefix, partitions=base.partitions)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".worker.log")
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker", "--loglevel", "warn"],
        env=env, cwd=REPO, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    summary: dict = {}
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            if worker.poll() is not None:
                raise DemoError(f"worker exited with code {worker.returncode}; see {log_path}")
            try:
                _metrics(metrics_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise DemoError(f"worker metrics never came up; see {log_path}")
                time.sleep(0.3)
        con.print(f"broker {bs}  worker metrics {url}")
        con.print(f"replaying {len(plan):,} plays of {len(set(plan.account_id)):,} accounts "
                  f"({int(labels.is_fraud.sum()) if labels is not None else 0:,} injected fraud plays) "
                  f"and {len(notices)} audio files")
        from rich.progress import Progress

        with Progress(console=con, transient=True) as prog:
            task = prog.add_task("producing plays", total=len(plan))
            asyncio.run(produce_plays(settings, plan, 0.0, lambda k: prog.update(task, completed=k)))
        if notices:
            asyncio.run(_send_notices(settings, notices))
        with con.status("worker processing...") as status:
            while time.monotonic() - t_start < max_seconds:
                if worker.poll() is not None:
                    raise DemoError(f"worker exited with code {worker.returncode}; see {log_path}")
                m = _metrics(metrics_port)
                consumed = _sum(m, "playguard_events_consumed_total", topic=settings.topics.plays)
                checked = _sum(m, "playguard_audio_files_checked_total")
                dl_audio = _sum(m, "playguard_deadletter_total", topic=settings.topics.audio_ingested)
                status.update(f"worker: {consumed:,.0f}/{len(plan):,} plays, {checked:.0f}/{len(notices)} audio files")
                if consumed >= len(plan) and checked + dl_audio >= len(notices):
                    break
                time.sleep(1.0)
            time.sleep(2.0)
        m = _metrics(metrics_port)
        alerts = asyncio.run(_read_alerts(settings))
        with open(out, "w") as fh:
            for a in alerts:
                fh.write(a.model_dump_json() + "\n")
        summary = _summarise(con, alerts, m, settings, plan, labels, fraud_accounts, fraud_tracks, url, out)
        summary["seconds"] = round(time.monotonic() - t_start, 1)
        con.print(f"done in {summary['seconds']} s; alerts written to {out}")
        if follow:
            con.print(f"--follow: worker keeps running, metrics at {url}; Ctrl-C to stop")
            while worker.poll() is None:
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        if broker:
            broker.stop()
    return summary


def _summarise(con, alerts, m, settings, plan, labels, fraud_accounts, fraud_tracks, url, out) -> dict:
    rows: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for a in alerts:
        rows[(a.kind.value, a.detector)][_label_alert(a, fraud_accounts, fraud_tracks)] += 1
    t = Table(title="PlayGuard demo: alerts by detector")
    for col in ("kind", "detector", "alerts", "on injected fraud", "on real/benign", "on audio files"):
        t.add_column(col, justify="right" if col not in ("kind", "detector") else "left")
    for (kind, det), c in sorted(rows.items()):
        total = sum(c.values())
        t.add_row(kind, det, str(total), str(c["fraud"]) if kind == "play_fraud" else "-",
                  str(c["benign"] + c["unknown"]) if kind == "play_fraud" else "-",
                  str(c["audio"]) if kind == "audio_qc" else "-")
    con.print(t)
    n_benign = len(set(plan.account_id) - fraud_accounts)
    flagged_fraud = {a.entity_id for a in alerts if a.entity_type == "account" and a.entity_id in fraud_accounts}
    flagged_benign = {a.entity_id for a in alerts if a.entity_type == "account" and a.entity_id not in fraud_accounts}
    qc = {o: _sum(m, "playguard_audio_files_checked_total", outcome=o) for o in ("pass", "warn", "fail", "error")}
    summary = {
        "plays": len(plan),
        "accounts": len(set(plan.account_id)),
        "fraud_accounts": len(fraud_accounts),
        "fraud_accounts_flagged": len(flagged_fraud),
        "benign_accounts_flagged": len(flagged_benign),
        "benign_accounts": n_benign,
        "alerts": len(alerts),
        "deadletters": _sum(m, "playguard_deadletter_total"),
        "qc_outcomes": qc,
        "metrics_url": url,
        "alerts_file": str(out),
    }
    con.print(
        f"accounts: {summary['accounts']:,} ({summary['fraud_accounts']} injected fraud, "
        f"{summary['fraud_accounts_flagged']} of them flagged; {summary['benign_accounts_flagged']} "
        f"of {n_benign:,} benign accounts flagged)  audio QC: "
        + ", ".join(f"{k} {int(v)}" for k, v in qc.items())
    )
    con.print(f"metrics: {url}")
    return summary
