"""Shared helpers of the benchmark scripts: real servers on 127.0.0.1, the CLI run as a
child process with its wall time and peak RSS, and big DICOM files written by streaming."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLI = str(Path(sys.executable).parent / "pdata-sync")
MB = 1024 * 1024
TIME = shutil.which("time", path="/usr/bin:/bin")  # GNU time, for peak RSS


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    returncode: int
    cpu_seconds: float
    stdout: str
    stderr: str


def run_measured(cmd: list[str], env: dict[str, str], cwd: str | None = None) -> Measured:
    """Run ``cmd`` to completion: wall time, CPU time and peak RSS of the command itself.

    The peak RSS comes from GNU time (``/usr/bin/time``): a child forked straight from this
    (large) Python process would count this process's pages as its own peak until it execs.
    """
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        wrapped = [TIME, "-f", "%M %U %S", "-o", rss.name, *cmd] if TIME else cmd
        t0 = time.perf_counter()
        proc = subprocess.run(wrapped, env=env, cwd=cwd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        figures = rss.read().split() if TIME else []
    if len(figures) >= 3:
        peak_mb = int(figures[-3]) / 1024
        cpu = float(figures[-2]) + float(figures[-1])
    else:  # no GNU time: an upper bound (includes this process's pages before exec)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    return Measured(seconds, peak_mb, proc.returncode, cpu, proc.stdout, proc.stderr)


def fresh_bucket(client: object, bucket: str) -> None:
    """Drop ``bucket`` with everything in it and create it again, empty.

    Not ``empty_bucket``: SeaweedFS keeps the folders of deleted objects for a while, and a
    listing walks every one of them. After deleting the 100,000 objects of the last run, one
    ``list_objects_v2`` under ``images/`` took 8.5 s instead of 0.01 s, a cost that fell on
    pdata-sync alone (it lists each batch's patients; s5cmd lists its prefix once). A clinic's
    first sync starts from a bucket with nothing in it, and so does every tool here.
    """
    from tests.kit.s3 import empty_bucket

    try:
        client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]  # SeaweedFS: any
    except Exception:  # noqa: BLE001 - a server that wants it empty first
        empty_bucket(client, bucket)
        client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]


def _tree_cpu_seconds(roots: set[int]) -> float:
    """CPU seconds used so far by the processes ``roots`` and all their descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, grew = set(roots), True
    while grew:
        children = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(stats[pid][1] for pid in tree if pid in stats)


def wait_until_idle(
    *servers: object, below: float = 0.05, window: float = 2.0, timeout: float = 300.0
) -> float:
    """Wait until the servers (objects with a ``proc``) use less than ``below`` of a core over
    ``window`` seconds; return the seconds waited (said on stderr when it is more than 5).

    A command must not pay for the servers' work on the one before it (SeaweedFS settling
    the writes or deletes of the last run, the Prefect server its services' loops): every
    measured command starts against idle servers. After a 100,000-file run this usually
    takes one window.
    """
    pids = {s.proc.pid for s in servers if getattr(s, "proc", None)}  # type: ignore[attr-defined]
    if not pids or not Path("/proc/self/stat").exists():
        return 0.0
    t0 = time.perf_counter()
    used = _tree_cpu_seconds(pids)
    while time.perf_counter() - t0 < timeout:
        time.sleep(window)
        now = _tree_cpu_seconds(pids)
        if now - used < below * window:
            break
        used = now
    waited = time.perf_counter() - t0
    if waited > 5:
        print(f"  (waited {waited:.0f} s for the servers to go idle)", file=sys.stderr)
    return waited


@contextlib.contextmanager
def servers(workdir: Path) -> Iterator[tuple[object, object]]:
    """SeaweedFS (bucket dental-images) and a Prefect server, both on 127.0.0.1."""
    from pdata_sync.demo.prefect_server import PrefectServer
    from pdata_sync.demo.seaweed import SeaweedS3

    with (
        SeaweedS3(workdir / "seaweed", buckets=("dental-images",)) as s3,
        PrefectServer(workdir / "prefect-home") as prefect,
    ):
        yield s3, prefect


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.system()} {platform.machine()}"


def write_big_dicom(template: Path, target: Path, size: int, chunk: int = 8 * MB) -> None:
    """Rewrite ``target`` as a real DICOM file of about ``size`` bytes: the header of
    ``template`` and a PixelData element of noise, written in chunks (never all in memory)."""
    ds = pydicom.dcmread(template, stop_before_pixels=True)
    head = io.BytesIO()
    ds.save_as(head, enforce_file_format=True)
    header = head.getvalue()
    pixels = max(2, (size - len(header) - 12) // 2 * 2)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header)
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels))
        block = os.urandom(chunk)
        left = pixels
        while left:
            n = min(left, chunk)
            fh.write(block[:n])
            left -= n
    os.replace(tmp, target)


@dataclass
class Tree:
    """A generated clinic for benchmarks: every file valid, every patient resolvable."""

    clinic_id: str
    pdata_root: str
    database_path: str
    mapping_path: str
    files: int
    bytes: int


