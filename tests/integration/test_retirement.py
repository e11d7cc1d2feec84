"""Retirement end to end (docs/adr/0007): ``pdata-sync sync`` as a subprocess against
SeaweedFS, the resolver and a Prefect server on 127.0.0.1. What no longer belongs leaves
``images/`` for ``retired/`` once its replacement is verified; a database that suddenly
returns no patients stops the run before anything is uploaded or retired."""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from pdata_sync.base.config import load_config
from pdata_sync.catalog import RETIRED, VERIFIED, Catalog, destination_of
from pdata_sync.identity.keys import parse_key
from pdata_sync.pipeline.retirement import MEDIA_DELETED, PATIENT_CHANGED, PATIENT_DELETED
from tests.conftest import BUCKET, run_cli, stored_objects


@pytest.fixture
def clinic_setup(site):
    # a small clinic: one patient is > 5 % of its objects
    site.config = site.variant("clinic-retire-half", retire_max_fraction=0.5)
    return (site.clinic, site.client, site.resolver, site.config, site.env, site.sync,
            site.tmp_path)  # fmt: skip


def rows_by_key(tmp_path: Path, config: Path) -> dict:
    cfg = load_config(config)
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}")
    try:
        images = catalog.images(cfg.clinic_id, destination_of(cfg.s3.endpoint_url, BUCKET))
        return {r.key: r for r in images.rows()}
    finally:
        catalog.close()


def test_a_remapped_patient_moves_and_the_old_guid_returns_nothing(clinic_setup):
    clinic, client, resolver, config, env, sync, tmp_path = clinic_setup
    assert sync()[0] == 0
    before = stored_objects(client)
    cards = resolver.state.mapping[clinic.clinic_id]
    # a CardId that alone names its patientGuid
    card, old = next(
        (c, g) for c, g in cards.items() if list(cards.values()).count(g) == 1
    )  # fmt: skip
    new = str(uuid.uuid4())
    cards[card] = new  # the platform merged or corrected the patient

    code, summary = sync()  # the cached answer still holds: nothing moves yet
    assert code == 0 and summary["retired"] == []
    code, summary = sync("--full")  # a full run asks the resolver again
    assert code == 0, summary["failed"]

    old_keys = sorted(k for k in before if k.split("/")[1] == old)
    assert old_keys and sorted(r["key"] for r in summary["retired"]) == old_keys
    assert {r["reason"] for r in summary["retired"]} == {PATIENT_CHANGED}
    after = stored_objects(client)
    assert not [k for k in after if k.split("/")[1] == old]  # gone from images/
    for key in old_keys:  # the same bytes under the new patientGuid, verified
        moved = key.replace(f"images/{old}/", f"images/{new}/")
        assert after[moved] == before[key]
        assert rows_by_key(tmp_path, config)[moved].state == VERIFIED
    retired = stored_objects(client, prefix=f"retired/{clinic.clinic_id}/")
    assert sorted(k.split("/", 3)[3] for k in retired) == old_keys
    for key, body in retired.items():
        original = key.split("/", 3)[3]
        assert body == before[original]
        meta = client.head_object(Bucket=BUCKET, Key=key)["Metadata"]
        assert meta["retired-reason"] == PATIENT_CHANGED and meta["retired-from"] == original
    rows = rows_by_key(tmp_path, config)
    assert all(rows[k].state == RETIRED for k in old_keys)

    listed = run_cli(["retrieve", "--config", str(config), "--patient-guid", old, "--json"], env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_deleted_media_rows_and_patients_retire_and_an_empty_patient_table_stops_the_run(
    clinic_setup,
):
    clinic, client, resolver, config, env, sync, tmp_path = clinic_setup
    assert sync()[0] == 0
    before = stored_objects(client)
    by_patient: dict[str, list[dict]] = {}
    for entry in clinic.expected:
        by_patient.setdefault(entry["path"].split("/")[0], []).append(entry)
    folders = sorted(by_patient, key=lambda f: len(by_patient[f]))
    media_gone = by_patient[folders[-1]][0]  # one image of a patient with several
    patient_gone = folders[0]
    # what a clinic does in Sidexis (this is the test's database, not one pdata-sync writes)
    with closing(sqlite3.connect(clinic.database_path)) as db:
        db.execute("UPDATE MediaBase SET IsDeleted = 1 WHERE MediaBaseId = ?",
                   (media_gone["image_id"],))  # fmt: skip
        db.execute("UPDATE Patient SET IsDeleted = 1 WHERE PatientId = ?",
                   (int(patient_gone.removeprefix("P_")),))  # fmt: skip
        db.commit()

    code, summary = sync()
    assert code == 0, summary["failed"]
    reasons = {r["path"]: r["reason"] for r in summary["retired"]}
    assert reasons[media_gone["path"]] == MEDIA_DELETED
    assert {reasons[e["path"]] for e in by_patient[patient_gone]} == {PATIENT_DELETED}
    gone = {r["key"] for r in summary["retired"]}
    assert set(stored_objects(client)) == set(before) - gone
    assert len(stored_objects(client, prefix="retired/")) == len(gone)

    # the database suddenly returns no patients: everything would "no longer belong"; the
    # run stops before any upload or retirement (product-rules §2.6)
    with closing(sqlite3.connect(clinic.database_path)) as db:
        db.execute("DELETE FROM Patient")
        db.commit()
    still = stored_objects(client)
    code, summary = sync()
    assert code == 1
    assert [f["path"] for f in summary["failed"]] == ["(database)"]
    images = len({parse_key(k)["image_id"] for k in still})  # an image may have two keys
    assert f"{images} archived image(s) no patient row in Patient" in summary["failed"][0]["reason"]
    assert summary["retired"] == [] and summary["to_retire"] == []
    assert stored_objects(client) == still  # nothing retired
    assert len(stored_objects(client, prefix="retired/")) == len(gone)
