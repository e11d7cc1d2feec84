"""Files pdata-sync writes on the worker for a person to open (downloaded X-rays, previews,
viewer manifests): patient data and bearer URLs, so

* readable by their owner only (0600), in a folder created 0700 when it did not exist;
* never written through a symbolic link: the bytes go to a fresh temporary file that
  ``mkstemp`` creates (``O_CREAT|O_EXCL``, a random name a planted link cannot match), and
  the temporary file is *linked* to its final name, which fails when anything (a file, a
  link, a dangling link) is already there, and never follows one;
* never over a file this run did not write: a file already at the final name with the same
  bytes is left as it is ("unchanged"); with other bytes it is not replaced
  (:class:`NotReplaced`), and the caller reports it.

On a file system without hard links (some network shares) the final name is created with
``O_CREAT|O_EXCL|O_NOFOLLOW`` instead: as safe, not atomic.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pdata_sync.base.errors import InvalidRequestError

WRITTEN = "written"
UNCHANGED = "unchanged"
_CHUNK = 1 << 20


class NotReplaced(Exception):
    """Something other than these bytes is already at the final name: left as it is."""


def private_folder(path: str | Path) -> Path:
    """The folder ``path``: created 0700 (with any missing parents) when absent; refused
    when it is a symbolic link or not a folder."""
    folder = Path(path)
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        return folder
    if stat.S_ISLNK(st.st_mode):
        raise InvalidRequestError(
            f"{folder} is a symbolic link: give the folder it points to, not the link"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidRequestError(f"{folder} exists and is not a folder")
    return folder


def _same_file(target: Path, written: Path) -> bool:
    """True if ``target`` is a regular file (not a link) with exactly ``written``'s bytes."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # a link (ELOOP), gone, unreadable: not ours to keep
    with os.fdopen(fd, "rb") as there, open(written, "rb") as ours:
        if not stat.S_ISREG(os.fstat(there.fileno()).st_mode):
            return False
        if os.fstat(there.fileno()).st_size != os.fstat(ours.fileno()).st_size:
            return False
        while True:
            a, b = there.read(_CHUNK), ours.read(_CHUNK)
            if a != b:
                return False
            if not a:
                return True


def _copy_exclusive(source: Path, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        while chunk := src.read(_CHUNK):
            out.write(chunk)


def write_new(path: str | Path, content: bytes | Callable[[BinaryIO], None]) -> str:
    """Write ``content`` (bytes, or a function writing into an open file) at ``path``;
    returns :data:`WRITTEN` or :data:`UNCHANGED` (the same bytes were there). Raises
    :class:`NotReplaced` when something else is there."""
    target = Path(path)
    folder = private_folder(target.parent)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".pdata-sync-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
        try:
            os.link(tmp, target, follow_symlinks=False)
        except FileExistsError:
            if _same_file(target, tmp):
                return UNCHANGED
            raise NotReplaced(f"{target.name} exists with other content: not replaced") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            try:
                _copy_exclusive(tmp, target)  # no hard links here
            except FileExistsError:
                if _same_file(target, tmp):
                    return UNCHANGED
                raise NotReplaced(
                    f"{target.name} exists with other content: not replaced"
                ) from None
        return WRITTEN
    finally:
        tmp.unlink(missing_ok=True)
