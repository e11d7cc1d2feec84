"""What arrives at the edges ends correct or loud (docs/product-rules.md): ``pdata-sync sync``
as a subprocess against SeaweedFS, the resolver and a Prefect server on 127.0.0.1, with the
clinic's database, share and bucket turned against it the way a broken night or another
tool would."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pydicom

from pdata_sync.identity.keys import parse_key
from pdata_sync.pipeline.plan import NOTE_MEDIA_ROW_VANISHED
from pdata_sync.source.probe import CARD, FOLDER, NEITHER
from tests.conftest import BUCKET, run_cli, stored_objects


def sidexis(clinic, *statements: tuple) -> None:
    """What happens to the clinic's Sidexis database (the test's, never one pdata-sync writes)."""
    with closing(sqlite3.connect(clinic.database_path)) as db:
        for statement in statements:
            db.execute(*statement)
        db.commit()


def test_a_database_answering_with_an_empty_media_table_uploads_nothing(site):
    """MediaBase empty for a night (a restore in progress): the run fails before any upload,
    in one line naming the table and the count; nothing is re-keyed to the fallback name,
    nothing retired. With the table back, the archive is what it was: no image twice. A
    single row that vanishes keeps its image under the name it was archived with."""
    clinic = site.clinic
    client = site.client
    tmp_path = site.tmp_path
    sync = site.sync
    assert sync()[0] == 0
    before = stored_objects(client)
    saved = tmp_path / "sidexis-backup.sqlite"
    shutil.copyfile(clinic.database_path, saved)
    archived = {parse_key(k)["image_id"] for k in before}
    with closing(sqlite3.connect(clinic.database_path)) as db:
        rows = {r[0] for r in db.execute("SELECT MediaBaseId FROM MediaBase")}
    named = len(archived & rows)
    assert 5 < named < len(before)  # images that never had a row are not counted
    sidexis(clinic, ("DELETE FROM MediaBase",))

    code, summary = sync()
    assert code == 1
    assert [f["path"] for f in summary["failed"]] == ["(database)"]
    reason = summary["failed"][0]["reason"]
    assert reason.startswith(
        f"database: {named} archived image(s) have no row in MediaBase and 0 archived "
        f"image(s) no patient row in Patient any more, more than the safety limit allows "
        f"({len(archived) // 2} of {len(archived)} archived images)"
    )
    assert "Nothing was uploaded" in reason
    assert summary["uploaded"] == 0 and summary["retired"] == [] and summary["notes"] == []
    assert stored_objects(client) == before

    shutil.copyfile(saved, clinic.database_path)  # the database is back
    code, summary = sync()
    assert code == 0, summary["failed"]
    assert summary["uploaded"] == 0 and summary["retired"] == [] and summary["to_retire"] == []
    assert stored_objects(client) == before

    # one media row vanishes (below the safety limit): its image keeps its key
    image_id = min(parse_key(k)["image_id"] for k in before if "_unnamed.dcm" not in k)
    sidexis(clinic, ("DELETE FROM MediaBase WHERE MediaBaseId = ?", (image_id,)))
    code, summary = sync("--full")
    assert code == 0, summary["failed"]
    vanished = [n for n in summary["notes"] if n["reason"] == NOTE_MEDIA_ROW_VANISHED]
    assert [n["path"].endswith(f"_{image_id}.dcm") for n in vanished] == [True]
    assert summary["uploaded"] == 0 and summary["retired"] == []
    assert stored_objects(client) == before
    assert not [k for k in before if f"_{image_id}_unnamed" in k]


def test_an_object_another_clinic_wrote_at_the_key_is_never_overwritten(site):
    """A bucket shared with another clinic (or tool) that wrote at this image's key: a new
    worker (no catalog) finds other bytes there whose metadata name another clinic's image.
    The image fails as a key conflict and the other object stays as it was."""
    client = site.client
    tmp_path = site.tmp_path
    sync = site.sync
    assert sync()[0] == 0
    before = stored_objects(client)
    key = sorted(before)[0]
    foreign = b"DICM of another clinic" * 50
    client.put_object(
        Bucket=BUCKET,
        Key=key,
        Body=foreign,
        Metadata={"clinic-id": "other-clinic", "image-id": "999"},
    )
    shutil.rmtree(tmp_path / "state")  # a new worker: nothing recorded
    code, summary = sync()
    assert code == 1
    assert [f["reason"] for f in summary["failed"]] == [
        "key conflict: S3 holds image 999 of clinic other-clinic at this key; not overwritten"
    ]
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == foreign
    assert summary["uploaded"] == 0 and summary["unchanged"] == len(before) - 1


def test_every_path_is_under_one_outcome_and_verify_counts_retired_rows(site):
    """An empty file without a media row is rejected, and only that: no note says it was
    uploaded under the fallback name. After an image is retired, verify counts the retired
    row and does not call it "not yet verified"."""
    clinic = site.clinic
    config = site.config
    env = site.env
    sync = site.sync
    folder = Path(clinic.pdata_root, clinic.expected[0]["path"]).parent  # a resolved patient
    empty = folder / "0000_987654.dcm"  # no media row has this id
    empty.write_bytes(b"")
    code, summary = sync()
    assert code == 0, summary["failed"]
    path = f"{folder.name}/{empty.name}"
    assert {"path": path, "reason": "empty file"} in summary["rejected"]
    assert path not in {n["path"] for n in summary["notes"]}
    paths = [p["path"] for label in ("failed", "rejected", "notes") for p in summary[label]]
    assert len(paths) == len(set(paths))

    retired_entry = next(e for e in clinic.expected if e["path"] not in clinic.no_media_row_paths)
    sidexis(clinic, ("UPDATE MediaBase SET IsDeleted = 1 WHERE MediaBaseId = ?",
                     (retired_entry["image_id"],)))  # fmt: skip
    code, summary = sync()
    assert code == 0 and {r["path"] for r in summary["retired"]} == {retired_entry["path"]}
    out = run_cli(["verify", "--config", str(config), "--json"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    drift = json.loads(out.stdout)
    assert drift["unverified"] == [] and drift["retired"] == len(summary["retired"])


def test_a_clock_that_ran_ahead_is_not_trusted(site):
    """The worker's clock ran a month ahead when the catalog was written (a restored VM):
    the last full run and every confirmation are dated in the future. Meanwhile an object
    was changed behind the product's back. The next run does not trust those dates: it is a
    full run, says why, lists S3, and puts the image back."""
    import sqlalchemy as sa

    from pdata_sync.catalog import Catalog, default_catalog_url
    from pdata_sync.source.changes import WHY_FUTURE

    client = site.client
    tmp_path = site.tmp_path
    sync = site.sync
    incremental = site.variant("clinic-incremental", incremental=True)
    assert sync(config=incremental)[0] == 0
    before = stored_objects(client)
    ahead = "2099-01-01 00:00:00"
    catalog = Catalog.open(default_catalog_url(tmp_path / "state"))
    with catalog.engine.begin() as conn:
        conn.execute(sa.text("UPDATE full_runs SET started_at = :t"), {"t": ahead})
        conn.execute(sa.text("UPDATE patient_marks SET recorded_at = :t"), {"t": ahead})
        conn.execute(sa.text("UPDATE images SET verified_at = :t, checked_at = :t"), {"t": ahead})
    catalog.close()
    key = sorted(before)[0]
    client.put_object(Bucket=BUCKET, Key=key, Body=b"not the X-ray")

    code, summary = sync(config=incremental)
    assert code == 0, summary["failed"]
    assert (summary["mode"], summary["full_reason"]) == ("full", WHY_FUTURE)
    assert summary["uploaded"] == 1 and summary["unchanged_by_catalog"] == 0
    assert stored_objects(client) == before


def test_an_empty_share_and_a_folder_turned_link_are_reported_never_taken_for_deletions(site):
    """The share is not mounted (its mount point is an empty folder): the run fails with
    "share empty: mounted?" instead of ending Completed with 0 folders. A patient folder
    replaced by a dangling link is failed by name, and its images stay archived."""
    clinic = site.clinic
    client = site.client
    tmp_path = site.tmp_path
    sync = site.sync
    assert sync()[0] == 0
    before = stored_objects(client)
    pdata = Path(clinic.pdata_root)
    away = tmp_path / "unmounted"
    pdata.rename(away)
    pdata.mkdir()  # the bare mount point
    code, summary = sync()
    assert code == 1
    assert [f["path"] for f in summary["failed"]] == ["(pdata)"]
    assert summary["failed"][0]["reason"].startswith(
        f"share empty: {pdata} has no patient folder, but the archive holds {len(before)} "
        "image(s) of this clinic: is the share mounted?"
    )
    assert summary["retired"] == [] and summary["to_retire"] == []
    assert stored_objects(client) == before

    pdata.rmdir()
    away.rename(pdata)  # mounted again
    folder = Path(clinic.expected[0]["path"]).parent.name
    (pdata / folder).rename(tmp_path / "moved-away")
    (pdata / folder).symlink_to(tmp_path / "nowhere")
    code, summary = sync()
    assert code == 1
    assert summary["failed"] == [
        {"path": folder, "reason": "not a patient folder: a dangling symbolic link"}
    ]
    assert summary["retired"] == [] and summary["to_retire"] == []
    assert stored_objects(client) == before


def test_a_catalog_cut_to_zero_or_damaged_stops_the_run_until_a_person_decides(site):
    """The catalog is the proof of what S3 holds. A file cut to zero bytes or damaged is
    refused in one line (exit 2), by sync and verify, instead of silently becoming a new,
    empty catalog. ``sync --new-catalog`` sets it aside, keeps it, and starts over."""
    client = site.client
    config = site.config
    tmp_path = site.tmp_path
    env = site.env
    sync = site.sync
    assert sync()[0] == 0
    before = stored_objects(client)
    catalog = tmp_path / "state" / "catalog.sqlite"
    original = catalog.read_bytes()
    # a run leaves its whole catalog in the file: a copy of it alone has every row
    alone = tmp_path / "copy" / "catalog.sqlite"
    alone.parent.mkdir()
    alone.write_bytes(original)
    with closing(sqlite3.connect(alone)) as db:
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] >= len(before)

    def refused(command: str) -> str:
        out = run_cli([command, "--config", str(config), "--json"], env)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [line for line in out.stderr.splitlines() if line.startswith("pdata-sync:")]
        assert len(lines) == 1, out.stderr[-2000:]
        return lines[0]

    catalog.write_bytes(b"")
    assert refused("sync") == (
        f"pdata-sync: catalog {catalog} is empty (0 bytes): restore it from a backup, or "
        "start over with a new catalog (sync --new-catalog, which keeps this file beside it)"
    )
    assert catalog.stat().st_size == 0  # nothing was created in its place

    damaged = bytearray(original)
    page = 4096
    for start in range(2 * page, len(damaged) - page, 3 * page):  # every third page
        damaged[start + 100 : start + 400] = bytes(range(256)) + bytes(44)
    catalog.write_bytes(bytes(damaged))
    for command in ("sync", "verify"):
        line = refused(command)
        assert line.startswith(f"pdata-sync: catalog {catalog} is damaged ("), line
    assert stored_objects(client) == before

    code, summary = sync("--new-catalog")
    assert code == 0, summary["failed"]
    assert summary["uploaded"] == 0 and summary["unchanged"] == len(before)
    kept = [
        p
        for p in catalog.parent.glob("catalog.sqlite.set-aside-*")
        if not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(kept) == 1 and kept[0].stat().st_size >= len(damaged)  # kept, for a person
    assert sync()[0] == 0  # the new catalog is a catalog


def _image(clinic, folder: str, image_id: int, header_patient_id: str) -> str:
    """Write a real DICOM file into ``folder`` whose own PatientID is ``header_patient_id``
    (what a copy from another patient's folder keeps), with a media row naming the folder's
    patient. Returns its PDATA-relative path."""
    import random

    from pdata_sync.demo.generate import write_dicom

    path = Path(clinic.pdata_root, folder, f"0000_{image_id}.dcm")
    write_dicom(path, rng=random.Random(image_id), clinic_id=clinic.clinic_id,
                patient_id=0, patient_name="Test^Edge", birth_date="19800101",
                image_id=image_id, modality="IO", rows=32, cols=32)  # fmt: skip
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PatientID = header_patient_id
    ds.save_as(path)
    folder_patient = int(folder.removeprefix("P_"))
    sidexis(clinic, ("INSERT INTO MediaBase VALUES (?,?,?,0)", (image_id, folder_patient, "Bite")))
    return f"{folder}/{path.name}"


def test_a_file_whose_header_names_another_patient_is_never_archived_under_this_one(site):
    """A file of patient A copied into patient B's folder, with a media row saying B: its
    header's PatientID names A. It fails as an identity conflict naming B's folder (and A,
    a Sidexis id with a folder), is never uploaded, and nothing names a CardId. An empty
    PatientID is accepted and counted. With the check off, the copy is archived."""
    clinic = site.clinic
    client = site.client
    sync = site.sync
    folders = sorted({e["path"].split("/")[0] for e in clinic.expected})
    b_folder, a_folder = folders[0], folders[1]
    a_id, b_id = int(a_folder.removeprefix("P_")), int(b_folder.removeprefix("P_"))
    copied = _image(clinic, b_folder, 990001, str(a_id))
    _image(clinic, b_folder, 990002, "")  # an empty PatientID
    code, summary = sync()
    assert code == 1
    assert summary["failed"] == [
        {
            "path": copied,
            "reason": f"identity conflict: the file's PatientID names neither patient {b_id} "
            "(its folder) nor one of its CardIds (database.header_patient_id: "
            f"folder_or_card); not uploaded; it names Sidexis patient {a_id}, who has a folder",
        }
    ]
    assert summary["header_patient_id_empty"] == 1
    keys = stored_objects(client)
    assert not [k for k in keys if "_990001_" in k]
    assert [k for k in keys if "_990002_" in k]  # the empty PatientID: archived

    off = site.variant("clinic-header-off", database={"header_patient_id": "off"})
    code, summary = sync(config=off)
    assert code == 0, summary["failed"]
    assert [k for k in stored_objects(client) if "_990001_" in k]


def test_probe_reports_how_headers_and_media_rows_relate_without_uploading(site):
    """``pdata-sync probe`` on the demo clinic (whose files carry the Sidexis id) with one
    file copied from another patient and one whose PatientID is that patient's CardId: the
    counts say so, the suggested rule is folder_or_card, the copy is listed by path, and no
    CardId or patient name appears anywhere. Nothing is uploaded; the share is unchanged."""
    from tests.conftest import tree_snapshot

    clinic = site.clinic
    client = site.client
    config = site.config
    env = site.env
    folders = sorted({e["path"].split("/")[0] for e in clinic.expected})
    b_folder, a_folder = folders[0], folders[1]
    copied = _image(clinic, b_folder, 990001, a_folder.removeprefix("P_"))
    with closing(sqlite3.connect(clinic.database_path)) as db:
        card = db.execute(
            "SELECT CardId FROM Patient WHERE PatientId = ? AND IsDeleted = 0",
            (int(b_folder.removeprefix("P_")),),
        ).fetchone()[0]
        cards = [r[0] for r in db.execute("SELECT CardId FROM Patient") if r[0] and r[0].strip()]
    by_card = _image(clinic, b_folder, 990002, card)
    before = tree_snapshot(Path(clinic.pdata_root))

    out = run_cli(["probe", "--config", str(config), "--sample", "1000", "--json"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    header = report["header_patient_id"]
    assert header["names"][NEITHER] == 1 and header["names"][CARD] == 1
    assert header["names_another_patients_folder"] == 1
    assert header["names"][FOLDER] == report["files_read"] - 2 > 10
    assert header["refused_by_rule"] == {
        "folder_or_card": 1,
        "folder": 2,
        "card": report["files_read"] - 1,
    }
    assert header["suggested_rule"] is None  # the copy must be looked at first
    assert report["examples"]["header_names_neither"] == [copied]
    assert report["media_rows"]["agrees_with_folder"] >= report["files_read"] - 5
    assert by_card not in json.dumps(report["examples"].get("header_names_neither", []))

    text = run_cli(["probe", "--config", str(config), "--sample", "1000"], env)
    assert text.returncode == 0 and copied in text.stdout
    everything = out.stdout + out.stderr + text.stdout + text.stderr
    assert not [c for c in cards if c in everything]  # no CardId
    assert "Test^Edge" not in everything and "19800101" not in everything
    assert stored_objects(client) == {}  # nothing uploaded
    assert tree_snapshot(Path(clinic.pdata_root)) == before


def _edit_in_place(path: Path) -> bytes:
    """Change a file's last bytes (pixel data), keep its size, put back its mtime: what an
    edit followed by ``os.utime`` leaves. Returns the new bytes."""
    import os

    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(255 - b for b in data[-16:])
    with open(path, "r+b") as fh:  # in place: the same inode
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return bytes(data)


def test_bytes_changed_in_place_with_the_mtime_put_back_are_found(site):
    """Files edited in place, size and mtime put back. A night that trusts size and mtime
    sees nothing; a full run finds one by its ctime; the rolling content check finds another
    on a normal night. Each is uploaded again with a note, and the version it replaces is
    kept under retired/ with the reason."""
    from pdata_sync.pipeline.uploader import KEPT_IN_PLACE

    clinic, client, sync = site.clinic, site.client, site.sync
    off = site.variant("clinic-rehash-0", transfer={"rehash_days": 0})
    every_night = site.variant("clinic-rehash-1", transfer={"rehash_days": 1})
    assert sync(config=off)[0] == 0
    before = stored_objects(client)
    single = [
        e for e in clinic.expected if sum(x["path"] == e["path"] for x in clinic.expected) == 1
    ]
    by_full, by_rolling = single[0], single[1]
    key_of = {
        e["path"]: next(k for k in before if f"_{e['image_id']}_" in k)
        for e in (by_full, by_rolling)
    }

    fulled = _edit_in_place(Path(clinic.pdata_root, by_full["path"]))
    code, summary = sync(config=off)  # a night that trusts size and mtime sees nothing
    assert code == 0 and summary["uploaded"] == 0
    code, summary = sync("--full", config=off)  # its ctime moved
    assert code == 0, summary["failed"]
    assert summary["uploaded"] == 1 and summary["content_check"]["files"] == 0
    assert stored_objects(client)[key_of[by_full["path"]]] == fulled

    rolled = _edit_in_place(Path(clinic.pdata_root, by_rolling["path"]))
    code, summary = sync(config=every_night)  # the rolling check reads every file once
    assert code == 0, summary["failed"]
    assert summary["content_check"]["changed"] == [by_rolling["path"]]
    assert summary["content_check"]["files"] == len({e["path"] for e in clinic.expected})
    assert summary["uploaded"] == 1
    notes = {n["path"]: n["reason"] for n in summary["notes"]}
    assert notes[by_rolling["path"]].startswith(f"{KEPT_IN_PLACE}; the old version is kept at ")
    assert stored_objects(client)[key_of[by_rolling["path"]]] == rolled

    kept = stored_objects(client, prefix=f"retired/{clinic.clinic_id}/")
    assert sorted(k.split("/", 3)[3] for k in kept) == sorted(key_of.values())
    for k, body in kept.items():
        assert body == before[k.split("/", 3)[3]]  # the old version, byte for byte
        meta = client.head_object(Bucket=BUCKET, Key=k)["Metadata"]
        assert meta["retired-reason"] == KEPT_IN_PLACE


def test_bytes_changed_behind_our_back_are_kept_under_their_own_reason(site):
    """An object overwritten in S3 behind the product's back, then its file changed: the
    upload keeps what S3 held under retired/, labelled as bytes that were not the verified
    content, not as the file's previous version."""
    from pdata_sync.pipeline.uploader import KEPT_DRIFT

    clinic, client = site.clinic, site.client
    assert site.sync()[0] == 0
    before = stored_objects(client)
    entry = next(
        e for e in clinic.expected if sum(x["path"] == e["path"] for x in clinic.expected) == 1
    )
    key = next(k for k in before if f"_{entry['image_id']}_" in k)
    tampered = b"DICM not what was archived"
    client.put_object(Bucket=BUCKET, Key=key, Body=tampered)
    path = Path(clinic.pdata_root, entry["path"])
    ds = pydicom.dcmread(path)
    ds.ImageComments = "revised"
    ds.save_as(path)

    code, summary = site.sync()
    assert code == 0 and summary["uploaded"] == 1, summary
    assert stored_objects(client)[key] == path.read_bytes()
    (kept,) = stored_objects(client, prefix=f"retired/{clinic.clinic_id}/").items()
    assert kept[1] == tampered
    meta = client.head_object(Bucket=BUCKET, Key=kept[0])["Metadata"]
    assert meta["retired-reason"] == KEPT_DRIFT
