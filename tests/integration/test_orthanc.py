"""Orthanc as a second destination (docs/orthanc.md), against a real Orthanc started here on
127.0.0.1 with authentication on, a real SeaweedFS, resolver and Prefect server. The sync
talks to Orthanc through a pass-through proxy that records every request, so "no call" is
counted, not assumed."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import pydicom
import pytest

from pdata_sync.base.config import OrthancConfig
from pdata_sync.catalog import Catalog, default_catalog_url
from pdata_sync.orthanc.client import OrthancClient, OrthancRejected, instance_ids
from pdata_sync.pipeline.previews import PREVIEW_MAX_SIDE
from pdata_sync.viewer.render import render
from tests.conftest import (
    assert_exactly_expected,
    run_cli,
    stored_objects,
)
from tests.support.fault_proxy import FaultProxy


@pytest.fixture
def site(make_site, orthanc):
    """A small clinic syncing to SeaweedFS and, through a recording proxy, to Orthanc."""
    with FaultProxy(orthanc.url) as proxy:
        site = make_site(
            orthanc={"url": proxy.url, "username": orthanc.user, "max_attempts": 2},
            patients=8,
        )

        def configure(concurrency: int = 4, **transfer) -> Path:
            return site.variant("orthanc", orthanc={"concurrency": concurrency}, transfer=transfer)

        env = {**site.env, "PDATA_SYNC_ORTHANC_PASSWORD": orthanc.password}
        yield site.clinic, site.client, proxy, configure, env, site.tmp_path


def sync(config: Path, env: dict, *extra: str):
    out = run_cli(["sync", "--config", str(config), "--json", *extra], env)
    assert out.stdout, out.stderr[-3000:]
    return out.returncode, json.loads(out.stdout)


def orthanc_ids_of(objects: dict[str, bytes]) -> dict[str, str]:
    """S3 key -> the instance id Orthanc must give that object's content."""
    ids = {}
    for key, data in objects.items():
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        ids[key] = instance_ids(
            str(ds.get("PatientID", "")),
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
        ).instance_id
    return ids


def recorded(tmp_path: Path, clinic, server: str):
    catalog = Catalog.open(default_catalog_url(tmp_path / "state"))
    try:
        return {r.key: r for r in catalog.orthanc(clinic.clinic_id, server).held()}
    finally:
        catalog.close()


def drop_study_uid(path: Path) -> None:
    """A DICOM file S3 archives but Orthanc refuses (it needs the StudyInstanceUID)."""
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)


