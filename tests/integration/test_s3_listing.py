"""Listing many patients' prefixes as one walk of images/ (archive.listing.list_patients) against a
real SeaweedFS: the answer is exactly what one listing per patient gives, with far fewer
requests when the bucket is the clinic's, and never much more when other clinics' patients
crowd the range."""

from __future__ import annotations

import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import pytest

from pdata_sync.archive import listing, s3_client
from pdata_sync.archive.listing import list_patients, list_prefix
from pdata_sync.archive.s3_client import AwsKeys, make_client
from pdata_sync.base.config import S3Config
from pdata_sync.identity.keys import patient_prefix
from tests.kit.s3 import empty_bucket
from tests.support.fault_proxy import FaultProxy

BUCKET = "listing-test"


@pytest.fixture(scope="module")
def client(seaweed):
    client = seaweed.client()
    client.create_bucket(Bucket=BUCKET)
    yield client
    empty_bucket(client, BUCKET)


def guid(n: int, k: int = 0) -> str:
    """The n-th GUID in string order (k > 0: one between the n-th and the next)."""
    return str(uuid.UUID(int=n * 0x0123456789ABCDEF0123 + 7 + k, version=4))


def put_all(client, keys: list[str]) -> None:
    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))


@contextlib.contextmanager
def counted_lister(seaweed):
    """A client made as the product makes it, through a proxy that logs every request;
    yields it and the list of prefixes its ListObjectsV2 requests asked for (boto3's and
    obstore's alike)."""
    with FaultProxy(seaweed.endpoint) as proxy:
        cfg = S3Config(bucket=BUCKET, region="us-east-1", endpoint_url=proxy.url)
        lister = make_client(cfg, keys=AwsKeys(seaweed.access_key, seaweed.secret_key))
        calls: list[str] = []
        yield lister, calls
        for method, target in proxy.state.log:
            query = parse_qs(urlsplit(target).query)
            if method == "GET" and query.get("list-type") == ["2"]:
                calls.append(query.get("prefix", [""])[0])


def one_by_one(client, guids):
    return {g: list_prefix(client, BUCKET, patient_prefix(g)) for g in guids}


def test_many_patients_are_one_walk_with_the_same_answer(seaweed, client, monkeypatch):
    empty_bucket(client, BUCKET)
    ours = [guid(n) for n in range(20)]
    others = [guid(n) for n in range(100, 130)]  # interleaved in GUID order
    keys = [f"images/{g}/c-1_{i}_x.dcm" for g in ours[:-2] for i in range(3)]
    keys += [f"images/{g}/c-9_1_x.dcm" for g in others]
    keys += [f"images/{ours[0]}", f"thumbnails/{ours[0]}/a.jpg"]  # not in any patient prefix
    keys += [f"images/{ours[1]}/c-1_9_a b+c=\u00fc%20&.dcm"]  # listed byte for byte
    put_all(client, keys)
    monkeypatch.setattr(listing, "LIST_PAGE_KEYS", 25)  # a budget of 5 x 25 keys, 110 here

    with counted_lister(seaweed) as (lister, calls):
        listed = list_patients(lister, BUCKET, ours, workers=8)
    assert listed == one_by_one(client, ours)
    assert [len(listed[g]) for g in ours] == [3, 4] + [3] * 16 + [0, 0]  # two with nothing
    # one walk (110 keys: one page) and the smallest patient's own prefix, not 20 listings
    assert sorted(calls) == ["images/", patient_prefix(min(ours))]


def test_a_crowded_range_falls_back_to_listing_the_rest_one_by_one(seaweed, client, monkeypatch):
    empty_bucket(client, BUCKET)
    ours = [guid(n) for n in range(8)]
    # another clinic's patients, 30 between each two of ours
    others = [guid(n, k) for n in range(7) for k in range(1, 31)]
    keys = [f"images/{g}/c-1_1_x.dcm" for g in ours]
    keys += [f"images/{g}/c-9_{i}_x.dcm" for g in others for i in range(2)]
    put_all(client, keys)
    monkeypatch.setattr(listing, "LIST_PAGE_KEYS", 20)

    with counted_lister(seaweed) as (lister, calls):
        listed = list_patients(lister, BUCKET, ours, workers=8)
    assert listed == one_by_one(client, ours)
    walked = [c for c in calls if c == "images/"]
    # the walk stopped at its budget (one page's worth of keys per 4 patients, 2 x 20
    # here: obstore asks for 1,000 keys a page, so one request) and the patients it did
    # not reach were listed one by one
    assert len(walked) == 1
    assert len(calls) - len(walked) > 1
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

    assert s3_client.parse_s3_timestamp(text) == parse_timestamp(text)
