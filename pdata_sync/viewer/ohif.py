"""The OHIF viewer's prebuilt files: pinned, checked, installed by the set-up, found at run
time (docs/viewer.md). Nothing is downloaded when the viewer runs.

The npm package ``@ohif/app`` ships the built viewer in ``dist/``. The set-up
(``python -m pdata_sync.viewer.ohif install``, run by ``.ci/bootstrap``) fetches exactly the
tarball pinned here from the npm registry, refuses it unless its SHA-512 is the one npm
publishes for that version, and unpacks ``dist/`` and the licence into
``{venv}/share/pdata-sync/ohif-{version}/``. ``PDATA_SYNC_OHIF_DIR`` points elsewhere (a
machine without registry access can be given the folder).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "3.13.2"
TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
# npm's "integrity" for that version: `npm view @ohif/app@3.13.2 dist.integrity`
INTEGRITY = (
    "sha512-"
    "WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
ENV = "PDATA_SYNC_OHIF_DIR"
MARKER = ".pdata-sync-ohif"  # written last: a folder without it is an interrupted install


class OhifMissing(Exception):
    """The viewer's files are not installed where they are looked for."""


def default_dir() -> Path:
    return Path(sys.prefix) / "share" / "pdata-sync" / f"ohif-{VERSION}"


def locate() -> Path:
    """The folder holding OHIF's ``index.html``; :class:`OhifMissing` names where it looked
    and how to install it."""
    folder = Path(os.environ.get(ENV) or default_dir())
    if not (folder / "index.html").is_file() or not (folder / MARKER).is_file():
        raise OhifMissing(
            f"the OHIF viewer {VERSION} is not installed in {folder}: run `make setup` "
            f"(or `python -m pdata_sync.viewer.ohif install`), or set {ENV} to a folder holding "
            "the dist/ files of @ohif/app"
        )
    return folder


def check_integrity(data: bytes, integrity: str = INTEGRITY) -> None:
    """Raise ValueError unless ``data`` has the pinned npm integrity (sha512)."""
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ValueError(
            f"{TARBALL}: {algorithm} is {digest}, expected {expected}; refusing to install it"
        )


def unpack(data: bytes, target: Path) -> None:
    """Unpack ``package/dist/*`` and ``package/LICENSE`` of the tarball into ``target``."""
    staging = target.with_name(target.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = []
        for member in tar.getmembers():
            if member.name.startswith("package/dist/") or member.name == "package/LICENSE":
                relative = member.name.removeprefix("package/dist/").removeprefix("package/")
                member.name = relative
                members.append(member)
        tar.extractall(staging, members=members, filter="data")
    (staging / MARKER).write_text(f"@ohif/app {VERSION}\n{INTEGRITY}\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def install(target: Path | None = None) -> Path:
    """Install the pinned viewer unless it is there already; return its folder."""
    target = target or default_dir()
    marker = target / MARKER
    if marker.is_file() and INTEGRITY in marker.read_text(encoding="utf-8"):
        return target
    with urllib.request.urlopen(TARBALL, timeout=300) as response:  # noqa: S310 - pinned https
        data = response.read()
    check_integrity(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    unpack(data, target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        print("usage: python -m pdata_sync.viewer.ohif install", file=sys.stderr)
        return 2
    folder = install()
    print(f"OHIF viewer {VERSION} in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
