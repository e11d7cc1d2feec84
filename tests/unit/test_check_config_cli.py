"""``pdata-sync check-config`` as an operator runs it: every unsafe key template and every
secret-bearing URL is refused with exit 2 and one line naming the field, and the secret
appears nowhere in the output."""

from __future__ import annotations

import copy

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
