"""Audio QC on ingest: integrity, ITU-R BS.1770-4 loudness and true peak,
defect detection and catalog outliers for delivered audio files.

Public API (no Kafka or Faust here; see ``docs/AUDIO_QC.md``):

* :func:`audio_qc.paths.resolve_uri` / :class:`audio_qc.paths.UriRejected`
* :func:`audio_qc.check.check_file` -> :class:`stream.schemas.QCReport`
* :func:`audio_qc.alerts.report_alerts` -> list of :class:`stream.schemas.Alert`
* :class:`audio_qc.catalog.CatalogOutlierModel`
* ``playguard qc`` (:func:`audio_qc.cli.register`)
"""
