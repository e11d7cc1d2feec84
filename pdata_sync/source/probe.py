"""``pdata-sync probe``: how a clinic's files and database relate, before choosing settings.

Reads a sample of the PDATA share (file headers only, never pixels) and the Sidexis
database, uploads nothing, asks no resolver, and reports in counts and PDATA paths:

* what each file's own PatientID names: its folder's Sidexis patient id, one of that
  patient's CardIds, both, neither (and whether it then names another patient's folder),
  or nothing (empty); and how many files each ``database.header_patient_id`` rule would
  refuse, so an operator can choose the rule (product-rules §10);
* whether the media rows agree with their folders (``database.media_patient_column``),
  which incremental runs rely on (docs/adr/0010).

It prints no patient name, birth date or CardId: CardIds are compared as digests
(:func:`pdata_sync.identity.rules.card_digest`), and the only ids shown are Sidexis ids.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.errors import BadInputError, describe
from pdata_sync.identity.rules import (
    HEADER_RULES,
    accepts,
    card_digest,
    header_names,
    names_other_folder,
)
from pdata_sync.source.dicom_meta import read_header
from pdata_sync.source.pdata import ImageFile, PatientFolder, scan_images, scan_patient_folders
from pdata_sync.source.sidexis_db import fetch_media, fetch_patients

DEFAULT_SAMPLE = 500
PER_FOLDER = 5  # images read per sampled folder: the sample spreads over many patients
SHOWN = 20  # paths listed per finding

# what a file's PatientID names
FOLDER = "folder"  # the folder's Sidexis patient id
CARD = "card"  # one of the folder patient's CardIds
BOTH = "folder_and_card"
NEITHER = "neither"
EMPTY = "empty"
UNREADABLE = "unreadable"


@dataclass
class ProbeReport:
    """What :func:`probe` found; :meth:`to_dict` is the CLI's JSON."""

    clinic_id: str
    patient_folders: int = 0
    folders_sampled: int = 0
    files_read: int = 0
    header: Counter[str] = field(default_factory=Counter)
    names_other_folder: int = 0  # of NEITHER: the PatientID is another patient folder's id
    refused_by_rule: dict[str, int] = field(default_factory=dict)
    media: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # finding -> paths

    def example(self, finding: str, path: str) -> None:
        paths = self.examples.setdefault(finding, [])
        if len(paths) < SHOWN:
            paths.append(path)

    @property
    def suggested_rule(self) -> str | None:
        """The strictest rule that refuses none of the sample's files, None if every rule
        refuses some (then the files need looking at before any rule is chosen)."""
        for rule in ("folder", "card", "folder_or_card"):
            if self.refused_by_rule.get(rule, 0) == 0:
                return rule
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "clinic_id": self.clinic_id,
            "patient_folders": self.patient_folders,
            "folders_sampled": self.folders_sampled,
            "files_read": self.files_read,
            "header_patient_id": {
                "names": {k: self.header.get(k, 0) for k in (FOLDER, CARD, BOTH, NEITHER, EMPTY)},
                "unreadable": self.header.get(UNREADABLE, 0),
                "names_another_patients_folder": self.names_other_folder,
                "refused_by_rule": self.refused_by_rule,
                "suggested_rule": self.suggested_rule,
            },
            "media_rows": dict(sorted(self.media.items())),
            "examples": self.examples,
        }


