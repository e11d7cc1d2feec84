"""Incremental runs end to end (docs/adr/0010): ``pdata-sync sync`` as a subprocess against
SeaweedFS, the resolver and a Prefect server on 127.0.0.1, with a clinic's Sidexis database
changed between runs the way Sidexis changes it.

After a first (full) run, a run reads only the folders of patients whose database rows or
patientGuids changed: a new image, a changed CardId (whose old objects are retired in that
same run, not a week later) and an image moved to another patient all land where they
belong, and the bucket holds exactly what a full run would have put there. A media row
written before its file keeps its patient to be read again until the file is there. A file
changed in place without a database change is what only the periodic full run sees."""

from __future__ import annotations

import random
import sqlite3
import uuid
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from pdata_sync.base.config import load_config
from pdata_sync.catalog import Catalog, destination_of, now
from pdata_sync.catalog.schema import full_runs
from pdata_sync.demo.generate import write_dicom
from pdata_sync.pipeline.retirement import FILE_GONE, PATIENT_CHANGED
from pdata_sync.source.changes import WHY_DUE, WHY_FIRST
from pdata_sync.source.pdata import parse_patient_folder
from tests.conftest import (
    BUCKET,
    assert_exactly_expected,
)


@pytest.fixture
def clinic_setup(make_site):
    # six simple patients; a small clinic: one patient is > 5 % of its objects
    site = make_site(settings={"incremental": True, "retire_max_fraction": 0.5}, patients=18)

    def sync(*extra: str) -> dict:
        code, summary = site.sync(*extra)
        assert code == 0, summary
        return summary

    def verify() -> dict:
        return site.verify()[1]

    return site.clinic, site.client, site.resolver, sync, verify, site.tmp_path


def rows_of(tmp_path: Path) -> list:
    """The clinic's catalog rows in the test bucket."""
    cfg = load_config(tmp_path / "clinic.yaml")
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}")
    try:
        return catalog.images(cfg.clinic_id, destination_of(cfg.s3.endpoint_url, BUCKET)).rows()
    finally:
        catalog.close()


def folder_of(clinic, patient_id: int) -> Path:
    return next(
        p for p in Path(clinic.pdata_root).iterdir() if parse_patient_folder(p.name) == patient_id
    )


def add_image(clinic, patient_id: int, image_id: int, *, seed: int = 1) -> str:
    """A new X-ray file in the patient's folder (what Sidexis writes); its PDATA path."""
    path = folder_of(clinic, patient_id) / f"0000_{image_id}.dcm"
    write_dicom(path, rng=random.Random(seed), clinic_id=clinic.clinic_id, patient_id=patient_id,
                patient_name="Test^Patient", birth_date="19800101", image_id=image_id,
                modality="IO", rows=20, cols=24)  # fmt: skip
    return f"{path.parent.name}/{path.name}"


def sidexis(clinic, sql: str, *params) -> None:
    """A change in the clinic's Sidexis database (the test's own; pdata-sync never writes)."""
    with closing(sqlite3.connect(clinic.database_path)) as db:
        db.execute(sql, params)
        db.commit()


def guid_of(clinic, folder: str) -> str:
    """The patientGuid the images of PDATA folder ``folder`` are expected under."""
    return next(x["patient_guid"] for x in clinic.expected if x["path"].startswith(f"{folder}/"))


def simple_patients(clinic, mapping: dict[str, str], troubled: set[str]) -> list[int]:
    """Patients with images, one CardId naming a patientGuid no other CardId names, and
    nothing rejected: the ones the scenario changes."""
    by_folder: dict[str, set[str]] = {}
    for entry in clinic.expected:
        by_folder.setdefault(entry["path"].split("/")[0], set()).add(entry["patient_guid"])
    values = list(mapping.values())
    query = "SELECT CardId FROM Patient WHERE PatientId = ? AND IsDeleted = 0"
    chosen = []
    with closing(sqlite3.connect(clinic.database_path)) as db:
        for folder, guids in sorted(by_folder.items()):
            pid = parse_patient_folder(folder)
            cards = [c for (c,) in db.execute(query, (pid,))]
            if (len(guids) == 1 and len(cards) == 1 and cards[0] in mapping
                    and values.count(mapping[cards[0]]) == 1
                    and folder not in troubled):  # fmt: skip
                chosen.append(pid)
    return chosen


