"""Which patientGuids may name a patient, and which patient a file may name itself
(docs/adr/0007-identity-rules.md).

An image under the wrong patientGuid is a patient-safety incident: retrieval hands out a
patient's X-rays by patientGuid alone. A patientGuid is therefore accepted only when it is
a canonical UUID and not the nil UUID, and a CardId only when the resolver gave it exactly
one. Anything else is the resolver's fault: the CardId's images fail (exit 1) with the
reason, they are never uploaded and never counted as "unknown patient".

A file's own header names a patient too (PatientID). A file copied into another patient's
folder keeps the PatientID of the patient it was taken of; archived under the folder's
patientGuid it would be shown under the wrong patient, and the viewer manifest (which
replaces PatientID with the patientGuid) would hide it. :class:`HeaderCheck` compares the
header with the folder's Sidexis id and that patient's CardIds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from pdata_sync.identity.keys import is_canonical_guid

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


# --- the file's own PatientID (product-rules §10) -------------------------------------

HEADER_RULES = ("folder_or_card", "folder", "card", "off")
# CardIds are compared as keyed digests: a planned image carries its patient's, never the
# CardIds themselves. The key lives and dies with the process (plan and upload run in one).
_CARD_KEY = secrets.token_bytes(32)


def card_digest(card_id: str) -> str:
    """A digest of a CardId, normalized as for the resolver (trimmed), for this process."""
    return hmac.new(_CARD_KEY, card_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def _sidexis_id(value: str) -> int | None:
    """A trimmed PatientID read as a Sidexis patient id (ASCII digits), else None."""
    return int(value) if value.isascii() and value.isdigit() else None


def header_names(
    header_patient_id: str | None, patient_id: int, card_digests: frozenset[str]
) -> tuple[bool, bool] | None:
    """What a file's PatientID names: (its folder's Sidexis patient id, one of that
    patient's CardIds); None when it is absent or empty."""
    value = (header_patient_id or "").strip()
    if not value:
        return None
    return _sidexis_id(value) == patient_id, card_digest(value) in card_digests


def accepts(rule: str, names_folder: bool, names_card: bool) -> bool:
    """Whether ``database.header_patient_id``'s ``rule`` accepts a PatientID that names the
    folder's patient and/or one of its CardIds."""
    return {
        "folder_or_card": names_folder or names_card,
        "folder": names_folder,
        "card": names_card,
        "off": True,
    }[rule]


@dataclass(frozen=True)
class HeaderCheck:
    """What a file's PatientID may say: its folder's Sidexis patient id and (as digests)
    that patient's CardIds, under the clinic's rule (``database.header_patient_id``)."""

    rule: str
    patient_id: int
    card_digests: frozenset[str] = frozenset()

    def conflict(self, header_patient_id: str | None) -> str | None:
        """Why a file whose header says ``header_patient_id`` is not archived under this
        folder's patient, or None. An absent or empty PatientID is accepted (counted by
        the caller). The reason names the folder's Sidexis id and, never the header's
        value itself (it may be a CardId), what the header does not match."""
        if self.rule == "off":
            return None
        named = header_names(header_patient_id, self.patient_id, self.card_digests)
        if named is None or accepts(self.rule, *named):
            return None
        what = {
            "folder_or_card": f"names neither patient {self.patient_id} (its folder) nor one "
            "of its CardIds",
            "folder": f"does not name patient {self.patient_id} (its folder)",
            "card": f"is not a CardId of patient {self.patient_id} (its folder)",
        }[self.rule]
        return (
            f"identity conflict: the file's PatientID {what} (database.header_patient_id: "
            f"{self.rule}); not uploaded"
        )


def names_other_folder(header_patient_id: str | None, folders: frozenset[int]) -> int | None:
    """The Sidexis patient the header names, when it is the id of a patient folder on the
    share (a Sidexis id may be shown; a value that is not one may be a CardId, never is)."""
    named = _sidexis_id((header_patient_id or "").strip())
    return named if named in folders else None