def sample_folders(
    folders: list[PatientFolder], wanted_images: int, seed: int = 0
) -> list[PatientFolder]:
    """Folders spread over the share (a fixed shuffle, so two probes agree), enough for
    about ``wanted_images`` images at :data:`PER_FOLDER` each."""
    shuffled = list(folders)
    random.Random(seed).shuffle(shuffled)
    return sorted(shuffled[: max(1, -(-wanted_images // PER_FOLDER))], key=lambda f: f.name)


_FINDING = {(True, True): BOTH, (True, False): FOLDER, (False, True): CARD, (False, False): NEITHER}


def probe(config: ClinicConfig, engine: Engine, sample: int = DEFAULT_SAMPLE) -> ProbeReport:
    """Read about ``sample`` files of the clinic's share and their database rows."""
    report = ProbeReport(config.clinic_id)
    folders, _, _ = scan_patient_folders(config.pdata_root)
    report.patient_folders = len(folders)
    chosen = sample_folders(folders, sample)
    images, _, _ = scan_images(config.pdata_root, chosen)
    per_folder: Counter[int] = Counter()
    picked: list[ImageFile] = []
    for image in images:
        if per_folder[image.patient_id] < PER_FOLDER and len(picked) < sample:
            per_folder[image.patient_id] += 1
            picked.append(image)
    report.folders_sampled = len(per_folder)
    lookup = fetch_patients(engine, config.database, sorted(per_folder))
    media = fetch_media(engine, config.database, [i.image_id for i in picked])
    share_ids = frozenset(f.patient_id for f in folders)
    refused = Counter({rule: 0 for rule in HEADER_RULES if rule != "off"})  # files each refuses
    root = Path(config.pdata_root)
    for image in picked:
        cards = frozenset(card_digest(c) for c in lookup.card_ids.get(image.patient_id, []))
        try:
            header = read_header(root / image.rel_path)
        except (BadInputError, OSError) as exc:
            report.header[UNREADABLE] += 1
            why = str(exc) if isinstance(exc, BadInputError) else describe(exc)
            report.example(UNREADABLE, f"{image.rel_path}: {why}")
            continue
        report.files_read += 1
        named = header_names(header.patient_id, image.patient_id, cards)
        finding = EMPTY if named is None else _FINDING[named]
        report.header[finding] += 1
        if finding == NEITHER:
            report.example("header_names_neither", image.rel_path)
            if names_other_folder(header.patient_id, share_ids) is not None:
                report.names_other_folder += 1
        for rule in refused:  # an empty PatientID is accepted by every rule
            refused[rule] += named is not None and not accepts(rule, *named)
        _media_finding(report, image, media.get(image.image_id), config)
    report.refused_by_rule = dict(refused)
    return report


def _media_finding(report: ProbeReport, image: ImageFile, row: Any, config: ClinicConfig) -> None:
    if row is None:
        report.media["no_row"] += 1
        report.example("media_no_row", image.rel_path)
    elif row.deleted:
        report.media["deleted"] += 1
    elif not config.database.media_patient_column:
        report.media["no_patient_column"] += 1
    elif row.patient_id == image.patient_id:
        report.media["agrees_with_folder"] += 1
    else:
        report.media["names_another_patient"] += 1
        report.example("media_names_another_patient", image.rel_path)


def render_text(report: ProbeReport) -> list[str]:
    """The report as an operator reads it (counts and paths; no names, no CardIds)."""
    data = report.to_dict()
    header = data["header_patient_id"]
    lines = [
        f"clinic {report.clinic_id}: {report.patient_folders} patient folders; read the "
        f"headers of {report.files_read} files in {report.folders_sampled} of them",
        "the file's own PatientID names:",
    ]
    labels = {
        FOLDER: "its folder's Sidexis patient id",
        CARD: "one of its patient's CardIds",
        BOTH: "both (the Sidexis id is the CardId)",
        NEITHER: "neither",
        EMPTY: "nothing (empty; accepted and counted)",
    }
    lines += [f"  {header['names'][k]:>6}  {label}" for k, label in labels.items()]
    if header["names_another_patients_folder"]:
        lines.append(
            f"          of which {header['names_another_patients_folder']} name another "
            "patient's folder"
        )
    if header["unreadable"]:
        lines.append(f"  {header['unreadable']:>6}  files that are not readable DICOM")
    lines.append("files each database.header_patient_id rule would refuse:")
    lines += [f"  {n:>6}  {rule}" for rule, n in header["refused_by_rule"].items()]
    suggested = header["suggested_rule"]
    lines.append(
        f"suggested: header_patient_id: {suggested}"
        if suggested
        else "suggested: none fits every file; look at the files listed below first"
    )
    lines.append("media rows of those files:")
    lines += [f"  {n:>6}  {finding.replace('_', ' ')}" for finding, n in data["media_rows"].items()]
    for finding, paths in data["examples"].items():
        lines.append(f"{finding.replace('_', ' ')} (first {len(paths)}):")
        lines += [f"  {p}" for p in paths]
    return lines
