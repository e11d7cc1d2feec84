"""Thin Prefect tasks over the core: the pipeline's steps as tasks (steps.py), a research
export's tasks, and where secrets come from when Prefect runs (Prefect blocks)."""
