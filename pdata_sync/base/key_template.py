"""What a key template's fields may hold, and whether its keys parse back to one image.

Two images must never share an object key: within a clinic, or between clinics sharing a
bucket. A template is accepted only when every key it makes can be read back to exactly one
(patientGuid, clinic id, image id, name), which holds when each field is bounded by a
literal character that its own values cannot contain (docs/product-rules.md §3.1):

* reading from the left, a field followed by a literal whose first character is outside the
  field's characters ends exactly where that character first appears;
* reading from the right, a field preceded by a literal whose last character is outside
  the field's characters starts right after that character's last appearance;
* at most one field, the one between the two readings, takes what is left.

``{clinic_id}_{image_id}{name}`` is refused (image 61 named ``2x`` and image 612 named
``x`` would share a key), and so is ``{clinic_id}-{image_id}-{name}`` (clinic ``a`` image 1
named ``2-x`` and clinic ``a-1`` image 2 named ``x``): a dash can be part of a clinic id
and of a name.

No imports from the rest of the package: :mod:`pdata_sync.base.config` validates templates with
it, :mod:`pdata_sync.identity.keys` parses keys with the same character sets.
"""

from __future__ import annotations

import string

# The characters each field's values are made of. The clinic id's set is what
# ClinicConfig accepts (letters, digits, dots, dashes; no underscore, slash or space), the
# name's is what keys.safe_name leaves, the patientGuid is a canonical lower-case UUID.
FIELD_CHARACTERS: dict[str, frozenset[str]] = {
    "patient_guid": frozenset("0123456789abcdef-"),
    "clinic_id": frozenset(string.ascii_letters + string.digits + ".-"),
    "image_id": frozenset(string.digits),
    "name": frozenset(string.ascii_letters + string.digits + "._-"),
}
# The same sets as regular-expression classes (for parsing keys back).
FIELD_PATTERNS = {
    "patient_guid": r"[0-9a-f-]{36}",
    "clinic_id": r"[A-Za-z0-9.-]+",
    "image_id": r"\d+",
    "name": r"[A-Za-z0-9._-]+",
}


def _pieces(template: str) -> tuple[list[str], list[str]]:
    """(literals, fields) of ``template``: ``literals[i]`` comes before ``fields[i]`` and
    ``literals[-1]`` after the last field (len(literals) == len(fields) + 1)."""
    literals, fields = [""], []
    for literal, field, _, _ in string.Formatter().parse(template):
        literals[-1] += literal
        if field is not None:
            fields.append(field)
            literals.append("")
    return literals, fields


def _bounded_after(field: str, literal: str) -> bool:
    return bool(literal) and literal[0] not in FIELD_CHARACTERS[field]


def _bounded_before(field: str, literal: str) -> bool:
    return bool(literal) and literal[-1] not in FIELD_CHARACTERS[field]


def ambiguity(template: str) -> str | None:
    """Why keys made by ``template`` might not parse back to exactly one image, or None when
    they always do. Placeholders must be known (:data:`FIELD_CHARACTERS`)."""
    literals, fields = _pieces(template)
    for middle in range(len(fields)):
        left_ok = all(_bounded_after(fields[i], literals[i + 1]) for i in range(middle))
        right_ok = all(
            _bounded_before(fields[i], literals[i]) for i in range(middle + 1, len(fields))
        )
        if left_ok and right_ok:
            return None
    # name the first boundary that fails both ways, the one an operator should change
    for i in range(len(fields) - 1):
        between = literals[i + 1]
        if not _bounded_after(fields[i], between) and not _bounded_before(fields[i + 1], between):
            what = f"{between!r}" if between else "nothing"
            return (
                f"{{{fields[i]}}} and {{{fields[i + 1]}}} are separated by {what}, which can "
                f"be part of their values, so two images could get the same key; put a "
                "separator between them that neither can contain ('_' or '/' after "
                "{clinic_id} and {image_id}, '/' around {name})"
            )
    return (
        "keys could not be read back to exactly one image: at most one field may lack a "
        "separator its values cannot contain ('_' or '/' after {clinic_id} and {image_id}, "
        "'/' around {name})"
    )
