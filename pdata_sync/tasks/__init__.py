"""Thin Prefect tasks over the pure core in :mod:`pdata_sync`."""
