"""Generate a demo (or test) clinic: a PDATA tree of real DICOM files, a SQLite database
with the Sidexis tables, and the resolver's CardId -> patientGuid mapping.

Deterministic for a given seed. Besides the files it writes a manifest of the ground truth
(which file should end up under which patientGuid, and why others should not) computed
from the generation choices, so tests can check the product against it.
"""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

GUID_NAMESPACE = uuid.UUID("6c1f4f3e-7d0a-4c59-9d0e-6a1f2b3c4d5e")

SOP_CLASS = {
    "IO": "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral X-Ray Image Storage
    "PX": "1.2.840.10008.5.1.4.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage (CBCT)
}
IMAGE_NAMES = [
    "Bissflügel links",
    "Bitewing right",
    "OPG",
    "Panoramaaufnahme",
    "Zahnfilm 11/21",
    "Einzelbild Oberkiefer Ä",
    "Fernröntgen (Ceph)",
    "DVT Unterkiefer",
    "Kontrolle nach Wurzelbehandlung 36",
    "x" * 300,
    "..",
    "",
]
FIRST = ["Anna", "Jörg", "Özlem", "Ben", "Marie", "Łukasz", "Sofia", "Lars"]
LAST = ["Müller", "Schmidt", "Şahin", "Nowak", "Øster", "Fischer", "Weber", "Becker"]


def guid_for(clinic_id: str, card_id: str) -> str:
    """The demo resolver's patientGuid for a CardId (deterministic)."""
    return str(uuid.uuid5(GUID_NAMESPACE, f"{clinic_id}:{card_id}"))


