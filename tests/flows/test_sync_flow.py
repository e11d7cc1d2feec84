"""The flows in this process against the session's Prefect server, with S3 on the session's
SeaweedFS and the resolver as a real HTTP server, all on 127.0.0.1."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import pytest

from pdata_sync.base.config import load_config
from pdata_sync.base.errors import ConfigError, InvalidRequestError
from pdata_sync.identity.keys import thumbnail_key
from tests.conftest import BUCKET
from tests.support.prefect_runs import at_least, wait_for_task_runs


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_server):
    """The flows run in this process against the session's Prefect server (which this
    worker starts anyway): a harness server of its own cost 20-25 s to start."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield


@pytest.fixture
def s3(seaweed, monkeypatch):
    """The session's SeaweedFS, its credentials in this process's environment."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return seaweed.client()


def task_runs_of(flow_run_id, expected: int | None = None, timeout: float = 30.0):
    """Task runs recorded for a flow run (waits for the event pipeline to catch up)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return wait_for_task_runs(
            client, flow_run_id, at_least(expected or 0), timeout=timeout if expected else 0
        )


def artifacts_of(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_sync_flow_summary_artifacts_and_no_phi(make_site, s3, monkeypatch):
    import sqlalchemy as sa

    import pdata_sync.pipeline.context
    from pdata_sync.flows.sync import sync_clinic

    engines, logins = [], []

    def counting_engine(*args, **kwargs):
        engine = real_make_engine(*args, **kwargs)
        sa.event.listen(engine, "connect", lambda *_: logins.append(1))
        engines.append(engine)
        return engine

    real_make_engine = pdata_sync.pipeline.context.make_engine
    monkeypatch.setattr(pdata_sync.pipeline.context, "make_engine", counting_engine)
    site = make_site()
    clinic, config = site.clinic, load_config(site.config)
    state = sync_clinic(config=config, return_state=True)
    assert state.is_completed(), state.message
    # the check, the patient query and the media lookup share one engine and one login
    assert len(engines) == 1 and len(logins) == 1
    summary = state.result()
    assert summary["uploaded"] == len(clinic.expected)
    assert summary["skipped"] == clinic.skipped
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    keys = {o["Key"] for o in listed if o["Key"].startswith("images/")}
    assert len(keys) == len(clinic.expected)
    # every new image got its thumbnail, and nothing else was written
    assert summary["thumbnails"] == {"made": len(keys), "not_made": []}
    assert {o["Key"] for o in listed} - keys == {thumbnail_key(k) for k in keys}

    flow_run_id = state.state_details.flow_run_id
    artifacts = {a.key: a for a in artifacts_of(flow_run_id) if a.key}
    table = artifacts[f"sync-summary-{clinic.clinic_id}"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    uploaded_row = next(r for r in rows if r["outcome"] == "uploaded")
    assert uploaded_row["count"] == len(clinic.expected)
    thumbnail_rows = [r["count"] for r in rows if r["outcome"] == "thumbnails"]
    assert thumbnail_rows == [len(clinic.expected), 0]
    problems = artifacts[f"sync-problems-{clinic.clinic_id}"].data
    for path in clinic.rejected_paths:
        assert path in problems
    progress = artifacts[f"sync-progress-{clinic.clinic_id}"]
    assert float(progress.data) == 100.0
    everything = json.dumps(summary) + str(table.data) + problems
    for value in clinic.phi:
        assert value not in everything


def test_two_thousand_images_make_few_task_runs_all_recorded(make_site, s3):
    """ADR 0002: upload tasks are batches, not images."""
    from pdata_sync.flows.sync import BOOKKEEPING_TASKS, sync_clinic

    site = make_site(
        transfer={"batch_size": 500}, patients=200, images_per_patient=(10, 10), scale=0.02
    )
    clinic = site.clinic
    assert len(clinic.expected) >= 1800
    images = sum(1 for _ in Path(clinic.pdata_root).rglob("*.dcm"))
    assert images >= 2000
    state = sync_clinic(config=load_config(site.config), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["uploaded"] == len(clinic.expected)
    expected_runs = BOOKKEEPING_TASKS + summary["batches"]
    assert summary["batches"] == -(-len(clinic.expected) // 500)
    runs = task_runs_of(state.state_details.flow_run_id, expected_runs)
    assert len(runs) == expected_runs
    assert all(r.state_type.value == "COMPLETED" for r in runs)
    n = summary["batches"]
    batch_names = sorted(r.name for r in runs if r.name.startswith("upload-batch"))
    assert batch_names == [f"upload-batch-{i:02d}-of-{n:02d}" for i in range(1, n + 1)]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    stamp = run.expected_start_time.astimezone(UTC).strftime("%Y-%m-%dT%H-%MZ")
    assert run.name == f"{clinic.clinic_id}-{stamp}"


def test_failed_resolver_marks_images_failed_and_the_run_failed(make_site, s3):
    from pdata_sync.flows.sync import sync_clinic

    site = make_site(
        settings={"resolver": {"max_attempts": 2}},
        resolver_options={"fail_first": [503] * 1000},
    )
    clinic = site.clinic
    state = sync_clinic(config=load_config(site.config), return_state=True)
    assert state.is_failed()
    summary = state.result(raise_on_failure=False)
    assert summary["uploaded"] == 0
    failed_paths = {f["path"] for f in summary["failed"]}
    assert {e["path"] for e in clinic.expected} <= failed_paths
    assert all("503" in f["reason"] for f in summary["failed"])


def test_an_unreadable_patient_folder_fails_the_run_not_rejected(make_site, s3, monkeypatch):
    """A worker without read rights on part of PDATA: the environment, reported as failed
    (exit 1), never as rejected input (exit 0). Root ignores file modes, so the OS's answer
    for the worker's user is played by os.scandir."""
    import os

    from pdata_sync.flows.sync import sync_clinic

    site = make_site()
    clinic = site.clinic
    folder = Path(clinic.expected[0]["path"]).parts[0]
    real_scandir = os.scandir

    def denied(path="."):
        if str(path).endswith(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    state = sync_clinic(config=load_config(site.config), return_state=True)
    assert state.is_failed()
    summary = state.result(raise_on_failure=False)
    assert {"path": folder, "reason": "folder cannot be listed: Permission denied"} in summary[
        "failed"
    ]
    assert all(r["path"] != folder for r in summary["rejected"])
    assert summary["uploaded"] > 0  # the rest went on


def test_a_nil_patient_guid_fails_that_patients_images_and_uploads_none(make_site, s3):
    """The nil GUID (an ABP backend's "no value") would pool every unresolved patient
    under one prefix: it is a resolver fault, the patient's images fail, nothing goes up
    under it and the patient is not counted as unknown."""
    from pdata_sync.flows.sync import sync_clinic

    site = make_site()
    clinic = site.clinic
    cards = site.resolver.state.mapping[clinic.clinic_id]
    card, guid = next((c, g) for c, g in cards.items() if list(cards.values()).count(g) == 1)
    cards[card] = "00000000-0000-0000-0000-000000000000"
    victims = sorted(e["path"] for e in clinic.expected if e["patient_guid"] == guid)
    state = sync_clinic(config=load_config(site.config), return_state=True)
    assert state.is_failed()
    summary = state.result(raise_on_failure=False)
    failed = {f["path"]: f["reason"] for f in summary["failed"]}
    assert victims and all("nil patientGuid" in failed[p] for p in victims)
    # the state's message, which the "run failed" alert quotes, names the first of them
    first = summary["failed"][0]
    assert state.message == (
        f"{len(summary['failed'])} image(s) failed, first {first['path']}: {first['reason']}"
    )
    unknown = "patients_card_id_unknown"  # as many as the clinic really has
    assert summary["skipped"].get(unknown, 0) == clinic.skipped.get(unknown, 0)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys and not [k for k in keys if "/00000000-0000-0000-0000-000000000000/" in k]
    assert not [k for k in keys if f"/{guid}/" in k]


def test_config_error_stops_before_any_work(make_site, tmp_path, s3):
    from pdata_sync.flows.sync import sync_clinic

    site = make_site(settings={"pdata_root": str(tmp_path / "missing")})
    state = sync_clinic(config=load_config(site.config), return_state=True)
    assert site.resolver.state.requests == 0
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConfigError) and "missing" in str(error)
    runs = task_runs_of(state.state_details.flow_run_id, 1)
    assert [r.name.split("-")[0:2] for r in runs] == [["check", "source"]]
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_retrieve_flow_lists_and_refuses_bad_guid_before_s3(make_site, s3):
    from pdata_sync.flows.retrieve import retrieve_patient_images
    from pdata_sync.flows.sync import sync_clinic

    site = make_site()
    clinic, config = site.clinic, load_config(site.config)
    assert sync_clinic(config=config, return_state=True).is_completed()
    guid = clinic.expected[0]["patient_guid"]
    images = retrieve_patient_images(patient_guid=guid, s3=config.s3)
    assert sorted(i["image_id"] for i in images) == sorted(
        e["image_id"] for e in clinic.expected if e["patient_guid"] == guid
    )
    # the run's artifact lists what was found, without the presigned URLs
    state = retrieve_patient_images(
        patient_guid=guid, s3=config.s3, presign_seconds=600, return_state=True
    )
    presigned = state.result()
    assert all("X-Amz-Signature" in i["url"] for i in presigned)
    # named by the patient it retrieved and when, not Prefect's random words
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    stamp = run.expected_start_time.astimezone(UTC).strftime("%Y-%m-%dT%H-%MZ")
    assert run.name == f"retrieve-{guid[:8]}-{stamp}"
    (artifact,) = [
        a
        for a in artifacts_of(state.state_details.flow_run_id)
        if a.key == "retrieve-patient-images"
    ]
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [(r["key"], r["image_id"], r["name"], r["size"]) for r in rows] == [
        (i["key"], i["image_id"], i["name"], i["size"]) for i in presigned
    ]
    assert all(r["last_modified"] for r in rows)
    assert "X-Amz-Signature" not in json.dumps(rows) and "http" not in json.dumps(rows)
    # the links are for the person who started the run, in an artifact of that run only
    (links,) = [a for a in artifacts_of(state.state_details.flow_run_id) if a.type == "markdown"]
    assert links.key is None and "valid until" in links.description
    for image in presigned:
        assert f"| {image['image_id']} | {image['name']} | [download]({image['url']}) |" in (
            links.data
        )
    plain = retrieve_patient_images(patient_guid=guid, s3=config.s3, return_state=True)
    assert not [
        a for a in artifacts_of(plain.state_details.flow_run_id) if a.type == "markdown"
    ]  # no presign asked, no links

    state = retrieve_patient_images(patient_guid="../x", s3=config.s3, return_state=True)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), InvalidRequestError)
    assert task_runs_of(state.state_details.flow_run_id) == []  # S3 was never listed
    state = retrieve_patient_images(
        patient_guid=guid, s3=config.s3, presign_seconds=8 * 86400, return_state=True
    )
    assert isinstance(state.result(raise_on_failure=False), InvalidRequestError)
