"""Reading every page of a Prefect API listing (offset paging, the server's largest page)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PAGE = 200  # the most the Prefect API returns at once


def all_pages(read: Callable[..., list[Any]]) -> list[Any]:
    """Every item of a listing: ``read(limit=..., offset=...)`` page after page until one
    comes back short. Give the listing a stable sort, or items may move between pages."""
    found: list[Any] = []
    while True:
        page = read(limit=PAGE, offset=len(found))
        found.extend(page)
        if len(page) < PAGE:
            return found
