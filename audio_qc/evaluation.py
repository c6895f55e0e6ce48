"""Evaluation of QC on labelled damaged variants and on the clean real tracks.

* **Recall per defect code**: the share of variants made by
  :mod:`audio_qc.corrupt` whose report contains the expected code (any
  severity above ``info``).
* **False-positive rate per check**: on the unmodified real tracks, the share
  of tracks flagged by a check among the tracks that have no known defect for
  that check (:data:`KNOWN_DEFECTS`, from ``../shared/data/README.md``).
  ``loudness_out_of_range`` and ``true_peak_over`` state compliance with a
  delivery profile and stay out of this figure; ``catalog_outlier`` is
  measured leave-one-out (each track scored against the catalog of the other
  tracks).
* **Known real defects found**: recall on the README's list.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from audio_qc.catalog import CatalogOutlierModel
from audio_qc.check import check_file
from audio_qc.corrupt import make_variants
from stream.schemas import QCReport, Severity

#: Real defects of the shared data (README), by check: file names.
KNOWN_DEFECTS: dict[str, set[str]] = {
    "dc_offset": {"Enemy Unknown.ogg", "Deprecation.ogg", "Inevitable.ogg", "Coherence.ogg", "Apex Aleph.ogg",
                  "By-Product.ogg", "Media Threat.ogg", "Chimes They Fade.ogg", "Awakening.ogg",
                  "Advanced Simulacra.ogg", "March Thee to Dis.ogg"},
    "silence": {"silence.ogg"},
}
#: Compliance findings, excluded from the false-positive figure.
PROFILE_CODES = {"loudness_out_of_range", "true_peak_over"}
#: Checks whose false-positive rate is reported.
CHECKS = ("decode_error", "truncated", "clipping", "silence", "leading_silence", "trailing_silence", "gap",
          "dc_offset", "click", "polarity_inverted", "dual_mono", "bandwidth_limited", "catalog_outlier")


def _codes(report: QCReport) -> set[str]:
    return {d.code for d in report.defects if d.severity > Severity.info}


def recall_on_variants(tracks: list[Path], scratch: Path, seed: int = 0, kinds: set[str] | None = None,
                       excerpt_s: float = 30.0, by_kind: dict[str, list[int]] | None = None,
                       ) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str, list[str]]]]:
    """Recall per expected code over damaged variants of ``tracks``.

    Args:
        by_kind: if given, filled with ``kind -> [found, total]`` per kind of
            damage (e.g. ``clip_lossy`` apart from ``clip_full_scale``).

    Returns:
        ``(per_code, misses)``: ``per_code[code] = (found, total)``; ``misses``
        lists ``(variant file name, expected, codes reported)``.
    """
    rng = np.random.default_rng(seed)
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses = []
    for i, t in enumerate(tracks):
        for v in make_variants(t, scratch / f"t{i}", rng, excerpt_s=excerpt_s, kinds=kinds):
            rep = check_file(v.path, file_id=v.path.name, uri=str(v.path), declared=v.declared)
            got = _codes(rep)
            per[v.expected][1] += 1
            hit = v.expected in got
            if by_kind is not None:
                k = by_kind.setdefault(v.kind, [0, 0])
                k[0] += hit
                k[1] += 1
            if hit:
                per[v.expected][0] += 1
            else:
                misses.append((v.path.name, v.expected, sorted(got)))
            v.path.unlink(missing_ok=True)
    return {k: (a, b) for k, (a, b) in per.items()}, misses


def false_positives(tracks: list[Path]) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]], list]:
    """False-positive rate per check and known-defect recall on clean tracks.

    Returns:
        ``(fp, known, flagged)``: ``fp[check] = (flagged, eligible)``,
        ``known[check] = (found, total)``, and ``flagged`` lists
        ``(file name, check)`` for every false positive.
    """
    reports = [check_file(t, file_id=t.name, uri=str(t)) for t in tracks]
    fp: dict[str, list[int]] = {c: [0, 0] for c in CHECKS}
    known: dict[str, list[int]] = {c: [0, 0] for c in KNOWN_DEFECTS}
    flagged = []
    # catalog_outlier, leave-one-out
    cat_hits = set()
    for i, r in enumerate(reports):
        model = CatalogOutlierModel(min_files=min(30, max(2, len(reports) - 1)))
        for j, other in enumerate(reports):
            if j != i:
                model.update_and_score(other)
        if model.update_and_score(r) is not None:
            cat_hits.add(r.file_id)
    for t, r in zip(tracks, reports):
        got = _codes(r) | ({"catalog_outlier"} if r.file_id in cat_hits else set())
        for c in CHECKS:
            if t.name in KNOWN_DEFECTS.get(c, set()):
                known[c][1] += 1
                known[c][0] += c in got
                continue
            fp[c][1] += 1
            if c in got:
                fp[c][0] += 1
                flagged.append((t.name, c))
    return ({k: tuple(v) for k, v in fp.items()}, {k: tuple(v) for k, v in known.items()}, flagged)
