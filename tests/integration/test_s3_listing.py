"""Listing many patients' prefixes as one walk of images/ (s3_store.list_patients) against a
real SeaweedFS: the answer is exactly what one listing per patient gives, with far fewer
requests when the bucket is the clinic's, and never much more when other clinics' patients
crowd the range."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from pdata_sync import s3_store
from pdata_sync.demo.seaweed import empty_bucket
from pdata_sync.keys import patient_prefix
from pdata_sync.s3_store import list_patients, list_prefix

BUCKET = "listing-test"


@pytest.fixture(scope="module")
def client(seaweed):
    client = seaweed.client()
    client.create_bucket(Bucket=BUCKET)
    yield client
    empty_bucket(client, BUCKET)


def guid(n: int) -> str:
    return str(uuid.UUID(int=n * 0x0123456789ABCDEF0123 + 7, version=4))


def put_all(client, keys: list[str]) -> None:
    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))


def counted(client) -> list[str]:
    """The ListObjectsV2 requests ``client`` sends from now on (their prefixes)."""
    calls: list[str] = []
    client.meta.events.register(
        "provide-client-params.s3.ListObjectsV2",
        lambda params, **_: calls.append(params.get("Prefix", "")),
    )
    return calls


def one_by_one(client, guids):
    return {g: list_prefix(client, BUCKET, patient_prefix(g)) for g in guids}


def test_many_patients_are_one_walk_with_the_same_answer(seaweed, client, monkeypatch):
    empty_bucket(client, BUCKET)
    ours = [guid(n) for n in range(20)]
    others = [guid(n) for n in range(100, 130)]  # interleaved in GUID order
    keys = [f"images/{g}/c-1_{i}_x.dcm" for g in ours[:-2] for i in range(3)]
    keys += [f"images/{g}/c-9_1_x.dcm" for g in others]
    keys += [f"images/{ours[0]}", f"thumbnails/{ours[0]}/a.jpg"]  # not in any patient prefix
    put_all(client, keys)
    monkeypatch.setattr(s3_store, "LIST_PAGE_KEYS", 25)  # pages: 4 of 25 keys for 110 keys

    lister = seaweed.client()
    calls = counted(lister)
    listed = list_patients(lister, BUCKET, ours, workers=8)
    assert listed == one_by_one(client, ours)
    assert [len(listed[g]) for g in ours] == [3] * 18 + [0, 0]  # two patients with nothing
    assert calls == ["images/"] * 4  # one walk (5 pages allowed), not 20 listings


def test_a_crowded_range_falls_back_to_listing_the_rest_one_by_one(seaweed, client, monkeypatch):
    empty_bucket(client, BUCKET)
    ours = [guid(n) for n in range(8)]
    others = [guid(n) for n in range(200, 400)]
    keys = [f"images/{g}/c-1_1_x.dcm" for g in ours]
    keys += [f"images/{g}/c-9_{i}_x.dcm" for g in others for i in range(2)]
    put_all(client, keys)
    monkeypatch.setattr(s3_store, "LIST_PAGE_KEYS", 20)

    lister = seaweed.client()
    calls = counted(lister)
    listed = list_patients(lister, BUCKET, ours, workers=8)
    assert listed == one_by_one(client, ours)
    walked = [c for c in calls if c == "images/"]
    assert len(walked) == 2  # the budget: one page per 4 patients
    assert len(calls) <= len(ours) + len(walked)  # at worst a quarter more requests


def test_a_failing_walk_leaves_each_patient_its_own_error(seaweed):
    guids = [guid(n) for n in range(10)]
    listed = list_patients(seaweed.client(), "no-such-bucket", guids, workers=4)
    assert set(listed) == set(guids)
    assert all("NoSuchBucket" in str(listed[g]) for g in guids)


def test_listing_timestamps_are_read_without_dateutil(client):
    """A listing's LastModified (one per key) is parsed by ``datetime.fromisoformat``, not
    botocore's dateutil parser (37 us each: most of a large walk's CPU), to the same
    instant the object's HEAD reports."""
    empty_bucket(client, BUCKET)
    key = f"images/{guid(1)}/c-1_1_x.dcm"
    put_all(client, [key])
    (listed,) = list_prefix(client, BUCKET, patient_prefix(guid(1))).values()
    head = client.head_object(Bucket=BUCKET, Key=key)["LastModified"]
    assert listed.last_modified == head
    assert listed.last_modified.tzinfo is not None
    assert type(listed.last_modified.tzinfo).__module__ == "datetime"  # not dateutil's tzutc


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-02T18:00:00.000Z",
        "2026-12-02T18:00:00Z",
        "2026-12-02T18:00:00.123456Z",
        "2026-12-02T20:00:00+02:00",
        "Wed, 02 Dec 2026 18:00:00 GMT",
        "1733162400",
        "2026-12-02T18:00:00",
    ],
)
def test_timestamps_parse_as_botocore_does(text):
    from botocore.utils import parse_timestamp

    assert s3_store.parse_s3_timestamp(text) == parse_timestamp(text)
