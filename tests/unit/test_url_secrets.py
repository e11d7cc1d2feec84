"""Secrets in URLs: found without repeating them, and masked in any text that carries one."""

import logging

import pytest

from pdata_sync.base.logsafety import RedactSecrets
from pdata_sync.base.url_secrets import redact, url_secret

S = "Zq8-s3cr3t"


@pytest.mark.parametrize(
    "url, http, where",
    [
        ("mssql+pyodbc://sidexis@host/SIDEXIS?driver=X", False, None),
        ("https://platform.example/api/resolve?api-version=2", True, None),
        (f"mssql+pyodbc://sidexis:{S}@host/SIDEXIS", False, "password in the user part"),
        (f"mssql+pyodbc://u@h/S?PaSsWoRd={S}", False, "query parameter 'PaSsWoRd'"),
        (f"mssql+pyodbc:///?odbc_connect=DRIVER%3DX%3BPWD%3D{S}", False, "inside the query"),
        (f"https://user@platform.example/x?y={S}", True, "credentials in the user part"),
        (f"https://platform.example/x?access_token={S}", True, "query parameter"),
    ],
)
def test_url_secret_names_where_never_what(url, http, where):
    found = url_secret(url, http=http)
    if where is None:
        assert found is None
    else:
        assert where in found and S not in found


def test_redact_masks_passwords_in_any_text():
    text = (
        f"connect mssql+pyodbc://sa:{S}@host/db failed; odbc_connect=DRIVER=X;UID=u;PWD={S};"
        f" retry https://h/x?token={S}&a=1 and DRIVER%3DX%3BPwd%3D{S}"
    )
    masked = redact(text)
    assert S not in masked
    assert "mssql+pyodbc://sa:***@host/db" in masked and "a=1" in masked


def test_log_records_are_masked_by_the_filter():
    record = logging.LogRecord(
        "x", logging.ERROR, "f", 1, "db %s unreachable", (f"mssql://u:{S}@h",), None
    )
    assert RedactSecrets().filter(record) is True
    assert S not in record.getMessage() and "mssql://u:***@h" in record.getMessage()


def test_protect_logs_masks_what_any_configured_handler_sends():
    """Every configured handler gets the filter, not only the root's: Prefect's API
    handler (a flow run's log in the UI) sits on prefect.flow_runs, not on the root."""
    from pdata_sync.base.logsafety import protect_logs

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    run_logger = logging.getLogger("tests.redaction.run")  # like prefect.flow_runs
    handler = Keep()
    run_logger.addHandler(handler)
    try:
        protect_logs()
        run_logger.warning("cannot connect to %s", f"mssql+pyodbc://u:{S}@host/db")
    finally:
        run_logger.removeHandler(handler)
    assert seen and S not in seen[0] and "u:***@host" in seen[0]
