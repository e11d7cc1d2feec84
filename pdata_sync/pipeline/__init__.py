"""The runs over the domains: a sync's plan, triage, upload batches, retirement and
report; the rolling content check, the database check, verify and previews."""