def _shape(nbytes: int, single: bool) -> tuple[int, int, int]:
    """Rows, columns and frames of a 16-bit image of about ``nbytes``."""
    pixels = max(64, nbytes // 2)
    if single:  # make_tree's historical shapes: 256 rows, or frames of 512 x 512
        frames = max(1, pixels // (512 * 512))
        rows = 512 if frames > 1 else 256
        return rows, pixels // (rows * frames), frames
    if nbytes > 16 * MB:
        frames = max(1, pixels // (512 * 512))
        return 512, 512, frames
    rows = max(8, int((pixels * 0.75) ** 0.5))
    return rows, max(8, pixels // rows), 1


def make_tree(
    root: Path,
    *,
    patients: int,
    files_per_patient: int,
    file_bytes: int,
    clinic_id: str = "bench-clinic",
    seed: int = 1,
    mix: tuple[tuple[int, int], ...] = (),
) -> Tree:
    """Deterministic PDATA tree of real DICOM files (16-bit noise), a Sidexis SQLite database
    and the resolver mapping. Reused when ``root`` already holds the same tree.

    ``mix``: (count, bytes) pairs instead of ``patients`` x ``file_bytes``: the files, in a
    fixed shuffled order, ``files_per_patient`` to a patient; up to 16 MB a single frame (an
    intraoral, a panoramic), larger ones frames of 512 x 512 (a CBCT export)."""
    import json as _json
    import random
    import sqlite3

    from pdata_sync.demo.generate import guid_for, write_dicom

    stamp = root / "tree.json"
    spec = {
        "patients": patients,
        "files_per_patient": files_per_patient,
        "file_bytes": file_bytes,
        "clinic_id": clinic_id,
        "seed": seed,
        **({"mix": [list(m) for m in mix]} if mix else {}),
    }
    if stamp.exists():
        saved = _json.loads(stamp.read_text())
        if saved["spec"] == spec:
            return Tree(**saved["tree"])
    pdata = root / "PDATA"
    if root.exists():
        import shutil

        shutil.rmtree(root)
    pdata.mkdir(parents=True)
    db_path = root / "sidexis.db"
    db = sqlite3.connect(db_path)
    db.executescript(
        "CREATE TABLE Patient (PatientId INTEGER NOT NULL, CardId NVARCHAR(50) NULL,"
        " IsDeleted BIT NOT NULL DEFAULT 0);"
        "CREATE TABLE MediaBase (MediaBaseId INTEGER PRIMARY KEY, PatientId INTEGER NOT NULL,"
        " Name NVARCHAR(300), IsDeleted BIT NOT NULL DEFAULT 0);"
    )
    rng = random.Random(seed)
    sizes = [n for count, n in mix for _ in range(count)] or [file_bytes] * (
        patients * files_per_patient
    )
    random.Random(seed).shuffle(sizes)
    patients = -(-len(sizes) // files_per_patient)
    mapping: dict[str, str] = {}
    image_id = 1
    total = 0
    for p in range(patients):
        pid = 1000 + p
        card = f"C{pid:07d}"
        mapping[card] = guid_for(clinic_id, card)
        db.execute("INSERT INTO Patient (PatientId, CardId) VALUES (?, ?)", (pid, card))
        for _ in range(files_per_patient):
            if image_id > len(sizes):
                break
            rows, cols, frames = _shape(sizes[image_id - 1], single=not mix)
            path = pdata / f"P_{pid}" / f"0000_{image_id}.dcm"
            write_dicom(
                path,
                rng=rng,
                clinic_id=clinic_id,
                patient_id=pid,
                patient_name="Bench^Patient",
                birth_date="19700101",
                image_id=image_id,
                modality="CT" if frames > 1 else "IO",
                rows=rows,
                cols=cols,
                frames=frames,
            )
            db.execute(
                "INSERT INTO MediaBase (MediaBaseId, PatientId, Name) VALUES (?, ?, ?)",
                (image_id, pid, "Bitewing"),
            )
            total += path.stat().st_size
            image_id += 1
    db.commit()
    db.close()
    mapping_path = root / "resolver-mapping.json"
    mapping_path.write_text(_json.dumps({clinic_id: mapping}))
    tree = Tree(clinic_id, str(pdata), str(db_path), str(mapping_path), image_id - 1, total)
    stamp.write_text(_json.dumps({"spec": spec, "tree": tree.__dict__}))
    return tree


def draw_chart(
    rows: list[tuple[str, float, float]],
    path: Path,
    title: str,
    panels: tuple[tuple[str, str], tuple[str, str]] = (
        ("wall time (s, lower is better)", "s"),
        ("files per second (higher is better)", "/s"),
    ),
) -> None:
    """Bars of two figures per tool, by default wall time and files/s (Pillow; no plotting
    library needed)."""
    from PIL import Image, ImageDraw

    width, bar_h, gap, left = 900, 26, 10, 240
    height = 70 + 2 * (len(rows) * (bar_h + gap)) + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), title, fill="black")
    y = 40
    for (label, unit), values in zip(
        panels, ([r[1] for r in rows], [r[2] for r in rows]), strict=True
    ):
        draw.text((10, y), label, fill="black")
        y += 20
        top = max(values) or 1
        for (tool, _, _), value in zip(rows, values, strict=True):
            length = int((width - left - 120) * value / top)
            colour = (90, 90, 90) if tool.startswith("s5cmd") else (40, 110, 180)
            draw.text((10, y + 7), tool, fill="black")
            draw.rectangle([left, y, left + length, y + bar_h], fill=colour)
            draw.text((left + length + 8, y + 7), f"{value:.1f}{unit}", fill="black")
            y += bar_h + gap
        y += 15
    img.save(path)
