"""``playguard`` command line (typer).

Commands: ``worker``, ``broker``, ``topics``, ``schema``, ``replay``, ``demo``,
plus ``qc`` (audio QC) and ``simulate`` / ``eval`` (play fraud) when those
packages are present. Options override ``PLAYGUARD_*`` environment variables.

Errors are printed as one readable line on stderr with exit code 2; no
traceback (set ``PLAYGUARD_DEBUG=1`` to see one).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from stream.config import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="PlayGuard: real-time play-fraud detection and audio QC.")
topics_app = typer.Typer(help="Topic administration.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


class CLIError(Exception):
    """An error to show the user as one line."""


def _settings(bootstrap: Optional[str] = None, data_dir: Optional[Path] = None, **kw) -> Settings:
    over = dict(kw)
    if bootstrap:
        over["bootstrap_servers"] = bootstrap
    if data_dir:
        over["data_dir"] = data_dir
    return Settings(**over)


@app.command()
def worker(
    bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap servers (PLAYGUARD_BOOTSTRAP_SERVERS)."),
    models: str = typer.Option("full", help="Model set: full, rules or noop."),
    metrics_port: Optional[int] = typer.Option(None, help="Port of /metrics (PLAYGUARD_METRICS_PORT)."),
    audit: Optional[Path] = typer.Option(None, help="Write processed offset ranges to this JSONL file."),
    audio: bool = typer.Option(True, help="Run the audio-QC agent."),
    loglevel: str = typer.Option("warn", help="crit, error, warn, info or debug."),
    stages: str = typer.Option(
        "account,catalog",
        help="Play stages to run: account, catalog or both. One stage per process puts each in its own "
             "consumer group (<app id>.<stage>) and gives it its own core (RELIABILITY.md, 'Soak').",
    ),
):
    """Run a PlayGuard worker (Faust): account, catalog and audio-QC stages."""
    from stream.metrics import Metrics
    from stream.topics import ensure_topics

    over = {}
    if metrics_port is not None:
        over["metrics_port"] = metrics_port
    from stream.app import create_app, parse_stages

    try:
        chosen = parse_stages(stages)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--stages") from None
    s = _settings(bootstrap, **over)
    asyncio.run(ensure_topics(s))
    metrics = Metrics()
    from faust import Worker

    fapp = create_app(s, metrics, models=models, audit_path=audit, audio=audio, stages=chosen)
    from stream.pipeline import warm_up

    warm_up(s, models)  # JIT-compile detector kernels before the first batch
    # serve /metrics only once every label value exists (readiness = all series present)
    server, _ = metrics.serve(s.metrics_host, s.metrics_port)
    typer.echo(f"metrics: http://{s.metrics_host}:{server.server_port}/metrics", err=True)
    Worker(fapp, loglevel=loglevel, quiet=True).execute_from_commandline()


@app.command()
def broker(port: int = typer.Option(0, help="TCP port (0: a free one).")):
    """Run the embedded Kafka-protocol broker (Tansu, in memory) until Ctrl-C."""
    from stream.broker import EmbeddedBroker

    b = EmbeddedBroker(port=port).start()
    typer.echo(b.bootstrap)
    try:
        while b.proc and b.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


@topics_app.command("create")
def topics_create(bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap servers.")):
    """Create PlayGuard's topics (changelog compacted); existing ones are kept."""
    from stream.topics import ensure_topics

    s = _settings(bootstrap)
    created = asyncio.run(ensure_topics(s))
    for name in s.topics.all():
        typer.echo(f"{name}\t{'created' if name in created else 'exists'}")


@app.command()
def schema(
    name: Optional[str] = typer.Argument(None, help="PlayEvent, AudioIngested, Alert or QCReport (default: all)."),
    out: Optional[Path] = typer.Option(None, help="Write <Name>.schema.json files into this folder."),
):
    """Print (or write) the JSON Schema of the wire formats."""
    from stream.schemas import SCHEMAS

    names = [name] if name else list(SCHEMAS)
    for n in names:
        if n not in SCHEMAS:
            raise CLIError(f"unknown schema {n!r}; choose from {', '.join(SCHEMAS)}")
    docs = {n: SCHEMAS[n].model_json_schema() for n in names}
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for n, d in docs.items():
            (out / f"{n}.schema.json").write_text(json.dumps(d, indent=2) + "\n")
            typer.echo(str(out / f"{n}.schema.json"))
    else:
        typer.echo(json.dumps(docs[names[0]] if name else docs, indent=2))