def artifacts(prefect_server, flow_run_id: str, clinic_id: str) -> tuple[list[dict], str]:
    """The sync's summary table rows and problems markdown, as the Prefect server keeps them."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with SyncPrefectClient(prefect_server.api_url) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_key = {a.key: a.data for a in found}
    table = by_key[f"sync-summary-{clinic_id}"]
    return (json.loads(table) if isinstance(table, str) else table), by_key[
        f"sync-problems-{clinic_id}"
    ]


def test_sync_stores_every_image_in_orthanc_once(site, orthanc, prefect_server):
    clinic, client, proxy, configure, env, tmp_path = site
    paths = [e["path"] for e in clinic.expected]
    first = next(e for e in clinic.expected if paths.count(e["path"]) == 1)  # one key only
    drop_study_uid(Path(clinic.pdata_root, first["path"]))
    config = configure()

    code, summary = sync(config, env)
    assert code == 0, summary
    assert summary["failed"] == []
    assert_exactly_expected(client, clinic)  # S3 first, complete
    objects = stored_objects(client)
    prefix = f"images/{first['patient_guid']}/{clinic.clinic_id}_{first['image_id']}_"
    (refused_key,) = (k for k in objects if k.startswith(prefix))
    ids = orthanc_ids_of({k: v for k, v in objects.items() if k != refused_key})
    # a file archived under two patientGuids (a patient with two CardIds) is one instance
    distinct = set(ids.values())
    assert len(distinct) < len(ids)
    assert summary["orthanc"]["stored"] == len(distinct)
    assert summary["orthanc"]["already_stored"] == len(ids) - len(distinct)
    assert summary["orthanc"]["failed"] == []
    assert summary["orthanc"]["rejected"] == [
        {"path": first["path"], "reason": "refused by Orthanc: Inexistent tag (Orthanc error 21)"}
    ]
    # Orthanc holds exactly the S3 objects, under the ids their tags give
    assert sorted(orthanc.instances()) == sorted(distinct)
    rows = recorded(tmp_path, clinic, proxy.url)
    assert {k: r.instance_id for k, r in rows.items()} == ids
    assert sorted(r.status for r in rows.values()).count("stored") == len(distinct)
    assert all(r.series_id and r.study_id and r.patient_id for r in rows.values())
    posts = [p for m, p in proxy.state.log if m == "POST"]
    assert posts == ["/instances"] * len(objects)
    # the run's audit trail: the summary table and the problems say what Orthanc did
    table, problems = artifacts(prefect_server, summary["flow_run_id"], clinic.clinic_id)
    orthanc_rows = {r["reason"]: r["count"] for r in table if r["outcome"] == "orthanc"}
    assert orthanc_rows["stored (new in Orthanc)"] == len(distinct)
    assert orthanc_rows["rejected by Orthanc"] == 1
    assert f"`{first['path']}` | refused by Orthanc: Inexistent tag (Orthanc error 21)" in problems
    for instance in rows.values():  # Orthanc's ids hash the patient id: catalog only
        assert instance.instance_id not in json.dumps(table) + problems

    # a second run with nothing new: the credential check, and not one call per image
    proxy.state.log.clear()
    code, again = sync(config, env)
    assert code == 0, again
    assert again["uploaded"] == 0
    assert again["orthanc"]["unchanged"] == len(objects) - 1
    assert again["orthanc"]["stored"] == again["orthanc"]["already_stored"] == 0
    assert [r["path"] for r in again["orthanc"]["rejected"]] == [first["path"]]
    assert proxy.state.log == [("GET", "/system")]

    # a full run sends what Orthanc rejected again (and only that)
    proxy.state.log.clear()
    code, full = sync(config, env, "--full")
    assert code == 0, full
    assert [m for m, _ in proxy.state.log].count("POST") == 1
    assert full["orthanc"]["unchanged"] == len(objects) - 1

    # previews: Orthanc's own where it holds the image, drawn here where it refused it
    guid = first["patient_guid"]
    out_dir = tmp_path / "previews"
    got = run_cli(
        [
            "retrieve",
            "--config",
            str(config),
            "--patient-guid",
            guid,
            "--previews",
            str(out_dir),
            "--json",
        ],
        env,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    images = {i["key"]: i for i in json.loads(got.stdout)}
    assert set(images) == {k for k in objects if k.startswith(f"images/{guid}/")}
    with orthanc.http() as http:
        for key, image in images.items():
            png = Path(image["preview"]).read_bytes()
            assert Path(image["preview"]).stat().st_mode & 0o077 == 0
            if key == refused_key:
                assert image["preview_source"] == "local"
                assert image["preview_fallback"].endswith("(Orthanc needs StudyInstanceUID)")
                assert png == render(objects[key], max_side=PREVIEW_MAX_SIDE, fmt="PNG")
            else:
                assert image["preview_source"] == "orthanc"
                assert png == http.get(f"/instances/{ids[key]}/preview").content


def test_wrong_credentials_never_stop_the_archive(site, orthanc):
    """S3 is the archive of record: Orthanc refusing the credentials at the start of a run
    does not keep a single image out of S3. The run syncs S3, fails the Orthanc part in one
    line naming the server and user (never the password), and exits 2: the set-up needs
    fixing. With the right password the next run fills Orthanc."""
    clinic, client, proxy, configure, env, tmp_path = site
    config = configure()
    out = run_cli(
        ["sync", "--config", str(config), "--json"],
        {**env, "PDATA_SYNC_ORTHANC_PASSWORD": "not-the-password"},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    refused = (
        f"orthanc: Orthanc at {proxy.url} refused the credentials (user "
        f"'{orthanc.user}', 401); check orthanc.username and the password"
    )
    lines = [line for line in out.stderr.splitlines() if line.startswith("pdata-sync:")]
    assert lines == [f"pdata-sync: {refused} (images in S3 only)"]
    assert "not-the-password" not in out.stderr + out.stdout
    summary = json.loads(out.stdout)
    assert summary["failed"] == [] and summary["uploaded"] == len(clinic.expected)
    assert_exactly_expected(client, clinic)  # the archive did not wait for Orthanc
    assert summary["orthanc"]["unavailable"] == {"reason": refused, "config": True}
    assert {f["reason"] for f in summary["orthanc"]["failed"]} == {f"not attempted: {refused}"}
    assert [m for m, _ in proxy.state.log] == ["GET"]  # only the check reached Orthanc
    assert orthanc.instances() == []

    code, again = sync(config, env)
    assert code == 0, again
    assert again["uploaded"] == 0 and again["orthanc"]["unavailable"] is None
    assert again["orthanc"]["stored"] + again["orthanc"]["already_stored"] == len(clinic.expected)


def test_an_orthanc_that_does_not_answer_at_the_start_never_stops_the_archive(site, orthanc):
    """Orthanc down before the run starts: S3 is synced completely, the run ends Failed
    with exit 1 and one line naming the server; the next run, with Orthanc back, fills it."""
    clinic, client, proxy, configure, env, tmp_path = site
    config = configure()
    orthanc.stop()
    out = run_cli(["sync", "--config", str(config), "--json"], env)
    assert out.returncode == 1, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["failed"] == [] and summary["uploaded"] == len(clinic.expected)
    assert_exactly_expected(client, clinic)
    down = summary["orthanc"]["unavailable"]
    assert down["config"] is False and down["reason"].startswith(
        f"orthanc: cannot reach Orthanc at {proxy.url}"
    )
    lines = [line for line in out.stderr.splitlines() if line.startswith("pdata-sync:")]
    assert lines[0] == f"pdata-sync: {down['reason']} (images in S3 only)"
    assert "Traceback" not in out.stderr

    orthanc.start()
    code, again = sync(config, env)
    assert code == 0, again
    assert again["uploaded"] == 0
    assert again["orthanc"]["stored"] + again["orthanc"]["already_stored"] == len(clinic.expected)
    ids = orthanc_ids_of(stored_objects(client))
    assert sorted(orthanc.instances()) == sorted(set(ids.values()))


def test_orthanc_down_mid_run_then_back(site, orthanc):
    """S3 stays complete when Orthanc stops; the next run fills Orthanc; verify reports an
    instance deleted from Orthanc and the next sync stores it again."""
    clinic, client, proxy, configure, env, tmp_path = site
    config = configure(concurrency=1, batch_size=10, parallel_batches=1)
    posts = []

    def stop_at_fourth_post(method: str, path: str) -> None:
        if method == "POST":
            posts.append(path)
            if len(posts) == 4:
                orthanc.stop()

    proxy.on_request = stop_at_fourth_post
    code, summary = sync(config, env)
    assert code == 1
    assert summary["failed"] == []  # every image is in S3 and verified
    assert_exactly_expected(client, clinic)
    total = len(clinic.expected)
    assert summary["orthanc"]["stored"] + summary["orthanc"]["already_stored"] == 3
    failed_paths = {f["path"] for f in summary["orthanc"]["failed"]}  # listed once per file
    paths = {e["path"] for e in clinic.expected}
    assert failed_paths <= paths and len(failed_paths) >= len(paths) - 3
    assert all("Orthanc" in f["reason"] for f in summary["orthanc"]["failed"])

    proxy.on_request = None
    orthanc.start()
    code, again = sync(config, env)
    assert code == 0, again
    assert again["uploaded"] == 0
    assert again["orthanc"]["stored"] + again["orthanc"]["already_stored"] == total - 3
    assert again["orthanc"]["unchanged"] == 3
    ids = orthanc_ids_of(stored_objects(client))
    assert sorted(orthanc.instances()) == sorted(set(ids.values()))

    # an instance deleted in Orthanc: verify reports it, the next sync puts it back
    gone_key, gone_id = sorted(ids.items())[0]
    with orthanc.http() as http:
        assert http.delete(f"/instances/{gone_id}").status_code == 200
    out = run_cli(["verify", "--config", str(config), "--json"], env)
    assert out.returncode == 1, out.stderr[-2000:]
    drift = json.loads(out.stdout)
    assert drift["orthanc"] == {"checked": total, "missing": [gone_key]}
    assert drift["missing"] == drift["changed"] == drift["unknown"] == []
    code, third = sync(config, env)
    assert code == 0, third
    assert third["orthanc"]["stored"] == 1 and third["orthanc"]["unchanged"] == total - 1
    assert sorted(orthanc.instances()) == sorted(set(ids.values()))


def test_client_against_orthanc(orthanc):
    """The REST calls on their own: ids known before the call, a non-DICOM body refused
    with Orthanc's message, a preview, a missing instance."""
    from pydicom.data import get_testdata_file

    cfg = OrthancConfig(url=orthanc.url, username=orthanc.user)
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    expected = instance_ids(
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    with OrthancClient(cfg, orthanc.password) as client:
        assert client.check() == "1.10.1"
        first = client.store(data)
        assert first.status == "Success"
        assert first.instance_id == expected.instance_id
        assert (first.series_id, first.study_id, first.patient_id) == (
            expected.series_id,
            expected.study_id,
            expected.patient_id,
        )
        assert client.store(data).status == "AlreadyStored"
        with pytest.raises(
            OrthancRejected,
            match=r"refused by Orthanc: Bad file format \(Orthanc error 15\): Cannot parse an",
        ):
            client.store(b"not a DICOM file at all")
        png = client.preview(first.instance_id)
        assert png is not None and png.startswith(b"\x89PNG")
        assert client.exists(first.instance_id)
        assert not client.exists("00000000-00000000-00000000-00000000-00000000")
        assert client.preview("00000000-00000000-00000000-00000000-00000000") is None
    with OrthancClient(cfg, "wrong") as client, pytest.raises(Exception, match="refused the cred"):
        client.check()


def test_a_sync_trusts_no_malformed_orthanc_answer(site, prefect_server):
    """A fake Orthanc (a small local server) that answers the store with a null id, or with
    an error text echoing the request's credentials: the archive is whole in S3, no image
    is recorded as held by Orthanc, and no credential reaches the JSON, the catalog or the
    problems artifact (issue 33)."""
    from tests.support.fake_orthanc import FakeOrthanc, json_answer

    clinic, client, proxy, configure, env, tmp_path = site
    secret = base64.b64encode(f"pdata:{env['PDATA_SYNC_ORTHANC_PASSWORD']}".encode()).decode()
    stores = []

    def answer(method, path, headers):
        if path == "/system":
            return json_answer(200, {"Version": "1.10.1"})
        stores.append(path)
        if len(stores) % 2:
            return json_answer(200, {"ID": None, "Status": "AlreadyStored"})
        echoed = f"Bad file\nAuthorization: {headers.get('Authorization')}"
        return json_answer(400, {"OrthancStatus": 15, "OrthancError": "x", "Details": echoed})

    with FakeOrthanc(answer) as fake:
        config = configure()
        config.write_text(config.read_text().replace(proxy.url, fake.url))
        out = run_cli(["sync", "--config", str(config), "--json"], env)
    assert out.returncode == 1, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["failed"] == [] and summary["uploaded"] == len(clinic.expected)
    assert_exactly_expected(client, clinic)
    counts = summary["orthanc"]
    assert counts["stored"] == counts["already_stored"] == 0
    assert counts["unchanged"] == 0 and counts["failed"] and counts["rejected"]
    assert all("no valid id (None)" in f["reason"] for f in counts["failed"])
    assert recorded(tmp_path, clinic, fake.url) == {}
    _, problems = artifacts(prefect_server, summary["flow_run_id"], clinic.clinic_id)
    catalog = (tmp_path / "state").rglob("*.sqlite*")
    for text in (
        out.stdout,
        out.stderr,
        problems,
        *(p.read_bytes().decode("latin-1") for p in catalog),
    ):
        assert secret not in text
        assert "Authorization" not in text


def resave(path: Path, comment: str) -> bytes:
    """The file saved again under its own UIDs with other content (as Sidexis does when an
    image is edited): Orthanc answers ``AlreadyStored`` to it and keeps what it had."""
    ds = pydicom.dcmread(path)
    ds.ImageComments = comment
    ds.save_as(path)
    return path.read_bytes()


def test_orthanc_ends_with_the_current_content_or_says_why_not(site, orthanc):
    """Orthanc keeps the first file of a SOP Instance UID. A file saved again under its UID
    replaces the content pdata-sync itself stored; content someone else stored under an
    image's UID is not replaced and is reported, never recorded as held."""
    clinic, client, proxy, configure, env, tmp_path = site
    config = configure()
    paths = [e["path"] for e in clinic.expected]
    single = [e for e in clinic.expected if paths.count(e["path"]) == 1]
    edited, foreign = single[0], single[1]
    # someone else stored other content under the second image's UIDs before pdata-sync
    theirs = io.BytesIO()
    ds = pydicom.dcmread(Path(clinic.pdata_root, foreign["path"]))
    ds.ImageComments = "stored by someone else"
    ds.save_as(theirs)
    with orthanc.http() as http:
        assert http.post("/instances", content=theirs.getvalue()).json()["Status"] == "Success"

    code, first = sync(config, env)
    assert code == 0, first  # rejected by Orthanc is reported; S3 is complete
    (refusal,) = first["orthanc"]["rejected"]
    assert refusal["path"] == foreign["path"]
    assert "other content under this image's SOP Instance UID" in refusal["reason"]
    assert_exactly_expected(client, clinic)
    ids = orthanc_ids_of(stored_objects(client))
    prefix = f"images/{foreign['patient_guid']}/{clinic.clinic_id}_{foreign['image_id']}_"
    (foreign_key,) = (k for k in ids if k.startswith(prefix))
    assert foreign_key not in recorded(tmp_path, clinic, proxy.url)
    with orthanc.http() as http:  # theirs stays theirs
        held = http.get(f"/instances/{ids[foreign_key]}/file").content
    assert held == theirs.getvalue()

    new = resave(Path(clinic.pdata_root, edited["path"]), "revised after the first sync")
    code, second = sync(config, env)
    assert code == 0, second
    assert second["uploaded"] == 1
    assert second["orthanc"]["stored"] == 1 and second["orthanc"]["failed"] == []
    assert [r["path"] for r in second["orthanc"]["rejected"]] == [foreign["path"]]
    prefix = f"images/{edited['patient_guid']}/{clinic.clinic_id}_{edited['image_id']}_"
    (edited_key,) = (k for k in ids if k.startswith(prefix))
    with orthanc.http() as http:
        assert http.get(f"/instances/{ids[edited_key]}/file").content == new
    row = recorded(tmp_path, clinic, proxy.url)[edited_key]
    assert row.sha256 == hashlib.sha256(new).hexdigest() and row.status == "stored"
