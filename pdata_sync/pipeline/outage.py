"""What the database no longer says about images the archive holds (product-rules §2.5, §2.6).

A night on which the Sidexis database answers with less (a restore in progress, a wrong
database) must neither re-key archived images to the fallback name nor retire them. Before
anything is uploaded, a sync asks the catalog which of the images without a media row, and
which images of patients without a patient row, it holds: those rows *vanished* (images
that never had a row did not). Above the safety limit the run stops; below it, an image
whose media row vanished keeps the name it is archived under.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pdata_sync.catalog import ClinicImages
from pdata_sync.identity.keys import FALLBACK_NAME, parse_key


def names_archived(
    archived: Iterable[tuple[int, str, str | None]], key_template: str
) -> dict[int, str]:
    """image id -> the name it is archived under, for the images that had a media row when
    they were archived, from the catalog's ``(image id, key, name)`` rows: the recorded name
    ("" for a row without one), else (rows recorded before names were) the one its key
    carries, unless that is the fallback name (the image never had a row, or we cannot
    tell)."""
    names: dict[int, str] = {}
    for image_id, key, name in archived:  # the first name found wins (this bucket's first)
        if name is not None:
            names.setdefault(image_id, name)
            continue
        fields = parse_key(key, key_template) or {}
        from_key = fields.get("name")
        if isinstance(from_key, str) and from_key != FALLBACK_NAME:
            names.setdefault(image_id, from_key)
    return names


@dataclass(frozen=True)
class DatabaseCheck:
    """What the database no longer says about images the archive holds: a media row
    vanished (``media``: image id -> the name it is archived under), or the patient row
    (``patient_images``: archived images of patients no longer in the patient table)."""

    media: Mapping[int, str]
    patient_images: int
    archived: int  # the clinic's archived images, in any destination (the limit's base)

    def problem(self, limit: int, media_table: str, patient_table: str) -> str | None:
        """The one line that stops a run before any upload, when more rows vanished than the
        safety limit allows (``limit``); None when the run may go on."""
        vanished = len(self.media) + self.patient_images
        if vanished <= limit:
            return None
        return (
            f"database: {len(self.media)} archived image(s) have no row in {media_table} and "
            f"{self.patient_images} archived image(s) no patient row in {patient_table} any "
            f"more, more than the safety limit allows ({limit} of {self.archived} archived "
            "images); is the "
            "database being restored, or is it another database? Nothing was uploaded or "
            "retired"
        )


def database_check(
    images: ClinicImages,
    key_template: str,
    no_media_row: list[int],
    no_patient_row: list[int],
) -> DatabaseCheck:
    """Which of these images (without a media row; of patients without a patient row) the
    catalog holds: rows that vanished from the database, not images that never had one."""
    if not no_media_row and not no_patient_row:
        return DatabaseCheck({}, 0, 0)
    archived = images.archived_images([*no_media_row, *no_patient_row])
    lost_media = set(no_media_row)
    names = names_archived((a for a in archived if a[0] in lost_media), key_template)
    lost_patient = set(no_patient_row)
    patient_images = len({a[0] for a in archived if a[0] in lost_patient})
    if not names and not patient_images:
        return DatabaseCheck({}, 0, 0)
    return DatabaseCheck(names, patient_images, images.archived_image_count())
