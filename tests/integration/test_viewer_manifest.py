"""The viewer's data, end to end against a real SeaweedFS server and a real Prefect server:
``pdata-sync thumbnails`` backfills what a sync without thumbnails left out, and
``pdata-sync retrieve --manifest`` writes OHIF's DICOM JSON manifest from S3 alone. The
manifest is checked field by field against the headers OHIF's dicomjson loader reads, and
every URL in it is fetched: the bytes must be the clinic's own files."""

from __future__ import annotations

import io
import json
import random
import stat
from contextlib import ExitStack
from pathlib import Path

import httpx
import pydicom
import pytest
from PIL import Image

from pdata_sync.demo.generate import write_dicom
from pdata_sync.identity.keys import thumbnail_key
from pdata_sync.viewer.manifest import INSTANCE_FIELDS
from tests.conftest import BUCKET, open_site, run_cli
from tests.kit.s3 import empty_bucket

# What OHIF's loader needs of every instance to place and draw it.
REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "Modality",
)


def dicom_value(ds: pydicom.Dataset, name: str):
    value = ds.get(name)
    if isinstance(value, pydicom.multival.MultiValue):
        return [float(v) if isinstance(v, float) else v for v in value]
    if isinstance(value, pydicom.valuerep.DSfloat | float):
        return float(value)
    if isinstance(value, pydicom.valuerep.IS | int):
        return int(value)
    return None if value is None else str(value)


@pytest.fixture(scope="module")
def archived(request, tmp_path_factory, seaweed):
    """A clinic synced with thumbnails switched off, plus two objects someone else put
    under one patient: a DICOM file that cannot be drawn and a file that is not DICOM."""
    tmp = tmp_path_factory.mktemp("viewer")
    empty_bucket(seaweed.client(), BUCKET)
    with ExitStack() as stack:
        site = open_site(stack, tmp, seaweed, request, settings={"thumbnails": False}, patients=12)
        clinic, client, config, env = site.clinic, site.client, site.config, site.env
        sync = run_cli(["sync", "--config", str(config), "--json"], env)
        assert sync.returncode == 0, sync.stderr[-3000:]
    guid = max(
        {e["patient_guid"] for e in clinic.expected},
        key=lambda g: sum(e["patient_guid"] == g for e in clinic.expected),
    )
    # a DICOM image without Bits Allocated: archived, listed, not drawable
    broken = tmp / "broken.dcm"
    write_dicom(
        broken,
        rng=random.Random(5),
        clinic_id=clinic.clinic_id,
        patient_id=1,
        patient_name="Test^Broken",
        birth_date="19700101",
        image_id=99001,
        modality="IO",
        rows=40,
        cols=50,
    )
    ds = pydicom.dcmread(broken)
    del ds.BitsAllocated
    ds.save_as(broken)
    broken_key = f"images/{guid}/{clinic.clinic_id}_99001_broken.dcm"
    client.put_object(Bucket=BUCKET, Key=broken_key, Body=broken.read_bytes())
    junk_key = f"images/{guid}/{clinic.clinic_id}_99002_notes.dcm"
    client.put_object(Bucket=BUCKET, Key=junk_key, Body=b"not a DICOM file " * 100)
    yield {
        "clinic": clinic,
        "client": client,
        "config": config,
        "env": env,
        "guid": guid,
        "broken": broken_key,
        "junk": junk_key,
        "tmp": tmp,
    }
    empty_bucket(client, BUCKET)


