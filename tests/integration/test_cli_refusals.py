"""Refusals as an operator meets them, through the CLI: ``check-config`` refuses every unsafe
key template and every secret-bearing URL with exit 2 and one line naming the field (the
secret appears nowhere in the output); ``export --from-csv`` refuses an unreadable request
naming the line."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import run_cli
from tests.unit.test_config import VALID

SECRET = "Zq8-s3cr3t-Val"
CASES = [
    ("database.url", f"mssql+pyodbc://sidexis:{SECRET}@host/SIDEXIS"),
    ("database.url", f"mssql+pyodbc://sidexis@host/SIDEXIS?driver=X&pwd={SECRET}"),
    ("database.url", f"mssql+pyodbc:///?odbc_connect=DRIVER%3DX%3BUID%3Du%3BPWD%3D{SECRET}"),
    ("resolver.url", f"https://svc:{SECRET}@platform.example/api/resolve"),
    ("resolver.url", f"https://platform.example/api/resolve?token={SECRET}"),
    ("s3.endpoint_url", f"http://key:{SECRET}@127.0.0.1:8333"),
    ("catalog.url", f"postgresql://pdata:{SECRET}@db/catalog"),
    ("s3.key_template", "images/{patient_guid}/{image_id}_{name}.dcm"),
    ("s3.key_template", "images/{patient_guid}/{clinic_id}_{image_id}_{name!r}.dcm"),
    ("s3.key_template", "images/{patient_guid}/{clinic_id}_{image_id:>2000}.dcm"),
    ("s3.key_template", "images/{patient_guid}/../{clinic_id}_{image_id}.dcm"),
    # keys that do not parse back to one image: two images (of one clinic, or of two
    # clinics sharing the bucket) could get the same key
    ("s3.key_template", "images/{patient_guid}/{clinic_id}_{image_id}{name}.dcm"),
    ("s3.key_template", "images/{patient_guid}/{clinic_id}-{image_id}-{name}.dcm"),
    ("clinic_id", "clinic_001"),
    ("clinic_id", "clinic..001"),
]


def test_check_config_refuses_each_unsafe_setting_naming_the_field(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(VALID))
    assert run_cli(["check-config", "--config", str(good)], {}).returncode == 0
    for n, (path, value) in enumerate(CASES):
        data = copy.deepcopy(VALID)
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        config = tmp_path / f"bad-{n}.yaml"
        config.write_text(yaml.safe_dump(data))
        out = run_cli(["check-config", "--config", str(config)], {}, timeout=60)
        assert out.returncode == 2, (path, value, out.stdout, out.stderr)
        assert f"{path}: " in out.stderr, (path, out.stderr)
        assert SECRET not in out.stdout + out.stderr, (path, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_check_config_warns_of_orthanc_settings_that_expose_the_password(tmp_path):
    """Valid, but worth a warning: a password over plain http to another machine, or
    Orthanc's certificate not checked (issue 33)."""
    for orthanc, warned in (
        ({"url": "http://pacs.clinic.lan:8042", "username": "pdata"}, "is plain http"),
        ({"url": "https://pacs.clinic.lan", "verify_tls": False}, "verify_tls is false"),
        ({"url": "https://pacs.clinic.lan", "username": "pdata"}, None),
    ):
        config = tmp_path / "orthanc.yaml"
        config.write_text(yaml.safe_dump({**VALID, "orthanc": orthanc}))
        out = run_cli(["check-config", "--config", str(config)], {}, timeout=60)
        assert out.returncode == 0, out.stderr
        warnings = [line for line in out.stderr.splitlines() if "warning" in line]
        if warned is None:
            assert warnings == []
        else:
            assert len(warnings) == 1 and warned in warnings[0]


G1 = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # a field over the csv module's limit (128 KiB) on line 3
        (f"patient_guid\n{G1}\n{'x' * 200_000}\n".encode(), "line 3: not CSV (field larger"),
        # Latin-1 bytes on line 2
        (b"patient_guid,comment\n" + G1.encode() + b",M\xfcller\n", "line 2: not UTF-8 text"),
    ],
)
def test_an_unreadable_csv_request_is_refused_with_one_line(tmp_path, body, reason):
    """Through the CLI, as an operator runs it: exit 2, one line naming the file, the line
    and the reason; never a traceback (issue 33)."""
    config = tmp_path / "clinic.yaml"
    config.write_text(yaml.safe_dump({**VALID, "research": {"bucket": "research-exports"}}))
    request = tmp_path / "request.csv"
    request.write_bytes(body)
    out = run_cli(
        ["export", "--config", str(config), "--project", "p1", "--from-csv", str(request)],
        {},
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(f"pdata-sync: {request}, {reason}"), out.stderr
