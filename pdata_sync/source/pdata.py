"""Reading the Sidexis PDATA tree: patient folders ``P_{patientId}`` and image files
``{prefix}_{imageId}.dcm``. Read-only: nothing here opens a file for writing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pdata_sync.base.errors import ConfigError

# Ids of any width: P_1, P_00001234, P_000000000042. Windows shares are case-insensitive.
_PATIENT_FOLDER = re.compile(r"^P_(\d{1,18})$", re.IGNORECASE)
_IMAGE_FILE = re.compile(r"^(\d{1,18})_(\d{1,18})\.dcm$", re.IGNORECASE)
_MAX_SQL_INT = 2**63 - 1

SKIP_NOT_PATIENT_FOLDER = "entries_not_patient_folders"
SKIP_NOT_IMAGE_FILE = "files_not_images"


@dataclass(frozen=True)
class Problem:
    """An input item that could not be used: its path (relative to PDATA) and why."""

    path: str
    reason: str
    # the share or a file could not be read: the environment, reported as *failed*
    environment: bool = False

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class PatientFolder:
    patient_id: int
    name: str  # folder name relative to the PDATA root


@dataclass(frozen=True)
class ImageFile:
    patient_id: int
    image_id: int
    rel_path: str  # relative to the PDATA root, '/'-separated
    size: int
    mtime_ns: int


def parse_patient_folder(name: str) -> int | None:
    """The Sidexis patient id of folder ``name``, or None if it is not a patient folder."""
    m = _PATIENT_FOLDER.fullmatch(name)
    if not m:
        return None
    value = int(m.group(1))
    return value if 0 < value <= _MAX_SQL_INT else None


def parse_image_file(name: str) -> int | None:
    """The imageId of file ``name`` (``0000_00123.dcm`` -> 123), or None if not an image."""
    m = _IMAGE_FILE.fullmatch(name)
    if not m:
        return None
    value = int(m.group(2))
    return value if 0 < value <= _MAX_SQL_INT else None


def check_root(root: str | Path) -> Path:
    """Return ``root`` as a Path if it is a readable folder, else raise :class:`ConfigError`."""
    path = Path(root)
    if not path.exists():
        raise ConfigError(f"PDATA root {path} does not exist (pdata_root in the clinic config)")
    if not path.is_dir():
        raise ConfigError(f"PDATA root {path} is not a folder (pdata_root in the clinic config)")
    try:
        with os.scandir(path) as it:
            next(it, None)
    except PermissionError:
        raise ConfigError(f"PDATA root {path} is not readable by this user") from None
    except OSError as exc:
        raise ConfigError(f"PDATA root {path} cannot be listed: {exc.strerror or exc}") from None
    return path


def not_regular(entry: os.DirEntry[str], wanted: str) -> str | None:
    """Why an entry named like a ``wanted`` ("folder" or "file") is not one, or None when it
    is. Links are never followed: one could lead outside PDATA, or into another patient's
    folder."""
    try:
        if entry.is_symlink():
            dangling = not os.path.exists(entry.path)
            return "a dangling symbolic link" if dangling else "a symbolic link (not followed)"
        if entry.is_dir(follow_symlinks=False):
            return None if wanted == "folder" else "a folder"
        if entry.is_file(follow_symlinks=False):
            return None if wanted == "file" else "a file"
        return "neither a file nor a folder"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"


def scan_patient_folders(
    root: str | Path,
) -> tuple[list[PatientFolder], Counter[str], list[Problem]]:
    """List the patient folders directly under ``root``; count everything else as skipped.

    An entry named like a patient folder that is not one (a file, a link, a dangling link)
    is a problem of the environment, reported as *failed*: skipping it silently would leave
    its patient's images unarchived, or have them retired as gone."""
    path = check_root(root)
    folders: list[PatientFolder] = []
    skipped: Counter[str] = Counter()
    problems: list[Problem] = []
    with os.scandir(path) as it:
        for entry in it:
            pid = parse_patient_folder(entry.name)
            if pid is None:
                skipped[SKIP_NOT_PATIENT_FOLDER] += 1
            elif why := not_regular(entry, "folder"):
                problems.append(
                    Problem(entry.name, f"not a patient folder: {why}", environment=True)
                )
            else:
                folders.append(PatientFolder(pid, entry.name))
    folders.sort(key=lambda f: (f.patient_id, f.name))
    problems.sort(key=lambda p: p.path)
    return folders, skipped, problems


def patient_ids_on_share(root: str | Path) -> frozenset[int]:
    """The Sidexis ids of every patient folder directly under ``root`` (empty when it cannot
    be listed): which ids a file's PatientID may be shown as (a Sidexis id, not a CardId)."""
    try:
        with os.scandir(root) as it:
            ids = (parse_patient_folder(entry.name) for entry in it)
            return frozenset(i for i in ids if i is not None)
    except OSError:
        return frozenset()


def scan_images(
    root: str | Path, folders: list[PatientFolder]
) -> tuple[list[ImageFile], Counter[str], list[Problem]]:
    """List the image files of ``folders``.

    Returns the images, counts of skipped non-image entries, and problems that the run
    reports: a duplicate imageId (bad input, *rejected*), a folder or file that cannot be
    read, an entry named like an image that is a link or a folder (the environment:
    ``environment=True``, *failed*).
    """
    root = Path(root)
    images: list[ImageFile] = []
    skipped: Counter[str] = Counter()
    problems: list[Problem] = []
    seen: dict[int, str] = {}
    for folder in folders:
        try:
            with os.scandir(root / folder.name) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(
                Problem(folder.name, f"folder cannot be listed: {exc.strerror}", environment=True)
            )
            continue
        for entry in entries:
            rel = f"{folder.name}/{entry.name}"
            image_id = parse_image_file(entry.name)
            if image_id is None:
                skipped[SKIP_NOT_IMAGE_FILE] += 1
                continue
            if why := not_regular(entry, "file"):
                # an image replaced by a link or a folder: never read through it, never
                # take it for gone (its archived object stays)
                problems.append(Problem(rel, f"not an image file: {why}", environment=True))
                continue
            if image_id in seen:
                problems.append(
                    Problem(rel, f"duplicate imageId {image_id} (also {seen[image_id]})")
                )
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                problems.append(Problem(rel, f"cannot read file: {exc.strerror}", environment=True))
                continue
            seen[image_id] = rel
            images.append(ImageFile(folder.patient_id, image_id, rel, st.st_size, st.st_mtime_ns))
    return images, skipped, problems


def read_if_unchanged(path: Path, sha256_hex: str) -> bytes | None:
    """The file's bytes if their SHA-256 is still ``sha256_hex`` (what was archived), else
    None (changed, gone or unreadable): a later copy of an image must be the archived one."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256_hex else None
