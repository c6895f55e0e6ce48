"""``playguard simulate`` and ``playguard eval`` (register with :func:`register`).

Examples::

    playguard simulate --out /tmp/labelled.csv.gz --accounts 1000 --days 14
    playguard eval --out-json eval.json --out-png eval.png            # simulate, then evaluate
    playguard eval --input /tmp/labelled.csv.gz --out-json eval.json  # a user-supplied file
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stream.config import Settings


def _fail(msg: str) -> None:
    """Print one readable line and exit with status 2 (SystemExit passes
    through the ``playguard`` entry point, whatever its standalone mode)."""
    typer.echo(f"error: {msg}", err=True)
    raise SystemExit(2)


def _simulated(settings: Settings, accounts: int, days: int, fraud_share: float, scenario: list[str] | None,
               level: list[str] | None, seed: int, max_real: int | None):
    from stream.adapters import load_listening
    from stream.fraud.simulate import prepare_background, simulate

    raw = load_listening(settings.listening_path, max_accounts=max_real, seed=seed)
    bg = prepare_background(raw, days=days)
    return simulate(bg, n_accounts=accounts, fraud_share=fraud_share, scenarios=scenario or None,
                    levels=tuple(level or ("L0", "L1", "L2")), seed=seed)


def _calibrated(settings: Settings, accounts: int, days: int, seed: int, max_real: int | None, budget: float,
                batch_size: int, batch_seconds: float | None) -> dict:
    """Thresholds from ``budget`` false alerts per 1,000 accounts per day on a
    clean simulated stream (no fraud; seed ``seed + 10007``, so never the
    evaluated stream's clones)."""
    from stream.adapters import load_listening
    from stream.fraud.calibrate import calibrate_thresholds
    from stream.fraud.simulate import prepare_background, simulate

    cseed = seed + 10007
    raw = load_listening(settings.listening_path, max_accounts=max_real, seed=cseed)
    clean = simulate(prepare_background(raw, days=days), n_accounts=accounts, scenarios=[], seed=cseed)
    return calibrate_thresholds(clean, settings, budget=budget, batch_size=batch_size, batch_seconds=batch_seconds)


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``eval`` to the ``playguard`` app."""

    @app.command("simulate")
    def simulate_cmd(
        out: Path = typer.Option(..., help="labelled file to write (.csv/.jsonl, optionally .gz)"),
        accounts: int = typer.Option(1000, help="benign background accounts after cloning"),
        days: int = typer.Option(14, help="window length in days"),
        fraud_share: float = typer.Option(0.03, help="target share of fraud events"),
        scenario: Optional[list[str]] = typer.Option(None, help="scenario (repeatable; default all)"),
        level: Optional[list[str]] = typer.Option(None, help="camouflage level L0/L1/L2 (repeatable)"),
        seed: int = typer.Option(0),
        max_real: Optional[int] = typer.Option(None, help="subsample of real accounts"),
        data_dir: Optional[Path] = typer.Option(None, help="real-data folder (default PLAYGUARD_DATA_DIR)"),
    ) -> None:
        """Inject labelled fraud and hard negatives into the real listening background."""
        from stream.fraud.labelled_io import write_labelled

        settings = Settings(data_dir=data_dir) if data_dir else Settings()
        try:
            lab = _simulated(settings, accounts, days, fraud_share, scenario, level, seed, max_real)
            n = write_labelled(lab, out)
        except (ValueError, FileNotFoundError, OSError) as exc:
            _fail(str(exc))
        typer.echo(f"wrote {n} events ({lab.is_fraud.mean():.3%} fraud) to {out}")

    @app.command("eval")
    def eval_cmd(
        input: Optional[Path] = typer.Option(None, "--input", help="labelled file; default: simulate one"),
        out_json: Path = typer.Option(Path("eval.json")),
        out_png: Path = typer.Option(Path("eval.png")),
        accounts: int = typer.Option(1000),
        days: int = typer.Option(14),
        fraud_share: float = typer.Option(0.03),
        scenario: Optional[list[str]] = typer.Option(None),
        level: Optional[list[str]] = typer.Option(None),
        seed: int = typer.Option(0),
        max_real: Optional[int] = typer.Option(None),
        batch_size: int = typer.Option(2000, help="micro-batch size (events)"),
        batch_seconds: float = typer.Option(300.0, help="micro-batch event-time span cap (s); 0: none"),
        no_baselines: bool = typer.Option(False, help="skip the three baselines"),
        calibrate_budget: float = typer.Option(
            0.0, help="set alert thresholds from this many false alerts per 1,000 accounts per day on a clean "
                      "simulated stream (needs the real data), e.g. 0.5; 0: the fixed FraudParams defaults"),
        calibration_days: int = typer.Option(7, help="days of the clean calibration stream"),
        data_dir: Optional[Path] = typer.Option(None),
    ) -> None:
        """Run the core (and baselines) on a labelled stream; write JSON and PNG."""
        from stream.fraud.evaluate import evaluate
        from stream.fraud.labelled_io import read_labelled
        from stream.fraud.report import table, write_json, write_png

        settings = Settings(data_dir=data_dir) if data_dir else Settings()
        try:
            lab = read_labelled(input) if input else _simulated(settings, accounts, days, fraud_share, scenario,
                                                               level, seed, max_real)
            thr = None
            if calibrate_budget > 0:
                thr = _calibrated(settings, accounts, calibration_days, seed, max_real, calibrate_budget,
                                  batch_size, batch_seconds or None)
                typer.echo(f"calibrated thresholds (nats): account {thr['threshold']:.2f}, "
                           f"catalog {thr['catalog_threshold']:.2f}")
            res = evaluate(lab, settings, batch_size=batch_size, baselines=not no_baselines, seed=seed,
                           batch_seconds=batch_seconds or None, thresholds=thr)
            write_json(res, out_json)
            write_png(res, out_png)
        except (ValueError, FileNotFoundError, OSError) as exc:
            _fail(str(exc))
        typer.echo(table(res))
        typer.echo(f"wrote {out_json} and {out_png}")
