"""The research export's steps as Prefect tasks (pdata_sync.pipeline.export), apart from the
sync's: they import the de-identification (pydicom, numpy), which a nightly sync with
nothing new never loads."""

from __future__ import annotations

from pdata_sync.pipeline import export
from pdata_sync.tasks.steps import as_tasks

EXPORT_TASKS = as_tasks(
    {
        export.plan_research_export: "plan-export",
        export.export_batch: "export-batch",
        export.write_export_manifest: "write-export-manifest",
    }
)
