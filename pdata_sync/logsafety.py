"""Keep patient data out of logs, whatever the log level.

At DEBUG, botocore logs every request's parameters ("Making request for ... with params"),
urllib3 and httpcore log request details, and pydicom logs what it parses. botocore 1.43
wraps a PutObject body in a BytesIO, so today only its repr is printed, but the DICOM bytes
hold the patient's name and birth date and one library change would print them. These
loggers are therefore capped at INFO, so debug logging for pdata-sync (``-v``,
``PREFECT_LOGGING_ROOT_LEVEL=DEBUG``) never depends on that detail.
Called by the CLI and at the start of every flow (a worker does not go through the CLI).
"""

from __future__ import annotations

import logging

CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpcore", "hpack", "pydicom")
# Set-up chatter at INFO that tells an operator nothing (Alembic's plugin and migration
# context lines in every run's log): warnings only.
QUIET_LOGGERS = ("alembic",)


def protect_logs() -> None:
    """Cap third-party loggers that can print request or file contents at INFO."""
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