def test_incremental_runs_read_only_what_changed_and_keep_the_archive_exact(clinic_setup):
    clinic, client, resolver, sync, verify, tmp_path = clinic_setup
    mapping = resolver.state.mapping[clinic.clinic_id]

    first = sync()
    assert first["mode"] == "full" and first["full_reason"] == WHY_FIRST
    assert_exactly_expected(client, clinic)
    # patients with a rejected file are read again every run (they may yet be fixed)
    troubled = {p["path"].split("/")[0] for p in first["rejected"]}
    assert troubled and first["patients_to_read_again"] == len(troubled)

    a, b, c, d, e, f = simple_patients(clinic, mapping, troubled)[:6]
    # a: a new image
    new_path = add_image(clinic, a, 90001)
    sidexis(clinic, "INSERT INTO MediaBase VALUES (?,?,?,0)", 90001, a, "OPG")
    guid_a = next(
        x["patient_guid"] for x in clinic.expected if x["path"].startswith(new_path[:-15])
    )
    clinic.expected.append({"patient_guid": guid_a, "image_id": 90001, "path": new_path})
    # b: the clinic corrected the patient's CardId; the platform knows the new one
    new_card, new_guid = f"K-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    mapping[new_card] = new_guid
    sidexis(clinic, "UPDATE Patient SET CardId = ? WHERE PatientId = ?", new_card, b)
    folder_b = folder_of(clinic, b).name
    old_guid_b = next(
        x["patient_guid"] for x in clinic.expected if x["path"].startswith(f"{folder_b}/")
    )
    for entry in clinic.expected:
        if entry["path"].startswith(f"{folder_b}/"):
            entry["patient_guid"] = new_guid
    # c -> d: an image filed under the wrong patient, moved in Sidexis (row and file)
    folder_c, folder_d = folder_of(clinic, c), folder_of(clinic, d)
    moved = next(x for x in clinic.expected if x["path"].startswith(f"{folder_c.name}/"))
    old_moved_path = moved["path"]
    (folder_c / old_moved_path.split("/")[1]).rename(folder_d / old_moved_path.split("/")[1])
    # a reassignment that corrects the file's own PatientID too: a header still naming c
    # would be an identity conflict (product-rules §10), tested in test_edges.py
    moved_file = folder_d / old_moved_path.split("/")[1]
    ds = pydicom.dcmread(moved_file)
    ds.PatientID = str(d)
    ds.save_as(moved_file)
    sidexis(
        clinic, "UPDATE MediaBase SET PatientId = ? WHERE MediaBaseId = ?", d, moved["image_id"]
    )
    moved["path"] = f"{folder_d.name}/{old_moved_path.split('/')[1]}"
    moved["patient_guid"] = next(
        x["patient_guid"]
        for x in clinic.expected
        if x["path"].startswith(f"{folder_d.name}/") and x is not moved
    )

    changed = sync()
    assert changed["mode"] == "incremental"
    assert changed["folders"] == len(troubled) + 4  # a, b, c, d; nobody unchanged
    assert changed["failed"] == []
    reasons = {r["path"]: r["reason"] for r in changed["retired"]}
    assert reasons.pop(old_moved_path) == FILE_GONE
    assert set(reasons.values()) == {PATIENT_CHANGED}
    assert {r["key"].split("/")[1] for r in changed["retired"]} == {
        old_guid_b,
        moved_from := next(
            r["key"].split("/")[1] for r in changed["retired"] if r["path"] == old_moved_path
        ),
    }
    assert moved_from != moved["patient_guid"]
    assert_exactly_expected(client, clinic)  # exactly what a full run would hold

    # f: an object removed from S3 behind our back; verify finds it, and the next run,
    # incremental as it is, reads f's folder again and puts the object back
    lost = next(
        r.key for r in rows_of(tmp_path) if r.rel_path.startswith(folder_of(clinic, f).name)
    )
    client.delete_object(Bucket=BUCKET, Key=lost)
    assert verify()["missing"] == [lost]
    # e: a media row written before its file; the file comes after the run
    sidexis(clinic, "INSERT INTO MediaBase VALUES (?,?,?,0)", 90002, e, "Bitewing")
    early = sync()
    assert early["mode"] == "incremental" and early["uploaded"] == 1  # f's lost object
    assert early["folders"] == len(troubled) + 2  # e and f
    assert early["patients_to_read_again"] == len(troubled) + 1  # e, until its file is there
    assert_exactly_expected(client, clinic)
    late_path = add_image(clinic, e, 90002, seed=2)
    guid_e = next(
        x["patient_guid"]
        for x in clinic.expected
        if x["path"].startswith(late_path.split("/")[0] + "/")
    )
    clinic.expected.append({"patient_guid": guid_e, "image_id": 90002, "path": late_path})
    # meanwhile a file of a is changed in place, with no database change
    in_place = Path(clinic.pdata_root, new_path)
    write_dicom(in_place, rng=random.Random(99), clinic_id=clinic.clinic_id, patient_id=a,
                patient_name="Test^Patient", birth_date="19800101", image_id=90001,
                modality="IO", rows=20, cols=24)  # fmt: skip
    late = sync()
    assert late["mode"] == "incremental" and late["uploaded"] == 1  # the late file, not a's
    assert late["patients_to_read_again"] == len(troubled)

    # a week later the full reconcile is due: it reads every folder and sees the change
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}")
    try:
        with catalog.begin() as conn:
            conn.execute(sa.update(full_runs).values(started_at=now() - timedelta(days=7)))
    finally:
        catalog.close()
    weekly = sync()
    assert weekly["mode"] == "full" and weekly["full_reason"] == WHY_DUE
    assert weekly["folders"] == first["folders"] and weekly["uploaded"] == 1
    assert_exactly_expected(client, clinic)
    assert sync()["mode"] == "incremental"
