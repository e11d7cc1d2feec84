"""pdata-sync: copy a Sidexis PDATA X-ray archive to S3 under images/{patientGuid}/.

This package is the pure core: plain Python, no Prefect imports (except ``cli``, which
starts the flows). The Prefect layer lives in the top-level ``tasks`` and ``flows`` packages.
"""

__version__ = "0.1.0"
