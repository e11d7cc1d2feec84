"""What Orthanc answers is checked before it is trusted (issue 33, docs/orthanc.md), against
a small local HTTP server answering as a broken or hostile Orthanc would: ids that are not
ids, unknown statuses, HTML where a PNG belongs, bodies of hundreds of MB, error texts that
echo the request's credentials."""

from __future__ import annotations

import base64

import boto3
import pytest
from moto import mock_aws

from pdata_sync.base.config import OrthancConfig, S3Config
from pdata_sync.base.errors import ConfigError, PermanentError, TransientError
from pdata_sync.orthanc.client import JSON_MAX, OrthancClient, OrthancRejected, insecure
from pdata_sync.pipeline.previews import FROM_LOCAL, write_previews
from tests.support.fake_orthanc import FakeOrthanc, json_answer

ID = "4a5b6c7d-8e9f0a1b-2c3d4e5f-6a7b8c9d-0e1f2a3b"
STORED = {
    "ID": ID,
    "ParentSeries": ID,
    "ParentStudy": ID,
    "ParentPatient": ID,
    "Status": "Success",
    "Path": f"/instances/{ID}",
}
CREDENTIALS = base64.b64encode(b"pdata:orthanc-password").decode()


def client_for(url: str, **settings) -> OrthancClient:
    cfg = OrthancConfig(url=url, username="pdata", max_attempts=1, **settings)
    return OrthancClient(cfg, "orthanc-password")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ID": None, "Status": "AlreadyStored"}, "no valid id (None)"),
        ({"ID": "../../system"}, "no valid id"),
        ({"ParentStudy": 42}, "no valid id (42)"),
        ({"Status": "Stored?"}, "unknown status ('Stored?')"),
        ({"Status": None}, "unknown status (None)"),
    ],
)
def test_a_store_answer_that_is_not_orthancs_is_refused(change, expected):
    with (
        FakeOrthanc(lambda m, p, h: json_answer(200, {**STORED, **change})) as fake,
        pytest.raises(PermanentError, match="POST /instances") as caught,
    ):
        client_for(fake.url).store(b"DICM")
    assert expected in str(caught.value)


def test_a_good_store_answer_is_taken():
    with FakeOrthanc(lambda m, p, h: json_answer(200, STORED)) as fake:
        answer = client_for(fake.url).store(b"DICM")
    assert answer.instance_id == ID and answer.status == "Success"


def test_a_huge_system_answer_is_not_read_whole():
    """200 MB of /system, sent without a Content-Length: the client stops after its limit
    (a few MB), the check refuses the server, and the worker never holds 200 MB."""

    def endless():
        for _ in range(200):
            yield b"x" * (1 << 20)

    with (
        FakeOrthanc(lambda m, p, h: (200, "application/json", endless())) as fake,
        pytest.raises(ConfigError, match="is this Orthanc"),
    ):
        client_for(fake.url).check()
    assert fake.sent["/system"] < JSON_MAX + (16 << 20)  # what the socket buffers held, at most


def test_a_declared_size_over_the_limit_is_refused_before_reading():
    with (
        FakeOrthanc(lambda m, p, h: (200, "application/json", b" " * (JSON_MAX + 1))) as fake,
        pytest.raises(PermanentError, match="bytes"),
    ):
        client_for(fake.url).find_instances("1.2.3")


def test_an_error_text_keeps_status_code_and_a_cleaned_message():
    echo = {
        "HttpStatus": 500,
        "OrthancError": "Internal error",
        "OrthancStatus": 1,
        "Details": f"proxy said Basic {CREDENTIALS}\nAuthorization: Basic {CREDENTIALS}\n",
    }
    with (
        FakeOrthanc(lambda m, p, h: json_answer(500, echo)) as fake,
        pytest.raises(TransientError) as caught,
    ):
        client_for(fake.url).store(b"DICM")
    text = str(caught.value)
    assert text.startswith(
        "POST /instances: Orthanc answered 500: Internal error (Orthanc error 1)"
    )
    assert CREDENTIALS not in text and "Authorization" not in text and "\n" not in text
    header_only = {"OrthancStatus": 2, "OrthancError": f"Authorization: Basic {CREDENTIALS}"}
    with (
        FakeOrthanc(lambda m, p, h: json_answer(400, header_only)) as fake,
        pytest.raises(OrthancRejected) as caught,
    ):
        client_for(fake.url).store(b"DICM")
    assert CREDENTIALS not in str(caught.value)
    page = f"<html><pre>GET / HTTP/1.1\nAuthorization: Basic {CREDENTIALS}</pre></html>"
    with (
        FakeOrthanc(lambda m, p, h: (503, "text/html", page.encode())) as fake,
        pytest.raises(TransientError) as caught,
    ):
        client_for(fake.url).store(b"DICM")
    assert CREDENTIALS not in str(caught.value) and "<html>" not in str(caught.value)


def test_find_answers_that_are_not_lists_of_ids_are_refused():
    for body in ({"a": 1}, ["not-an-id"], [ID, None]):
        with (
            FakeOrthanc(lambda m, p, h, body=body: json_answer(200, body)) as fake,
            pytest.raises(PermanentError, match="POST /tools/find"),
        ):
            client_for(fake.url).find_instances("1.2.3")


def test_an_html_preview_falls_back_to_the_local_renderer(aws_env, tmp_path, dicom_file):
    guid = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"

    def answer(method, path, headers):
        if path.endswith("/preview"):
            return 200, "text/html", b"<html>login</html>"
        return json_answer(200, STORED)

    with mock_aws(), FakeOrthanc(answer) as fake:
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="dental-images")
        s3.put_object(
            Bucket="dental-images", Key=f"images/{guid}/c_5_IO.dcm", Body=dicom_file.read_bytes()
        )
        (entry,) = write_previews(
            s3, S3Config(bucket="dental-images"), guid, tmp_path / "p", client_for(fake.url)
        )
        assert any(p.endswith("/preview") for _, p in fake.requests)
    assert entry["source"] == FROM_LOCAL
    assert "not a PNG (text/html)" in entry["fallback"]
    assert (tmp_path / "p" / "c_5_IO.png").read_bytes()[:4] == b"\x89PNG"


def test_a_png_type_with_other_bytes_is_not_a_png():
    with (
        FakeOrthanc(lambda m, p, h: (200, "image/png", b"<html>")) as fake,
        pytest.raises(PermanentError, match="not a PNG"),
    ):
        client_for(fake.url).preview(ID)


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({"url": "http://pacs.clinic.lan:8042", "username": "u"}, "plain http"),
        ({"url": "https://pacs.clinic.lan", "verify_tls": False}, "verify_tls is false"),
        ({"url": "http://127.0.0.1:8042", "username": "u"}, None),  # never leaves the host
        ({"url": "http://pacs.clinic.lan:8042"}, None),  # no password to expose
        ({"url": "https://pacs.clinic.lan", "username": "u"}, None),
    ],
)
def test_settings_that_expose_the_password_or_the_images_are_named(settings, warned):
    found = insecure(OrthancConfig(**settings))
    if warned is None:
        assert found == []
    else:
        assert len(found) == 1 and warned in found[0]
