"""Alerts from a QC report (topic ``alerts``, kind ``audio_qc``).

Rule: one alert per defect whose severity is above ``info`` (so ``uncertain``
and up). Its ``alert_id`` is ``audio_alert_id("audio_qc", file_id, code,
qc_version)``: a repeated QC of the same file by the same QC version gives the
same ids, so consumers drop the duplicates of at-least-once delivery. The
alert's severity is the defect's; its score is the severity rank (1 for
uncertain .. 4 for critical); ``window_start``/``window_end`` are None
(CONVENTIONS.md). A report with outcome ``error`` (QC could not finish) still
alerts on its ``decode_error`` defect, whose detail names the limit hit.
"""

from __future__ import annotations

from stream.schemas import Alert, AlertKind, QCReport, Severity, audio_alert_id

DETECTOR = "audio_qc"


def report_alerts(report: QCReport) -> list[Alert]:
    """Alerts for the defects of ``report`` above ``info``.

    Args:
        report: a QC report.

    Returns:
        one :class:`~stream.schemas.Alert` per distinct defect code above
        info (the worst severity of that code), in report order.
    """
    worst: dict[str, object] = {}
    for d in report.defects:
        if d.severity <= Severity.info:
            continue
        if d.code not in worst or d.severity > worst[d.code].severity:  # type: ignore[union-attr]
            worst[d.code] = d
    out = []
    for code, d in worst.items():
        out.append(Alert(
            alert_id=audio_alert_id(DETECTOR, report.file_id, code, report.qc_version),
            kind=AlertKind.audio_qc,
            detector=DETECTOR,
            entity_type="file",
            entity_id=report.file_id,
            score=float(d.severity.rank),  # type: ignore[union-attr]
            severity=d.severity,  # type: ignore[union-attr]
            reasons=[f"{code}: {d.detail}"],  # type: ignore[union-attr]
            evidence={"uri": report.uri, "track_id": report.track_id, "outcome": report.outcome,
                      "profile": report.profile, "qc_version": report.qc_version,
                      "start_s": d.start_s, "end_s": d.end_s},  # type: ignore[union-attr]
        ))
    return out
