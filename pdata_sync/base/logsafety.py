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

from pdata_sync.base.url_secrets import redact

CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpcore", "hpack", "pydicom")
# Set-up chatter at INFO that tells an operator nothing (Alembic's plugin and migration
# context lines in every run's log): warnings only.
QUIET_LOGGERS = ("alembic",)


class RedactSecrets(logging.Filter):
    """Masks URL passwords and secret query values in every record a handler emits: the
    config refuses them, but a library's message may still carry a connection string."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_REDACT = RedactSecrets()


def protect_logs() -> None:
    """Cap third-party loggers that can print request or file contents at INFO, and mask
    secrets in what the root and Prefect handlers emit."""
    # every handler configured so far: the root's console, Prefect's API handler on
    # prefect.flow_runs / prefect.task_runs (what the UI and the run history show)
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if _REDACT not in handler.filters:
                handler.addFilter(_REDACT)
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
