"""Operating many clinics: Prefect deployments rendered from one file per clinic."""
