"""``playguard qc``: audio QC of files and folders from the command line.

``playguard qc PATH... [--json] [--declared FILE.json] [--profile NAME]
[--fail-on SEVERITY]`` checks every file given, and every audio file under the
folders given (by extension), each in the sandbox of :mod:`audio_qc.check`.
It prints a table, or with ``--json`` a JSON array of QC reports
(CONVENTIONS.md), and exits with status 1 when some defect is at least as
severe as ``--fail-on`` (default ``error``), 0 otherwise, and 2 on a usage
error (one readable line). Files of one run also form a catalog, so files far
from the others get ``catalog_outlier`` once 30 files are seen.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

#: Extensions picked up inside folders (files named explicitly are always checked).
AUDIO_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac",
                    ".aif", ".aiff", ".caf", ".w64", ".wma", ".mka", ".webm"}


def collect_files(paths: list[Path]) -> list[Path]:
    """Files to check: files as given, folders walked recursively (sorted).

    Raises:
        click.BadParameter: for a path that does not exist.
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            raise click.BadParameter(f"no such file or folder: {p}", param_hint="PATH")
    return out


def load_declared(path: Path):
    """Declared metadata: a JSON array of ``AudioIngested`` objects.

    Returns:
        ``(by_uri, by_name)`` dicts.

    Raises:
        click.BadParameter: for an unreadable file, invalid JSON or a record
            that is not a valid ``AudioIngested``.
    """
    from pydantic import ValidationError

    from stream.schemas import AudioIngested

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--declared") from None
    if not isinstance(data, list):
        raise click.BadParameter(f"{path} must hold a JSON array of AudioIngested objects", param_hint="--declared")
    by_uri, by_name = {}, {}
    for i, rec in enumerate(data):
        try:
            a = AudioIngested.model_validate(rec)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise click.BadParameter(f"{path}: record {i}: {loc}: {first['msg']}", param_hint="--declared") from None
        by_uri[a.uri] = a
        by_name[Path(a.uri.split("://", 1)[-1]).name] = a
    return by_uri, by_name


def _file_id(p: Path) -> str:
    return "file:" + hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]


def run_qc(
    paths: list[Path], *, as_json: bool, declared: Optional[Path], profile: Optional[str], fail_on: str,
    out=None, err=None,
) -> int:
    """Run QC on ``paths``, print the result, return the exit status.

    Raises:
        click.BadParameter: for a bad path, declared file, profile or severity.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from audio_qc.catalog import CatalogOutlierModel
    from audio_qc.check import check_file
    from audio_qc.profiles import get_profile
    from stream.config import Settings
    from stream.schemas import Severity, outcome_for

    try:
        threshold = Severity(fail_on)
    except ValueError:
        raise click.BadParameter(f"{fail_on!r} is not one of {', '.join(s.value for s in Severity)}",
                                 param_hint="--fail-on") from None
    settings = Settings().qc
    if profile:
        try:
            get_profile(profile)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--profile") from None
        settings = settings.model_copy(update={"profile": profile})
    by_uri, by_name = load_declared(declared) if declared else ({}, {})
    files = collect_files(paths)
    if not files:
        raise click.BadParameter("no audio files found", param_hint="PATH")
    console_err = Console(file=err or sys.stderr)
    catalog = CatalogOutlierModel()
    reports = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console_err, transient=True) as bar:
        task = bar.add_task("QC", total=len(files))
        for f in files:
            bar.update(task, description=f"QC {f.name[:40]}")
            uri = f.resolve().as_uri()
            dec = by_uri.get(str(f)) or by_uri.get(uri) or by_uri.get(str(f.resolve())) or by_name.get(f.name)
            rep = check_file(f, file_id=dec.file_id if dec else _file_id(f), uri=dec.uri if dec else uri,
                             declared=dec, settings=settings)
            extra = catalog.update_and_score(rep)
            if extra is not None:
                rep.defects.append(extra)
                rep.outcome = outcome_for(rep.defects, qc_finished=rep.outcome != "error")
            reports.append(rep)
            bar.advance(task)
    stream = out or sys.stdout
    if as_json:
        stream.write(json.dumps([r.model_dump(mode="json") for r in reports], indent=2) + "\n")
    else:
        table = Table(title=f"Audio QC ({settings.profile} profile)")
        for col in ("file", "outcome", "LUFS", "LRA", "dBTP", "defects"):
            table.add_column(col)
        for f, r in zip(files, reports):
            m = r.measurements
            fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            defects = ", ".join(f"{d.code} ({d.severity.value})" for d in r.defects) or "-"
            table.add_row(f.name, r.outcome, fmt(m.integrated_lufs), fmt(m.loudness_range_lu),
                          fmt(m.true_peak_dbtp), defects)
        Console(file=stream, width=160).print(table)
    worst = [d.severity for r in reports for d in r.defects]
    return 1 if any(s >= threshold for s in worst) else 0


def register(app: typer.Typer) -> None:
    """Add the ``qc`` command to the ``playguard`` typer app."""

    @app.command("qc")
    def qc(
        paths: List[Path] = typer.Argument(..., help="Audio files or folders."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON array of QC reports."),
        declared: Optional[Path] = typer.Option(None, "--declared", help="JSON array of AudioIngested records (declared metadata)."),
        profile: Optional[str] = typer.Option(None, "--profile", help="Delivery profile: streaming, ebu_r128 or aes_td1008."),
        fail_on: str = typer.Option("error", "--fail-on", help="Exit 1 when a defect of at least this severity is found."),
    ) -> None:
        """Audio QC: integrity, loudness (BS.1770-4), true peak and defects."""
        try:
            code = run_qc(paths, as_json=as_json, declared=declared, profile=profile, fail_on=fail_on)
        except click.ClickException as exc:
            print(f"playguard qc: error: {exc.format_message()}", file=sys.stderr)
            sys.exit(2)
        if code:
            # SystemExit rather than typer.Exit: ``stream.cli.main`` runs click
            # with standalone_mode=False, which turns typer.Exit into a return
            # value and would lose the status.
            sys.exit(code)
