"""Restore from S3 alone: a clinic's archived images written back as a Sidexis share expects
them (``P_{patientId}/{file}.dcm``), for the day the clinic's server is gone
(docs/protecting-the-archive.md, "Restore").

Where each object goes, without the catalog:

* its ``source-path`` metadata, the file's path relative to PDATA when it was archived,
  checked to be a Sidexis path (``P_{digits}/{digits}_{digits}.dcm``) naming the object's
  own image id; a value that is not one is not trusted;
* else (objects archived before that metadata existed) the caller's ``locate``: the clinic's
  database and resolver, when they still answer (pdata_sync.pipeline.restore);
* else ``unmapped/{patientGuid}/{the key's file name}``: kept, never guessed.

Every body is checked against the SHA-256 stored with the object before it is given its name:
a file is written to a fresh temporary file and linked into place only when its bytes are
the archived ones (pdata_sync.base.local_files: owner-only, never through a link, never over
a file this run did not write). A file already there with the right SHA-256 is left as it is,
so a restore that stopped can be run again. The target folder must not be the PDATA share
or inside it: a restore never writes to the source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pdata_sync.archive.listing import iter_prefix
from pdata_sync.archive.retrieval import validate_guid
from pdata_sync.base.config import S3Config
from pdata_sync.base.errors import ConfigError, describe
from pdata_sync.base.local_files import UNCHANGED, NotReplaced, private_folder, write_new
from pdata_sync.identity.keys import decode_name_from_metadata, parse_key, patient_prefix
from pdata_sync.source.dicom_meta import file_sha256

UNMAPPED = "unmapped"
CSV_COLUMNS = ("path", "key", "sha256", "image_id", "name")
_SIDEXIS_PATH = re.compile(r"P_(\d{1,18})/(\d{1,18})_(\d{1,18})\.dcm", re.IGNORECASE)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20

# (image id, patientGuid) -> the path relative to the target, or None: not known
Locate = Callable[[list[tuple[int, str]]], dict[tuple[int, str], str]]


@dataclass
class RestoreReport:
    objects: int = 0
    written: int = 0
    present: int = 0  # already there with the right SHA-256
    from_metadata: int = 0
    from_database: int = 0
    unmapped: int = 0
    bytes_written: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)  # key, reason
    rows: list[dict[str, Any]] = field(default_factory=list)  # the CSV's rows
    csv_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "written": self.written,
            "present": self.present,
            "from_metadata": self.from_metadata,
            "from_database": self.from_database,
            "unmapped": self.unmapped,
            "bytes_written": self.bytes_written,
            "failed": sorted(self.failed, key=lambda f: f["key"]),
            "csv": self.csv_path,
        }


@dataclass(frozen=True)
class _Object:
    key: str
    guid: str
    image_id: int
    sha256: str | None  # hex, as stored with the object
    name: str
    source_path: str | None  # trusted Sidexis path, or None


def check_target(target: str | Path, pdata_root: str | Path) -> Path:
    """The restore's folder, refused when it is the PDATA share or inside it, also through
    a link (a restore never writes to the source). A folder that is itself a link is
    refused when it is opened (pdata_sync.base.local_files.private_folder)."""
    folder = Path(target)
    root = Path(pdata_root).resolve()
    resolved = folder.resolve()
    if resolved == root or root in resolved.parents:
        raise ConfigError(
            f"restore: {folder} is inside pdata_root ({pdata_root}); restore into a new folder"
        )
    return folder


def trusted_source_path(value: str | None, image_id: int) -> str | None:
    """``source-path`` metadata as a relative path, when it is a Sidexis path naming this
    image id; None otherwise (absent, or anything else: ``..``, absolute, another image)."""
    if not value:
        return None
    text = decode_name_from_metadata(value)
    match = _SIDEXIS_PATH.fullmatch(text)
    if match is None or int(match.group(3)) != image_id:
        return None
    return str(PurePosixPath(text))


def _read_object(client: Any, bucket: str, key: str, guid: str, image_id: int) -> _Object:
    head = client.head_object(Bucket=bucket, Key=key)
    meta = head.get("Metadata") or {}
    sha = str(meta.get("sha256", "")).lower()
    name = decode_name_from_metadata(meta["image-name"]) if meta.get("image-name") else ""
    return _Object(
        key=key,
        guid=guid,
        image_id=image_id,
        sha256=sha if _SHA256.fullmatch(sha) else None,
        name=name,
        source_path=trusted_source_path(meta.get("source-path"), image_id),
    )


def _sha256_of(path: Path) -> str | None:
    """The SHA-256 of the regular file at ``path`` (None: absent); a link or anything else
    there raises NotReplaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise NotReplaced(f"{path.name} exists and is not a regular file: not replaced")
    return file_sha256(path)


def _download_checked(client: Any, bucket: str, obj: _Object, target: Path) -> tuple[str, int]:
    """Write ``obj`` at ``target`` only if its bytes have the stored SHA-256: (how, bytes)."""
    size = 0

    def fill(fh: Any) -> None:
        nonlocal size
        digest = hashlib.sha256()
        body = client.get_object(Bucket=bucket, Key=obj.key)["Body"]
        for chunk in iter(lambda: body.read(_CHUNK), b""):
            digest.update(chunk)
            fh.write(chunk)
            size += len(chunk)
        if digest.hexdigest() != obj.sha256:  # only objects with one come here
            raise _Damaged(
                f"its bytes do not have the SHA-256 stored with it ({digest.hexdigest()[:12]}… "
                f"against {str(obj.sha256)[:12]}…): not restored"
            )

    return write_new(target, fill), size