@dataclass
class Manifest:
    """Ground truth of a generated clinic."""

    clinic_id: str
    pdata_root: str
    database_path: str
    mapping_path: str
    # every object that must exist after a sync: patient_guid, image_id, rel_path
    expected: list[dict] = field(default_factory=list)
    rejected_paths: list[str] = field(default_factory=list)
    no_media_row_paths: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    # for PHI checks: values that must never appear in output
    phi: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def xray_pixels(rows: int, cols: int, frames: int, noise: bytes, image_id: int) -> bytes:
    """12-bit pixels that look like an intra-oral X-ray: a row of bright teeth with roots
    and darker pulp on a dark, slightly graded background, plus ``noise`` (random bytes,
    one 16-bit value per pixel) as sensor noise. Deterministic for the same arguments."""
    shape = (frames, rows, cols)
    rng = np.random.default_rng(image_id)
    # Drawn at a quarter of the size, then enlarged smoothly: generating a demo stays quick.
    small_rows, small_cols = max(2, -(-rows // 4)), max(2, -(-cols // 4))
    y = np.linspace(0.0, 1.0, small_rows)[:, None]
    x = np.linspace(0.0, 1.0, small_cols)[None, :]
    image = 500.0 + 400.0 * y + 0.0 * x  # soft tissue gets denser towards the jaw
    teeth = int(rng.integers(3, 6))
    for i in range(teeth):
        cx = (i + 0.5) / teeth + rng.uniform(-0.03, 0.03)
        half = 0.36 / teeth
        # a crown that narrows into a root, the pulp canal inside, enamel brighter on top
        width = np.where(
            y < 0.4,
            half * np.sqrt(np.clip(1 - ((y - 0.3) / 0.2) ** 2, 0, 1)),
            half * 0.85 * np.clip((0.92 - y) / 0.52, 0, 1) ** 0.8,
        )
        tooth = (np.abs(x - cx) <= width) & (y > 0.1) & (y < 0.92)
        pulp = (np.abs(x - cx) <= width * 0.22) & (y > 0.3) & (y < 0.86)
        image = np.where(tooth, 2600.0 + 900.0 * np.clip(0.45 - y, 0, 1), image)
        image = np.where(pulp, 1400.0, image)
        if rng.random() < 0.4:  # a filling
            filling = ((x - cx) / (half * 0.5)) ** 2 + ((y - 0.2) / 0.07) ** 2 <= 1.0
            image = np.where(filling, 4000.0, image)
    image = np.asarray(
        Image.fromarray(image.astype(np.float32), mode="F").resize(
            (cols, rows), Image.Resampling.BILINEAR
        ),
        dtype=np.float64,
    )
    sensor = np.frombuffer(noise, dtype="<u2", count=rows * cols * frames).reshape(shape)
    pixels = image[None, :, :] + (sensor.astype(np.float64) % 256.0) - 128.0
    return np.clip(pixels, 0, 4095).astype("<u2").tobytes()


def write_dicom(
    path: Path,
    *,
    rng: random.Random,
    clinic_id: str,
    patient_id: int,
    patient_name: str,
    birth_date: str,
    image_id: int,
    modality: str,
    rows: int,
    cols: int,
    frames: int = 1,
) -> None:
    """Write a real DICOM Part 10 file: 12 bits stored in 16, an X-ray-like picture."""
    sop_uid = generate_uid(entropy_srcs=[clinic_id, str(image_id), "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: patient names like Łukasz Şahin
    ds.SOPClassUID = SOP_CLASS[modality]
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[clinic_id, str(patient_id), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[clinic_id, str(image_id), "series"])
    ds.PatientName = patient_name
    ds.PatientID = str(patient_id)
    ds.PatientBirthDate = birth_date
    ds.Modality = modality
    date = f"20{rng.randint(15, 25):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    ds.StudyDate = date
    ds.AcquisitionDate = date
    ds.Manufacturer = "Dentsply Sirona"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    noise = rng.randbytes(rows * cols * 2 * frames)
    ds.PixelData = xray_pixels(rows, cols, frames, noise, image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def generate_clinic(
    root: Path,
    *,
    clinic_id: str = "demo-clinic",
    patients: int = 40,
    images_per_patient: tuple[int, int] = (7, 12),
    seed: int = 7,
    large_files: int = 1,
    large_mb: int = 20,
    scale: float = 1.0,
) -> Manifest:
    """Write PDATA, a Sidexis SQLite database and the resolver mapping under ``root``.

    ``scale`` shrinks image dimensions (tests use small images). The first patients are
    the special cases every sync must handle (docs/product-rules.md §2).
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    pdata = root / "PDATA"
    pdata.mkdir(exist_ok=True)
    db_path = root / "sidexis.db"
    if db_path.exists():
        db_path.unlink()
    db = sqlite3.connect(db_path)
    db.executescript(
        """
        CREATE TABLE Patient (PatientId INTEGER NOT NULL, CardId NVARCHAR(50) NULL,
            IsDeleted BIT NOT NULL DEFAULT 0, LastName NVARCHAR(100), FirstName NVARCHAR(100),
            BirthDate DATE);
        CREATE TABLE MediaBase (MediaBaseId INTEGER PRIMARY KEY, PatientId INTEGER NOT NULL,
            Name NVARCHAR(300), IsDeleted BIT NOT NULL DEFAULT 0);
        """
    )
    manifest = Manifest(clinic_id, str(pdata), str(db_path), str(root / "resolver-mapping.json"))
    skipped: dict[str, int] = {}
    mapping: dict[str, str] = {}
    next_image = 1000

    def skip(reason: str, n: int = 1) -> None:
        skipped[reason] = skipped.get(reason, 0) + n

    # Special patients by index: what their rows look like and what must happen.
    for index in range(patients):
        pid = 100 + index * 7
        width = [8, 8, 4, 10, 1][index % 5] if index else 12  # ids of any width
        folder = pdata / f"P_{pid:0{width}d}"
        first, last = rng.choice(FIRST), rng.choice(LAST)
        birth = f"19{rng.randint(40, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        manifest.phi += [first, last, f"{last}^{first}", birth]
        card_rows: list[tuple[str | None, int]]
        kind = {
            0: "null",
            1: "empty",
            2: "blank",
            3: "deleted",
            4: "unknown",
            5: "absent",
            6: "two_cards",
            7: "leading_zero",
        }.get(index, "normal")
        card = f"A-{1000 + index}"
        if kind == "null":
            card_rows = [(None, 0)]
        elif kind == "empty":
            card_rows = [("", 0)]
        elif kind == "blank":
            card_rows = [("   ", 0)]
        elif kind == "deleted":
            card_rows = [(card, 1)]
        elif kind == "absent":
            card_rows = []
        elif kind == "two_cards":
            card_rows = [(card, 0), (f"B-{2000 + index}", 0), (None, 0)]
        elif kind == "leading_zero":
            card_rows = [(f"  000{457 + index}  ", 0)]
        else:
            card_rows = [(card, 0)]
        for value, deleted in card_rows:
            db.execute(
                "INSERT INTO Patient VALUES (?,?,?,?,?,?)",
                (pid, value, deleted, last, first, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"),
            )
            if value and value.strip():
                manifest.phi.append(value.strip())
        cards = [v.strip() for v, d in card_rows if v and v.strip() and not d]
        guids = []
        for c in cards:
            if kind != "unknown":
                mapping[c] = guid_for(clinic_id, c)
                guids.append(mapping[c])
        reason = {
            "null": "patients_without_card_id",
            "empty": "patients_without_card_id",
            "blank": "patients_without_card_id",
            "deleted": "patients_deleted",
            "unknown": "patients_card_id_unknown",
            "absent": "patients_not_in_database",
        }.get(kind)
        if reason:
            skip(reason)

        count = rng.randint(*images_per_patient)
        for n in range(count):
            image_id = next_image
            next_image += rng.randint(1, 3)
            roll = rng.random()
            if large_files and index == 8 and n == 0:
                modality, rows, cols, frames = "CT", 512, 512, max(1, large_mb * 2)
            elif roll < 0.12:
                modality, rows, cols, frames = "PX", int(1100 * scale), int(1400 * scale), 1
            else:
                modality, rows, cols, frames = (
                    "IO",
                    int(rng.randint(380, 560) * scale),
                    int(rng.randint(480, 700) * scale),
                    1,
                )
            rel_name = f"0000_{image_id:0{rng.choice([4, 6, 8])}d}.dcm"
            write_dicom(
                folder / rel_name,
                rng=rng,
                clinic_id=clinic_id,
                patient_id=pid,
                patient_name=f"{last}^{first}",
                birth_date=birth,
                image_id=image_id,
                modality=modality,
                rows=max(rows, 8),
                cols=max(cols, 8),
                frames=frames,
            )
            rel = f"{folder.name}/{rel_name}"
            media = rng.random()
            name = rng.choice(IMAGE_NAMES)
            if index == 9 and n == 0:
                media = -1.0  # deleted media row
            if index == 9 and n == 1:
                media = -2.0  # missing media row
            if media == -2.0:
                if guids:
                    manifest.no_media_row_paths.append(rel)
            else:
                db.execute(
                    "INSERT INTO MediaBase VALUES (?,?,?,?)",
                    (image_id, pid, name, 1 if media == -1.0 else 0),
                )
            if media == -1.0:
                if guids:
                    skip("images_media_deleted")
                continue
            for g in guids:
                manifest.expected.append({"patient_guid": g, "image_id": image_id, "path": rel})
        # junk inside patient folders, and bad files of resolvable patients
        if index == 10:
            (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
            (folder / "0000_77.jpg").write_bytes(b"\xff\xd8\xff")
            skip("files_not_images", 2)
            empty = folder / f"0000_{next_image}.dcm"
            empty.write_bytes(b"")
            db.execute("INSERT INTO MediaBase VALUES (?,?,?,0)", (next_image, pid, "empty"))
            next_image += 1
            text = folder / f"0000_{next_image}.dcm"
            text.write_text("this is not a DICOM file\n" * 20)
            db.execute("INSERT INTO MediaBase VALUES (?,?,?,0)", (next_image, pid, "text"))
            next_image += 1
            manifest.rejected_paths += [f"{folder.name}/{empty.name}", f"{folder.name}/{text.name}"]
    # junk at the top level
    (pdata / "Thumbs.db").write_bytes(b"\x00" * 16)
    (pdata / "TEMP").mkdir(exist_ok=True)
    (pdata / "P_abc").mkdir(exist_ok=True)
    skip("entries_not_patient_folders", 3)

    db.commit()
    db.close()
    Path(manifest.mapping_path).write_text(
        json.dumps({clinic_id: mapping}, indent=1), encoding="utf-8"
    )
    manifest.skipped = skipped
    manifest.phi = sorted(set(manifest.phi))
    manifest.save(root / "manifest.json")
    return manifest
