"""Which patientGuids may name a patient (docs/adr/0007-identity-rules.md).

An image under the wrong patientGuid is a patient-safety incident: retrieval hands out a
patient's X-rays by patientGuid alone. A patientGuid is therefore accepted only when it is
a canonical UUID and not the nil UUID, and a CardId only when the resolver gave it exactly
one. Anything else is the resolver's fault: the CardId's images fail (exit 1) with the
reason, they are never uploaded and never counted as "unknown patient".
"""

from __future__ import annotations

from .keys import is_canonical_guid

NIL_GUID = "00000000-0000-0000-0000-000000000000"

MALFORMED = "the resolver returned a malformed patientGuid"
NIL = "the resolver returned the nil patientGuid (no patient)"


def guid_fault(value: object) -> str | None:
    """Why ``value`` (already trimmed and lower-cased) cannot name a patient, or None."""
    if not is_canonical_guid(value):
        return MALFORMED
    if value == NIL_GUID:
        return NIL
    return None


def conflict(guids: set[str]) -> str:
    """The reason for a CardId the resolver gave several patientGuids in one answer."""
    return f"the resolver returned {len(guids)} different patientGuids for one CardId"