@app.command()
def replay(
    bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap servers."),
    data_dir: Optional[Path] = typer.Option(None, help="Real-data folder (PLAYGUARD_DATA_DIR)."),
    window: int = typer.Option(365, help="Window L in days."),
    all_pieces: bool = typer.Option(False, "--all-pieces", help="Replay every L-long piece as its own account."),
    speedup: float = typer.Option(0.0, help="Times faster than real time; 0 = as fast as possible."),
    loop: int = typer.Option(1, help="Number of passes N (fresh event ids, earlier windows)."),
    max_accounts: Optional[int] = typer.Option(None, help="Replay a seeded subsample of accounts."),
    limit: Optional[int] = typer.Option(None, help="Send at most this many plays (the newest ones)."),
):
    """Stream the real listening histories into the plays topic."""
    from rich.progress import Progress

    from stream.adapters import load_listening
    from stream.replay import plan_replay, produce_plays
    from stream.topics import ensure_topics

    s = _settings(bootstrap, data_dir)
    batch = load_listening(s.listening_path, max_accounts=max_accounts)
    plan = plan_replay(batch, time.time(), window, all_pieces, loop)
    if limit is not None and limit < len(plan):
        import numpy as np

        plan = plan.take(np.arange(len(plan) - limit, len(plan)))
    asyncio.run(ensure_topics(s))
    with Progress(transient=True) as prog:
        task = prog.add_task("replaying plays", total=len(plan))
        n = asyncio.run(produce_plays(s, plan, speedup, lambda k: prog.update(task, completed=k)))
    typer.echo(f"sent {n} plays from {len(set(plan.account_id))} accounts to {s.topics.plays}")


@app.command()
def demo(
    data_dir: Optional[Path] = typer.Option(None, help="Real-data folder (PLAYGUARD_DATA_DIR)."),
    out: Path = typer.Option(Path("out/demo-alerts.jsonl"), help="Where to write the alerts (JSONL)."),
    window: int = typer.Option(7, help="Days of each account's newest history to replay."),
    accounts: int = typer.Option(200, help="Benign background accounts (real users plus clones)."),
    fraud_share: float = typer.Option(0.03, help="Share of injected fraud events (0 disables)."),
    follow: bool = typer.Option(False, "--follow", help="Keep running after the summary."),
    bootstrap: Optional[str] = typer.Option(None, help="Use this Kafka instead of the embedded broker."),
    max_seconds: float = typer.Option(240.0, help="Stop waiting for the worker after this long."),
    real_accounts: Optional[int] = typer.Option(None, help="Use a seeded subsample of the real accounts."),
    audio_limit: Optional[int] = typer.Option(None, help="Check at most this many audio files."),
):
    """One-command demo: embedded broker, worker, real replay (+ labelled fraud), audio QC, summary."""
    from stream.demo import DemoError, run_demo

    try:
        run_demo(
            data_dir=data_dir, out=out, window_days=window, n_accounts=accounts, fraud_share=fraud_share,
            follow=follow, bootstrap=bootstrap, max_seconds=max_seconds,
            max_real_accounts=real_accounts, audio_limit=audio_limit,
        )
    except DemoError as exc:
        raise CLIError(str(exc)) from exc


def _register_optional(names: list[str]) -> None:
    for mod in names:
        try:
            m = importlib.import_module(mod)
        except ImportError as exc:
            if os.environ.get("PLAYGUARD_DEBUG"):
                print(f"optional commands {mod} not loaded: {exc}", file=sys.stderr)
            continue
        m.register(app)


_register_optional(["audio_qc.cli", "stream.fraud.cli"])


def main() -> None:
    """Console-script entry point: run the app, turning errors into one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one readable line, not a traceback
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if os.environ.get("PLAYGUARD_DEBUG"):
            raise
        msg = str(exc) or type(exc).__name__
        print(f"playguard: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