class _Damaged(Exception):
    """A body whose SHA-256 is not the one stored with it."""


class _NotRead(Exception):
    """An object that could not be read, or carries no SHA-256 to check it against."""


@dataclass(frozen=True)
class _Done:
    """One object put in place: where (relative), how it was placed, what happened."""

    obj: _Object
    rel: str
    how: str
    done: str
    size: int


def restore(
    client: Any,
    s3: S3Config,
    clinic_id: str,
    to: str | Path,
    *,
    pdata_root: str | Path,
    patient_guids: Iterable[str] = (),
    locate: Locate | None = None,
    concurrency: int = 8,
    at: datetime | None = None,
) -> RestoreReport:
    """Write the clinic's archived images (only ``patient_guids``' when given) under ``to``,
    and a CSV of what is there (``restored-{UTC time}.csv``)."""
    target = private_folder(check_target(to, pdata_root))
    guids = [validate_guid(g) for g in dict.fromkeys(patient_guids)]
    prefixes = [patient_prefix(g) for g in guids] or ["images/"]
    listed: list[tuple[str, str, int]] = []
    for prefix in prefixes:
        for remote in iter_prefix(client, s3.bucket, prefix):
            fields = parse_key(remote.key, s3.key_template)
            if fields is None or fields.get("clinic_id", clinic_id) != clinic_id:
                continue  # another clinic's, or not an image key of ours
            listed.append((remote.key, str(fields["patient_guid"]), int(fields["image_id"])))
    report = RestoreReport(objects=len(listed))

    located: dict[tuple[int, str], str] = {}

    def place(obj: _Object) -> tuple[str, str]:
        """(path relative to the target, how it was found)."""
        if obj.source_path is not None:
            return obj.source_path, "metadata"
        found = located.get((obj.image_id, obj.guid))
        if found is not None and _SIDEXIS_PATH.fullmatch(found):
            return found, "database"
        return f"{UNMAPPED}/{obj.guid}/{obj.key.rsplit('/', 1)[-1]}", UNMAPPED

    def one(obj: _Object) -> _Done | Exception:
        """Put ``obj`` in place: what happened, or why not."""
        try:
            rel, how = place(obj)
            path = target / rel
            if _sha256_of(path) == obj.sha256:
                return _Done(obj, rel, how, UNCHANGED, 0)
            done, size = _download_checked(client, s3.bucket, obj, path)
            return _Done(obj, rel, how, done, size if done != UNCHANGED else 0)
        except Exception as exc:  # noqa: BLE001 - reported per object
            return exc

    def first(item: tuple[str, str, int]) -> _Object | _Done | Exception:
        """HEAD the object; one that says where it goes is put there at once (the HEADs and
        the downloads overlap), the others wait for the database (``locate``)."""
        try:
            obj = _read_object(client, s3.bucket, *item)
        except Exception as exc:  # noqa: BLE001 - reported per object
            return _NotRead(f"not read: {describe(exc)}")
        if obj.sha256 is None:
            return _NotRead("no SHA-256 stored with it: cannot be checked")
        return obj if obj.source_path is None else one(obj)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        outcomes = list(pool.map(first, listed))
        waiting = [o for o in outcomes if isinstance(o, _Object)]
        if waiting and locate is not None:
            located.update(locate([(o.image_id, o.guid) for o in waiting]))
        placed = dict(zip([o.key for o in waiting], pool.map(one, waiting), strict=True))
    for (key, _, _), result in zip(listed, outcomes, strict=True):
        if isinstance(result, _Object):
            result = placed[key]
        if isinstance(result, NotReplaced | _Damaged | _NotRead):
            report.failed.append({"key": key, "reason": str(result)})
            continue
        if isinstance(result, Exception):
            report.failed.append({"key": key, "reason": f"not restored: {describe(result)}"})
            continue
        obj, rel, how, done, size = result.obj, result.rel, result.how, result.done, result.size
        report.from_metadata += how == "metadata"
        report.from_database += how == "database"
        report.unmapped += how == UNMAPPED
        if done == UNCHANGED:
            report.present += 1
        else:
            report.written += 1
            report.bytes_written += size
        report.rows.append(
            {
                "path": rel,
                "key": obj.key,
                "sha256": obj.sha256,
                "image_id": obj.image_id,
                "name": _cell(obj.name),
            }
        )
    report.rows.sort(key=lambda r: r["path"])
    report.csv_path = str(_write_csv(target, report.rows, at or datetime.now(UTC)))
    return report


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: a name beginning like a formula is quoted."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _write_csv(target: Path, rows: list[dict[str, Any]], at: datetime) -> Path:
    """``restored-{UTC time}.csv`` in ``target``: every file this run found or wrote."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = target / f"restored-{at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}.csv"
    write_new(path, out.getvalue().encode("utf-8"))
    return path
