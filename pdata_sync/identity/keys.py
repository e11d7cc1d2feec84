"""Object keys: key-safe image names, the key template, parsing keys back, patientGuids.

Keys always start with ``images/{patientGuid}/`` (docs/product-rules.md §3); a key never
contains ``..``, an empty segment or a character outside ``A-Z a-z 0-9 . _ - /``.
"""

from __future__ import annotations

import re
import string
from urllib.parse import quote, unquote

from text_unidecode import unidecode

from pdata_sync.base.config import DEFAULT_KEY_TEMPLATE
from pdata_sync.base.key_template import FIELD_PATTERNS

NAME_MAX = 100
FALLBACK_NAME = "unnamed"
# S3 allows 2 KB of user metadata in all; the encoded image name gets at most this much.
NAME_METADATA_MAX = 1024

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_UNDERSCORES = re.compile(r"_{2,}")
_KEY_SAFE = re.compile(r"^[A-Za-z0-9._/-]+$")


def is_canonical_guid(value: object) -> bool:
    """True for a lower-case, hyphenated 36-character UUID and nothing else."""
    return isinstance(value, str) and bool(_GUID.fullmatch(value))


def safe_name(name: str | None) -> str:
    """Make an image name key-safe (docs/product-rules.md §3.1).

    ASCII-folded, only ``A-Z a-z 0-9 . _ -``, at most 100 characters, never empty and never
    containing ``..``. ``None``, blank or all-symbol names become ``unnamed``.
    """
    if not name:
        return FALLBACK_NAME
    text = name if name.isascii() else unidecode(name)  # unidecode loads its tables once
    text = _UNSAFE.sub("_", text)
    text = _DOTS.sub(".", text)
    text = _UNDERSCORES.sub("_", text)
    text = text.strip("._-")
    text = text[:NAME_MAX].rstrip("._-")
    return text or FALLBACK_NAME


def encode_name_for_metadata(name: str | None) -> str:
    """Percent-encode the original name (UTF-8) for an S3 metadata header, within 1 KB.

    A missing or empty name is stored as ``unnamed``: some S3 servers drop empty values.
    """
    text = name if name and name.strip() else FALLBACK_NAME
    encoded = quote(text, safe="")
    while len(encoded) > NAME_METADATA_MAX:
        text = text[: max(0, len(text) - max(1, (len(encoded) - NAME_METADATA_MAX) // 9))]
        encoded = quote(text, safe="")
    return encoded


def decode_name_from_metadata(value: str) -> str:
    """Inverse of :func:`encode_name_for_metadata`."""
    return unquote(value)


def render_key(
    template: str, *, patient_guid: str, clinic_id: str, image_id: int, name: str | None
) -> str:
    """Build an object key from ``template``; ``name`` is made key-safe here."""
    if not is_canonical_guid(patient_guid):
        raise ValueError("patient_guid is not a canonical UUID")
    key = template.format(
        patient_guid=patient_guid,
        clinic_id=clinic_id,
        image_id=str(int(image_id)),
        name=safe_name(name),
    )
    prefix = patient_prefix(patient_guid)
    segments = key.split("/")
    if (
        not key.startswith(prefix)
        or not _KEY_SAFE.fullmatch(key)
        or any(s in ("", ".", "..") for s in segments)
        or ".." in key
        or len(key.encode()) > 1024
    ):
        raise ValueError(f"template {template!r} produced an unsafe key")
    return key


THUMBNAILS_ROOT = "thumbnails/"


def thumbnail_key(image_key: str) -> str:
    """Where an image's JPEG thumbnail lives: ``images/{guid}/a/b.dcm`` becomes
    ``thumbnails/{guid}/a/b.jpg``, outside ``images/`` so retrieval lists images only."""
    if not image_key.startswith("images/"):
        raise ValueError("not an image key")
    rest = image_key[len("images/") :]
    stem = rest[: -len(".dcm")] if rest.lower().endswith(".dcm") else rest
    return f"{THUMBNAILS_ROOT}{stem}.jpg"


def thumbnail_prefix(patient_guid: str) -> str:
    """``thumbnails/{patientGuid}/``; raises ValueError unless the GUID is canonical."""
    return THUMBNAILS_ROOT + patient_prefix(patient_guid)[len("images/") :]


def patient_prefix(patient_guid: str) -> str:
    """``images/{patientGuid}/``; raises ValueError unless the GUID is canonical."""
    if not is_canonical_guid(patient_guid):
        raise ValueError("patient_guid is not a canonical UUID")
    return f"images/{patient_guid}/"


_GROUPS = {field: f"(?P<{field}>{pattern})" for field, pattern in FIELD_PATTERNS.items()}


def key_pattern(template: str = DEFAULT_KEY_TEMPLATE) -> re.Pattern[str]:
    """A regex that parses keys made by ``template`` back into their fields."""
    parts = []
    seen: set[str] = set()
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(_GROUPS[field] if field not in seen else f"(?P={field})")
            seen.add(field)
    return re.compile("^" + "".join(parts) + "$")


def parse_key(key: str, template: str = DEFAULT_KEY_TEMPLATE) -> dict[str, str | int] | None:
    """Fields of a key made by ``template`` (or the default template), or None."""
    for tpl in dict.fromkeys([template, DEFAULT_KEY_TEMPLATE]):
        m = key_pattern(tpl).fullmatch(key)
        if m:
            fields: dict[str, str | int] = dict(m.groupdict())
            if "image_id" in fields:
                fields["image_id"] = int(fields["image_id"])
            return fields
    return None
