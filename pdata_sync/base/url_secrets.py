"""Secrets never live in a URL of the config (docs/product-rules.md §6).

A password in a database URL (user part, a ``password``/``pwd`` query parameter, or ``PWD=``
inside ``odbc_connect``), credentials in the resolver's or S3 endpoint's URL, or a token in a
query string would be printed in logs, stored in Prefect's run parameters and shown in the
UI. The config refuses them, naming where the secret sits but never echoing it, and
:func:`redact` masks any that got into a message anyway.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

SECRET_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "auth",
        "api_key",
        "apikey",
        "api-key",
        "key",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)
_PASSWORD_IN_VALUE = re.compile(r"(?:^|[;&\s])\s*(?:pwd|password|passwd)\s*=", re.IGNORECASE)


def url_secret(value: str, *, http: bool) -> str | None:
    """Where ``value`` carries a secret, in words that do not repeat it; None if it does
    not. ``http``: any user part counts (a database URL may name its user)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None  # not a URL: the field's own check reports it
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        if http and userinfo:
            return "credentials in the user part of the URL"
        if ":" in userinfo and userinfo.split(":", 1)[1]:
            return "a password in the user part of the URL"
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name.strip().lower() in SECRET_PARAMETERS:
            return f"a secret in the query parameter {name.strip()[:40]!r}"
        if _PASSWORD_IN_VALUE.search(unquote(raw)):
            return f"a password inside the query parameter {name.strip()[:40]!r}"
    return None


_REDACTIONS = (
    # scheme://user:password@host
    (re.compile(r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+(?=@)"), r"\g<keep>***"),
    # ?password=... / &pwd=... / ;PWD=... (odbc_connect, encoded or not)
    (
        re.compile(
            r"(?P<keep>(?:[?&;\s]|%3B|%26|^)(?:"
            + "|".join(re.escape(n) for n in sorted(SECRET_PARAMETERS))
            + r")(?:=|%3D))[^&;\s'\"]*",
            re.IGNORECASE,
        ),
        r"\g<keep>***",
    ),
)


def redact(text: str) -> str:
    """``text`` with URL passwords and secret query values replaced by ``***``."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text
