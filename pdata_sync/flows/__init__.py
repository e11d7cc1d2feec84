"""Prefect flows of pdata-sync: ``sync-clinic`` and ``retrieve-patient-images``."""