def listed(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_backfill_draws_the_missing_thumbnails_and_reports_what_it_cannot(archived):
    client, config, env = archived["client"], archived["config"], archived["env"]
    assert listed(client, "thumbnails/") == set(), "the sync had thumbnails switched off"
    images = listed(client, "images/")

    first = run_cli(["thumbnails", "--config", str(config), "--json"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout)
    not_made = {e["key"]: e["reason"] for e in report["not_made"]}
    assert set(not_made) == {archived["broken"], archived["junk"]}
    assert "Bits Allocated" in not_made[archived["broken"]]
    assert "not a readable DICOM file" in not_made[archived["junk"]]
    assert report["images"] == len(images)
    assert report["made"] == len(images) - 2 and report["present"] == 0
    drawable = images - set(not_made)
    assert listed(client, "thumbnails/") == {thumbnail_key(k) for k in drawable}
    for key in sorted(drawable)[:5]:
        got = client.get_object(Bucket=BUCKET, Key=thumbnail_key(key))
        assert got["ContentType"] == "image/jpeg"
        with Image.open(io.BytesIO(got["Body"].read())) as image:
            assert image.format == "JPEG" and max(image.size) <= 256

    second = run_cli(["thumbnails", "--config", str(config), "--json"], env)
    again = json.loads(second.stdout)
    assert (again["made"], again["present"]) == (0, len(drawable))


def test_manifest_is_what_ohif_reads_and_every_url_serves_the_source_file(archived):
    clinic, guid, env = archived["clinic"], archived["guid"], archived["env"]
    run_cli(["thumbnails", "--config", str(archived["config"])], env)  # idempotent
    target = archived["tmp"] / "out" / "manifest.json"
    out = run_cli(
        [
            "retrieve",
            "--config",
            str(archived["config"]),
            "--patient-guid",
            guid,
            "--manifest",
            str(target),
            "--presign",
            "900",
            "--json",
        ],
        env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600, "presigned URLs: owner only"
    listing = {i["key"]: i for i in json.loads(out.stdout)}
    assert listing[archived["junk"]]["in_manifest"] is False
    assert "not a readable DICOM file" in listing[archived["junk"]]["manifest_problem"]
    assert listing[archived["broken"]]["in_manifest"] is False
    assert "no BitsAllocated" in listing[archived["broken"]]["manifest_problem"]
    others = set(listing) - {archived["broken"], archived["junk"]}
    assert others and all(listing[k]["in_manifest"] for k in others)

    manifest = json.loads(target.read_text())
    sources = {
        e["image_id"]: Path(clinic.pdata_root, e["path"])
        for e in clinic.expected
        if e["patient_guid"] == guid
    }
    seen_ids: set[int] = set()
    for study in manifest["studies"]:
        assert study["PatientID"] == guid
        assert study["NumInstances"] == sum(len(s["instances"]) for s in study["series"])
        for series in study["series"]:
            for instance in series["instances"]:
                meta = instance["metadata"]
                assert meta["PatientID"] == guid
                assert meta["StudyInstanceUID"] == study["StudyInstanceUID"]
                assert meta["SeriesInstanceUID"] == series["SeriesInstanceUID"]
                assert set(REQUIRED) <= set(meta), set(REQUIRED) - set(meta)
                assert set(meta) <= set(INSTANCE_FIELDS) | {"PatientID"}
                url = instance["url"]
                assert url.startswith("dicomweb:http://127.0.0.1:")
                assert "X-Amz-Expires=900" in url
                body = httpx.get(url[len("dicomweb:") :]).content
                ds = pydicom.dcmread(io.BytesIO(body))
                # every field is the file's own value, except PatientID (the patientGuid)
                for name, value in meta.items():
                    if name != "PatientID":
                        assert value == dicom_value(ds, name), name
                image_id = next((i for i, p in sources.items() if p.read_bytes() == body), None)
                if image_id is None:  # the object put under the patient by the test
                    assert "thumbnail" not in instance
                    continue
                seen_ids.add(image_id)
                thumb = httpx.get(instance["thumbnail"])
                assert thumb.status_code == 200
                assert thumb.content.startswith(b"\xff\xd8")  # JPEG
    assert seen_ids == set(sources), "every image of the patient is in the manifest, once"
    assert sum(len(s["instances"]) for st in manifest["studies"] for s in st["series"]) == len(
        sources
    )

    # each series is labelled with its image's Sidexis name (what OHIF shows under a
    # thumbnail) and numbered 1, 2, ... in the order the images were taken (image ids)
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(f"file:{clinic.database_path}?mode=ro", uri=True)) as db:
        names = dict(db.execute("SELECT MediaBaseId, Name FROM MediaBase"))
    for study in manifest["studies"]:
        ids = []
        for series in study["series"]:
            (instance,) = series["instances"]  # Sidexis: one image per series
            body = httpx.get(instance["url"][len("dicomweb:") :]).content
            image_id = next(i for i, p in sources.items() if p.read_bytes() == body)
            ids.append(image_id)
            if (names.get(image_id) or "").strip():
                assert series["SeriesDescription"] == names[image_id].strip()[:64], series
        assert [s["SeriesNumber"] for s in study["series"]] == list(range(1, len(ids) + 1))
        assert ids == sorted(ids)

    text = target.read_text()
    for value in clinic.phi:  # names, birth dates, CardIds
        if len(value) >= 4:
            assert value not in text
    folders = {p.parent.name.removeprefix("P_").lstrip("0") for p in sources.values()}
    for study in manifest["studies"]:
        assert study["PatientID"] not in folders
