"""Research export end to end (docs/research-export.md): ``pdata-sync export`` against a
real SeaweedFS (archive and research bucket), a real Orthanc, a real Prefect server and the
clinic's PDATA: the archive first, Orthanc for what it lacks, PDATA after that; each
instance de-identified once; a second project gets other pseudonyms and UIDs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pydicom
import pytest
import yaml

from pdata_sync.base.config import load_config
from pdata_sync.orthanc.client import instance_ids
from pdata_sync.pipeline.context import RunContext
from pdata_sync.pipeline.export import run_export
from pdata_sync.pipeline.runs import Runner
from pdata_sync.research.deid import ProjectKey
from pdata_sync.research.export import ExportRequest
from tests.conftest import BUCKET, run_cli, stored_objects
from tests.kit.s3 import empty_bucket

RESEARCH = "research-exports"
SECRET = "Xr7bQ2mVt9LpZ4cK8wNf3HyJ6dGs1AeU5oRiTq0vBnM"  # 43 base64 characters


@pytest.fixture
def site(make_site, seaweed, orthanc):
    """A small clinic on SeaweedFS and Orthanc, a research bucket emptied before and after."""
    client = seaweed.client()
    if RESEARCH not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=RESEARCH)
    empty_bucket(client, RESEARCH)
    site = make_site(
        orthanc={"url": orthanc.url, "username": orthanc.user},
        settings={
            "research": {
                "bucket": RESEARCH,
                "region": "us-east-1",
                "endpoint_url": seaweed.endpoint,
            }
        },
    )
    env = {
        **site.env,
        "PDATA_SYNC_ORTHANC_PASSWORD": orthanc.password,
        "PDATA_SYNC_RESEARCH_SECRET": SECRET,
    }
    yield site.clinic, client, orthanc, site.config, env
    empty_bucket(client, RESEARCH)


def export(config: Path, env: dict, project: str, *args: str):
    out = run_cli(["export", "--config", str(config), "--project", project, "--json", *args], env)
    assert out.stdout, out.stderr[-3000:]
    return out.returncode, json.loads(out.stdout), out.stdout


def header(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_export_takes_the_archive_then_orthanc_then_pdata_and_never_twice(
    site, tmp_path, monkeypatch
):
    clinic, client, orthanc, config, env = site
    paths = [e["path"] for e in clinic.expected]
    single = [e for e in clinic.expected if paths.count(e["path"]) == 1]
    burned, from_orthanc, from_pdata, lost = single[:4]
    ds = pydicom.dcmread(Path(clinic.pdata_root, burned["path"]))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(Path(clinic.pdata_root, burned["path"]))

    sync = run_cli(["sync", "--config", str(config), "--json"], env)
    assert sync.returncode == 0, sync.stderr[-3000:]
    archive = stored_objects(client)
    originals = dict(archive)

    def key_of(entry) -> str:
        prefix = f"images/{entry['patient_guid']}/{clinic.clinic_id}_{entry['image_id']}_"
        (key,) = (k for k in archive if k.startswith(prefix))
        return key

    # the archive loses three images; Orthanc two of them; PDATA the last one
    for entry in (from_orthanc, from_pdata, lost):
        client.delete_object(Bucket=BUCKET, Key=key_of(entry))
    with orthanc.http() as http:
        for entry in (from_pdata, lost):
            ds = header(archive[key_of(entry)])
            gone = instance_ids(
                str(ds.PatientID), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
            assert http.delete(f"/instances/{gone.instance_id}").status_code == 200
    Path(clinic.pdata_root, lost["path"]).unlink()

    guids = sorted({e["patient_guid"] for e in clinic.expected})
    request = tmp_path / "request.csv"
    request.write_text("patient_guid\n" + "\n".join(guids) + "\n")
    code, report, stdout = export(config, env, "caries-2027", "--from-csv", str(request))
    assert code == 1  # one instance no source has
    total = len(archive)
    assert report["exported_by_source"] == {"archive": total - 4, "orthanc": 1, "pdata": 1}
    assert report["exported"] == total - 2
    assert report["failed"] == [
        {
            "key": key_of(lost),
            "reason": "not in the archive; not in Orthanc; PDATA file gone or changed",
        }
    ]
    assert [h["key"] for h in report["held_back"]] == [key_of(burned)]
    assert "BurnedInAnnotation YES" in report["held_back"][0]["reason"]

    key = ProjectKey.of(SECRET, "caries-2027")
    exported = stored_objects(client, "research/caries-2027/", RESEARCH)
    manifests = {k: v for k, v in exported.items() if "/manifests/" in k}
    images = {k: v for k, v in exported.items() if k not in manifests}
    assert len(images) == total - 2
    expected_keys = set()
    for archive_key, original_bytes in originals.items():
        if archive_key in (key_of(burned), key_of(lost)):
            continue
        guid = archive_key.split("/")[1]
        original = header(original_bytes)
        study, series, sop = (
            key.uid(original.StudyInstanceUID),
            key.uid(original.SeriesInstanceUID),
            key.uid(original.SOPInstanceUID),
        )
        target = f"research/caries-2027/{key.pseudonym(guid)}/{study}/{series}/{sop}.dcm"
        expected_keys.add(target)
        result = header(images[target])
        assert result.PixelData == original.PixelData  # byte for byte
        assert result.PatientID == result.PatientName == key.pseudonym(guid)
        assert result.PatientIdentityRemoved == "YES"
        assert result.StudyDate != original.StudyDate
        for value in clinic.phi:
            assert value.encode() not in images[target], value
    assert set(images) == expected_keys
    # the manifest: what was exported, de-identified only; no patientGuid anywhere
    (manifest,) = manifests.values()
    rows = list(csv.DictReader(io.StringIO(manifest.decode())))
    assert {r["key"] for r in rows} == expected_keys
    assert sorted(r["source"] for r in rows).count("orthanc") == 1
    for guid in guids:
        assert guid not in manifest.decode()
        assert key.pseudonym(guid) not in stdout  # the report never pairs them

    # a re-run exports nothing new
    code, again, _ = export(config, env, "caries-2027", "--from-csv", str(request))
    assert again["exported"] == 0
    assert again["skipped_already_exported"] == total - 2
    assert len(stored_objects(client, "research/caries-2027/", RESEARCH)) == len(exported)

    # another project: other pseudonyms, other UIDs; the export's own sequence run here,
    # without Prefect, as the flow runs it
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = Runner()
    try:
        other = run_export(
            runner, RunContext(load_config(config)), "perio-2027", ExportRequest((guids[0],))
        )
    finally:
        runner.close()
    assert sum(other.report.exported.values()) >= 1 and other.manifest is not None
    second = stored_objects(client, "research/perio-2027/", RESEARCH)
    p2 = ProjectKey.of(SECRET, "perio-2027")
    assert all(f"/{p2.pseudonym(guids[0])}/" in k for k in second if "/manifests/" not in k)
    assert p2.pseudonym(guids[0]) != key.pseudonym(guids[0])
    first_sops = {k.rsplit("/", 1)[-1] for k in images}
    assert not first_sops & {k.rsplit("/", 1)[-1] for k in second}


def test_export_refuses_without_a_secret_or_a_research_section(site):
    clinic, client, orthanc, config, env = site
    out = run_cli(
        [
            "export",
            "--config",
            str(config),
            "--project",
            "p1",
            "--patient-guid",
            clinic.expected[0]["patient_guid"],
            "--json",
        ],
        {**env, "PDATA_SYNC_RESEARCH_SECRET": ""},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "research: no secret for the pseudonyms" in out.stderr
    assert stored_objects(client, "research/", RESEARCH) == {}
    out = run_cli(
        [
            "export",
            "--config",
            str(config),
            "--project",
            "Bad_Slug",
            "--patient-guid",
            clinic.expected[0]["patient_guid"],
        ],
        env,
    )
    assert out.returncode == 2 and "project 'Bad_Slug'" in out.stderr


def test_an_export_a_research_server_did_not_store_as_sent_is_reported_failed(site):
    """A research bucket on a server that does not check the SHA-256 it is sent (emulated by
    the fault proxy, which answers as such a server would) and a body damaged on its way
    there: the ETag it answers is not our MD5, so the instance is reported failed, never
    exported."""
    from tests.support.fault_proxy import Fault, FaultProxy

    clinic, client, orthanc, config, env = site
    sync = run_cli(["sync", "--config", str(config), "--json"], env)
    assert sync.returncode == 0, sync.stderr[-3000:]
    guid = clinic.expected[0]["patient_guid"]
    settings = yaml.safe_load(config.read_text())
    endpoint = client.meta.endpoint_url
    assert settings["research"]["endpoint_url"] == endpoint
    with FaultProxy(endpoint) as proxy:
        proxy.set(Fault("damaged-unchecked", match=lambda method, path: method == "PUT"))
        settings["research"]["endpoint_url"] = proxy.url  # the research bucket only
        config.write_text(yaml.safe_dump(settings))
        code, report, _ = export(config, env, "caries-2027", "--patient-guid", guid)
    images = sum(e["patient_guid"] == guid for e in clinic.expected)
    assert code == 1
    assert report["exported"] == 0
    assert len(report["failed"]) == images
    assert all("not verified" in f["reason"] for f in report["failed"])
    # the reason stands next to the archive key (the patientGuid): never the research key
    # (the pseudonym) beside it
    assert not [f for f in report["failed"] if "research/" in f["reason"] or "RP" in f["reason"]]


def test_an_export_is_the_clinics_own_and_whole_files_are_deidentified(site):
    """Clinic 1's export of a patientGuid that only another clinic sharing the bucket has
    archived is 'not found' (exit 1) and exports nothing; of a patient both clinics have,
    only clinic 1's images. A file with a name in its preamble and file meta leaves with
    neither. A weak secret is refused with one line; one made by `blocks research-secret
    --generate` is used from its block (issue 33)."""
    clinic, client, orthanc, config, env = site
    first = clinic.expected[0]
    guid = first["patient_guid"]
    path = Path(clinic.pdata_root, first["path"])
    ds = pydicom.dcmread(path)
    ds.preamble = b"PATIENT: DOE^JANE DOB 19700101".ljust(128, b"\0")
    ds.file_meta.SourceApplicationEntityTitle = "JANEDOE"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.826.0.1.3680043.2.1143"
    ds.file_meta.PrivateInformation = b"DOE^JANE 19700101"
    ds.save_as(path, enforce_file_format=True)
    sync = run_cli(["sync", "--config", str(config), "--json"], env)
    assert sync.returncode == 0, sync.stderr[-3000:]
    archive = stored_objects(client)
    # another clinic's objects in the shared bucket, as its sync writes them: one patient
    # only it has, and one image of a patient both clinics treat
    body = next(iter(archive.values()))
    elsewhere = "0b9e3c1a-5d2f-4e8b-9c7a-6f1e2d3c4b5a"
    for key in (f"images/{elsewhere}/clinic-002_5_x.dcm", f"images/{guid}/clinic-002_6_y.dcm"):
        client.put_object(
            Bucket=BUCKET, Key=key, Body=body, Metadata={"clinic-id": "clinic-002", "image-id": "5"}
        )

    weak = run_cli(
        ["export", "--config", str(config), "--project", "p1", "--patient-guid", guid],
        {**env, "PDATA_SYNC_RESEARCH_SECRET": " " * 40},
    )
    assert weak.returncode == 2
    assert [line for line in weak.stderr.splitlines() if line.startswith("pdata-sync:")] == [
        "pdata-sync: research: the secret in PDATA_SYNC_RESEARCH_SECRET is too weak (it is "
        "empty); make one with `pdata-sync blocks research-secret --name NAME --generate`"
    ]

    made = run_cli(["blocks", "research-secret", "--name", "test-research-key", "--generate"], env)
    assert made.returncode == 0, made.stderr[-2000:]
    again = run_cli(["blocks", "research-secret", "--name", "test-research-key", "--generate"], env)
    assert again.returncode == 2 and "exists: it is not replaced" in again.stderr
    config.write_text(
        config.read_text().replace(
            f"research:\n  bucket: {RESEARCH}\n",
            f"research:\n  bucket: {RESEARCH}\n  secret_block: test-research-key\n",
        )
    )
    no_env = {**env, "PDATA_SYNC_RESEARCH_SECRET": ""}

    code, report, _ = export(config, no_env, "p1", "--patient-guid", elsewhere)
    assert code == 1
    assert report["exported"] == 0
    assert report["not_found"] == {"patient_guids": [elsewhere], "study_uids": []}
    assert stored_objects(client, "research/", RESEARCH) == {}

    code, report, _ = export(config, no_env, "p1", "--patient-guid", guid)
    assert code == 0, report
    mine = [k for k in archive if k.startswith(f"images/{guid}/")]
    assert report["exported"] + len(report["held_back"]) == len(mine)  # not clinic-002's
    with_phi = next(k for k in mine if f"_{first['image_id']}_" in k)
    assert with_phi not in {h["key"] for h in report["held_back"]}
    exported = {
        k: v
        for k, v in stored_objects(client, "research/p1/", RESEARCH).items()
        if "/manifests/" not in k
    }
    assert len(exported) == report["exported"] > 0
    assert b"DOE^JANE" in archive[with_phi][:128]  # the archive keeps the file as it was
    for data in exported.values():
        assert data[:128] == b"\0" * 128
        for leak in (b"DOE^JANE", b"JANEDOE", b"1.2.826.0.1.3680043.2.1143"):
            assert leak not in data
        assert {e.keyword for e in header(data).file_meta} == {
            "FileMetaInformationGroupLength",
            "FileMetaInformationVersion",
            "MediaStorageSOPClassUID",
            "MediaStorageSOPInstanceUID",
            "TransferSyntaxUID",
            "ImplementationClassUID",
            "ImplementationVersionName",
        }
