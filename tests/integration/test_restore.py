"""``pdata-sync restore`` through the CLI on SeaweedFS: a clinic synced, then restored from S3
alone, on a worker whose catalog is empty, into a new folder: every archived file comes back
at its own path with its own bytes. Run again, it skips what is there, writes what is
missing and never replaces a file with other bytes. An object archived before objects
carried their source path is placed through the clinic's database and resolver. A folder
inside PDATA is refused."""

from __future__ import annotations

import csv
import hashlib
import stat
from pathlib import Path

from tests.conftest import run_cli


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("restored-")
    }


def archived_events(site, flow_run_id: str, uploaded: int) -> list[dict]:
    """The ``pdata-sync.images.archived`` events of one flow run, read from the Prefect
    server's events API (its persister writes them a moment after they are emitted)."""
    import time

    import httpx

    api = site.request.getfixturevalue("prefect_server").api_url
    query = {
        "filter": {
            "event": {"name": ["pdata-sync.images.archived"]},
            "related": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            "occurred": {"since": "2000-01-01T00:00:00Z"},
        },
        "limit": 50,  # the API's largest page; a test clinic's batches are fewer
    }
    events: list[dict] = []
    for _ in range(50):  # until every batch's event is in, or 10 s
        found = httpx.post(f"{api}/events/filter", json=query, timeout=10).raise_for_status()
        events = found.json()["events"]
        if sum(e["payload"]["uploaded"] for e in events) >= uploaded:
            break
        time.sleep(0.2)
    return events


def test_a_clinic_is_restored_byte_identical_from_s3_alone_and_resumes(make_site, tmp_path):
    site = make_site()
    clinic, client = site.clinic, site.client
    code, summary = site.sync()
    assert code == 0, summary["failed"]
    archived = sorted({e["path"] for e in clinic.expected})
    # each batch that archived images told the platform so, with the patients it names
    events = archived_events(site, summary["flow_run_id"], summary["uploaded"])
    assert sum(e["payload"]["uploaded"] for e in events) == summary["uploaded"] > 0
    named = {r["prefect.resource.id"].removeprefix("pdata-sync.patient.")
             for e in events for r in e["related"]
             if r.get("prefect.resource.role") == "patient"}  # fmt: skip
    assert named == {e["patient_guid"] for e in clinic.expected}
    assert {e["resource"]["prefect.resource.id"] for e in events} == {
        f"pdata-sync.clinic.{clinic.clinic_id}"
    }

    # one object as archived before objects carried their source path
    old = next(
        e for e in clinic.expected if [x["path"] for x in clinic.expected].count(e["path"]) == 1
    )
    old_key = next(
        k["Key"]
        for k in client.list_objects_v2(Bucket="dental-images", Prefix="images/")["Contents"]
        if k["Key"].startswith(
            f"images/{old['patient_guid']}/{clinic.clinic_id}_{old['image_id']}_"
        )
    )
    head = client.head_object(Bucket="dental-images", Key=old_key)
    meta = {k: v for k, v in head["Metadata"].items() if k != "source-path"}
    client.copy_object(
        Bucket="dental-images",
        Key=old_key,
        CopySource={"Bucket": "dental-images", "Key": old_key},
        Metadata=meta,
        MetadataDirective="REPLACE",
        ContentType=head["ContentType"],
    )

    # a new machine: the catalog is lost too
    fresh = site.variant("new-machine", transfer={"state_dir": str(tmp_path / "empty-state")})
    target = tmp_path / "restored"
    code, report = site.cli("restore", "--to", str(target), config=fresh)
    assert code == 0 and report["failed"] == [], report
    folder, _, name = old["path"].partition("/")
    by_database = f"P_{int(folder[2:])}/0000_{old['image_id']}.dcm"
    # a file archived under two patientGuids (a special case of the clinic) comes back once
    assert (report["objects"], report["written"], report["present"]) == (
        len(clinic.expected), len(archived), len(clinic.expected) - len(archived),
    )  # fmt: skip
    assert (report["from_database"], report["unmapped"]) == (1, 0)
    restored = files_under(target)
    source = {p: Path(clinic.pdata_root, p).read_bytes() for p in archived}
    expected = {by_database if p == old["path"] else p: b for p, b in source.items()}
    assert restored == expected
    modes = {stat.S_IMODE(p.stat().st_mode) for p in target.rglob("*") if p.is_file()}
    assert modes == {0o600}
    with open(report["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({r["path"] for r in rows}) == sorted(expected) and len(rows) == len(
        clinic.expected
    )
    for row in rows:
        assert row["sha256"] == hashlib.sha256(expected[row["path"]]).hexdigest()

    # resumable: a missing file is written, the rest skipped; other bytes are never replaced;
    # a body that is not what its stored SHA-256 says is never given the file's name
    single = [r for r in rows if [x["path"] for x in rows].count(r["path"]) == 1]
    first, second, third = sorted(r["path"] for r in single)[:3]
    (target / first).unlink()
    (target / second).write_bytes(b"someone else's file")
    (target / third).unlink()
    damaged = next(r["key"] for r in rows if r["path"] == third)
    kept = client.head_object(Bucket="dental-images", Key=damaged)
    client.put_object(Bucket="dental-images", Key=damaged, Body=b"not the archived bytes",
                      Metadata=kept["Metadata"], ContentType=kept["ContentType"])  # fmt: skip
    code, report = site.cli("restore", "--to", str(target), config=fresh)
    assert code == 1, report
    assert (report["written"], report["present"]) == (1, len(clinic.expected) - 3)
    reasons = {f["key"]: f["reason"] for f in report["failed"]}
    assert len(reasons) == 2
    assert reasons.pop(damaged).startswith("its bytes do not have the SHA-256 stored with it")
    assert list(reasons.values()) == [
        f"{Path(second).name} exists with other content: not replaced"
    ]
    assert (target / first).read_bytes() == expected[first]
    assert (target / second).read_bytes() == b"someone else's file"
    assert not (target / third).exists()
    assert not [p for p in (target / third).parent.iterdir() if p.name.startswith(".")]


def test_a_folder_inside_pdata_is_refused(site):
    inside = Path(site.clinic.pdata_root) / "restored"
    out = run_cli(["restore", "--config", str(site.config), "--to", str(inside)], site.env)
    assert out.returncode == 2, out.stderr
    assert "inside pdata_root" in out.stderr and not inside.exists()
