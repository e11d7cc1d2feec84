"""The Prefect flows: ``sync-clinic``, ``verify-clinic``, ``retrieve-patient-images``,
``make-thumbnails`` and ``export-research``. Each is thin: the sequence is the core's
(pdata_sync.pipeline.runs for sync and verify), the flow adds run names, artifacts and the
run's final state."""
