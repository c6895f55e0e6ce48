"""Labelled event files (CONVENTIONS.md "Labelled event files").

CSV or JSONL, optionally gzip-compressed (``.gz``). Columns: the
:class:`~stream.schemas.PlayEvent` fields plus ``is_fraud`` (bool, which alone
decides the label) and ``scenario`` (``""``, ``<name>:L0|L1|L2`` or
``hardneg:<name>``). ``ts`` is written as UTC ISO-8601 with milliseconds.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from stream.batch import PlayBatch
from stream.fraud.simulate import Labelled

FIELDS = ("event_id", "ts", "account_id", "track_id", "artist_id", "ms_played", "track_duration_ms",
          "platform", "device_id", "ip", "country", "reason_start", "reason_end", "shuffle", "skipped",
          "offline", "is_fraud", "scenario")
_BOOL = {"true": True, "1": True, "false": False, "0": False, "": None}


def _open(path: Path, mode: str):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def _fmt(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        return "jsonl"
    raise ValueError(f"{path}: unknown labelled-file format (use .csv, .jsonl, optionally .gz)")


def write_labelled(lab: Labelled, path: Path | str) -> int:
    """Write ``lab`` to ``path`` (.csv / .jsonl, optionally .gz); returns rows written.

    Raises:
        ValueError: on an unknown extension.
    """
    path = Path(path)
    fmt = _fmt(path)
    rows = lab.batch.to_dicts()
    iso = np.datetime_as_string((lab.batch.ts * 1e3).astype("datetime64[ms]"), unit="ms")
    with _open(path, "w") as fh:
        w = csv.DictWriter(fh, FIELDS) if fmt == "csv" else None
        if w:
            w.writeheader()
        for r, t, f, s in zip(rows, iso.tolist(), lab.is_fraud.tolist(), lab.scenario):
            r.pop("record_ts", None)
            r["ts"] = t + "Z"
            r["is_fraud"] = bool(f)
            r["scenario"] = s
            if w:
                w.writerow({k: ("" if r[k] is None else str(r[k]).lower() if isinstance(r[k], bool) else r[k])
                            for k in FIELDS})
            else:
                fh.write(json.dumps({k: r[k] for k in FIELDS}) + "\n")
    return len(rows)


def _ts(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    d = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.timestamp()


def read_labelled(path: Path | str) -> Labelled:
    """Read a labelled event file into a :class:`Labelled` sorted by event time.

    Raises:
        FileNotFoundError: if the file is absent.
        ValueError: on an unknown extension, a missing column (named) or a bad
            value (names the line).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labelled file not found: {path}")
    fmt = _fmt(path)
    rows, fraud, scen = [], [], []
    with _open(path, "r") as fh:
        it = csv.DictReader(fh) if fmt == "csv" else (json.loads(x) for x in fh if x.strip())
        for line, r in enumerate(it, start=2 if fmt == "csv" else 1):
            try:
                if fmt == "csv":
                    for k in ("platform", "device_id", "ip", "country", "reason_start", "reason_end"):
                        r[k] = r.get(k) or None
                    for k in ("shuffle", "skipped", "offline"):
                        r[k] = _BOOL[(r.get(k) or "").lower()]
                    r["ms_played"] = int(r["ms_played"])
                    r["track_duration_ms"] = int(r["track_duration_ms"]) if r.get("track_duration_ms") else None
                    f = (r["is_fraud"] or "").lower()
                    if f not in ("true", "false", "1", "0"):
                        raise ValueError(f"is_fraud must be true/false, got {r['is_fraud']!r}")
                    r["is_fraud"] = f in ("true", "1")
                missing = [k for k in ("event_id", "ts", "account_id", "track_id", "artist_id", "ms_played", "is_fraud")
                           if r.get(k) is None]
                if missing:
                    raise ValueError(f"missing column(s) {missing}")
                if not isinstance(r["is_fraud"], bool):
                    raise ValueError(f"is_fraud must be a boolean, got {r['is_fraud']!r}")
                r["ts"] = _ts(r["ts"])
                if r.get("country") == "ZZ":
                    r["country"] = None
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from exc
            fraud.append(r.pop("is_fraud"))
            scen.append(r.pop("scenario", "") or "")
            rows.append(r)
    batch = PlayBatch.from_dicts(rows)
    order = np.argsort(batch.ts, kind="stable")
    return Labelled(batch.take(order), np.asarray(fraud, bool)[order], [scen[i] for i in order])
