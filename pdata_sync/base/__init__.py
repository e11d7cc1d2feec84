"""The shared base every domain stands on: the clinic's configuration as types, the one
error taxonomy, retries, log safety, clocks, files on the worker and where secrets come from.
Imports nothing else of pdata_sync."""
