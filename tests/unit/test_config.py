"""Config validation: a clear message naming the field, secrets refused in the file."""

from pathlib import Path

import pytest
import yaml

from pdata_sync.base.config import ClinicConfig, load_config, parse_config
from pdata_sync.base.errors import ConfigError

VALID = {
    "clinic_id": "clinic-001",
    "pdata_root": "/mnt/pdata",
    "database": {
        "url": "mssql+pyodbc://sidexis@sidexis-host/SIDEXIS?driver=ODBC+Driver+18+for+SQL+Server",
        "schema": "dbo",
        "patient_table": "Patient",
        "media_table": "MediaBase",
    },
    "resolver": {
        "url": "https://platform.example/api/app/patient-pms-resolver/resolve",
        "batch_size": 100,
    },
    "s3": {
        "bucket": "dental-images",
        "region": "eu-central-1",
        "endpoint_url": None,
        "key_template": "images/{patient_guid}/{clinic_id}_{image_id}_{name}.dcm",
    },
}


def with_change(path: str, value):
    data = yaml.safe_load(yaml.safe_dump(VALID))
    node = data
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return data


def test_issue_example_loads_from_yaml_with_defaults(tmp_path: Path):
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump(VALID))
    cfg = load_config(path)
    assert isinstance(cfg, ClinicConfig)
    assert cfg.database.db_schema == "dbo"
    assert cfg.database.card_id_column == "CardId"
    assert cfg.database.media_id_column == "MediaBaseId"
    assert cfg.resolver.verify_tls is True
    assert cfg.transfer.batch_size == 500


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("clinic_id", "clinic_001", "clinic_id"),
        ("clinic_id", KeyError, "clinic_id: is required"),
        ("s3.bucket", "Dental_Images", "s3.bucket"),
        ("s3.key_template", "patients/{patient_guid}/{image_id}.dcm", "s3.key_template"),
        ("s3.key_template", "images/{patient_guid}/{name}.dcm", "image_id"),
        ("s3.key_template", "images/{patient_guid}/{image_id}_{tenant}.dcm", "tenant"),
        ("s3.bucekt", "x", "s3.bucekt: is not a known setting"),
        ("resolver.url", "ftp://x", "resolver.url"),
        ("resolver.batch_size", 0, "resolver.batch_size"),
        ("database.url", "mssql+pyodbc://sa:hunter2@host/SIDEXIS", "database.url"),
        ("database.url", "not a url", "database.url"),
        ("database.card_id_column", "CardId; DROP TABLE x", "database.card_id_column"),
    ],
)
def test_invalid_config_names_the_field(path, value, message):
    with pytest.raises(ConfigError) as err:
        parse_config(with_change(path, value), source="clinic.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("clinic.yaml: ")
    assert "hunter2" not in str(err.value)


def test_unreadable_and_non_mapping_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("clinic_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_empty_schema_means_none():
    cfg = parse_config(with_change("database.schema", ""))
    assert cfg.database.db_schema is None


def test_password_in_database_url_is_refused_without_echoing_it():
    data = with_change("database.url", "mssql+pyodbc://sidexis:Hunter2-secret@host/SIDEXIS")
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "database.url" in str(err.value) and "password" in str(err.value)
    assert "Hunter2-secret" not in str(err.value)


def test_reprs_hold_no_secrets(monkeypatch):
    """The config has no secret fields (they live in blocks / the environment); the
    credential objects that do carry secrets mask them in repr."""
    from pdata_sync.archive.s3_client import AwsKeys

    monkeypatch.setenv("PDATA_SYNC_DB_PASSWORD", "Hunter2-secret")
    config = ClinicConfig.model_validate(VALID)
    assert not any(
        f == "password" or f == "secret_access_key" for f in type(config.database).model_fields
    )
    assert "Hunter2-secret" not in repr(config) + str(config.model_dump())
    keys = AwsKeys("AKIAEXAMPLE", "wJalrXUtnFEMI-secret", "token-secret")
    assert "secret" not in repr(keys) and "AKIAEXAMPLE" not in repr(keys)
    assert "secret" not in str(keys)


def test_presign_defaults_to_one_hour_and_refuses_more_than_seven_days():
    from pdata_sync.archive.retrieval import validate_expiry
    from pdata_sync.base.errors import InvalidRequestError
    from pdata_sync.cli import build_parser

    base = ["retrieve", "--config", "c.yaml", "--patient-guid", "g"]
    assert build_parser().parse_args([*base, "--presign"]).presign == 3600
    assert build_parser().parse_args(base).presign is None
    validate_expiry(7 * 24 * 3600)
    for bad in (0, -1, 7 * 24 * 3600 + 1):
        with pytest.raises(InvalidRequestError, match="presign"):
            validate_expiry(bad)


def test_catalog_url_refuses_a_password_and_other_databases():
    data = with_change("catalog", {"url": "postgresql+psycopg://cat:Hunter2-secret@h/db"})
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "catalog.url" in str(err.value) and "PDATA_SYNC_CATALOG_PASSWORD" in str(err.value)
    assert "Hunter2-secret" not in str(err.value)
    with pytest.raises(ConfigError, match="SQLite or PostgreSQL"):
        parse_config(with_change("catalog", {"url": "mssql+pyodbc://u@h/db"}))
    assert parse_config(with_change("catalog", {"url": " "})).catalog.url is None


SECRET = "Zq8-s3cr3t-Val"


@pytest.mark.parametrize(
    "path, url",
    [
        ("database.url", f"mssql+pyodbc://sidexis@host/SIDEXIS?driver=X&password={SECRET}"),
        ("database.url", f"mssql+pyodbc://sidexis@host/SIDEXIS?PWD={SECRET}&driver=X"),
        (
            "database.url",
            "mssql+pyodbc://@/?odbc_connect=" + f"DRIVER%3DX%3BSERVER%3Dh%3BpWd%3D{SECRET}",
        ),
        ("database.url", f"mssql+pyodbc:///?odbc_connect=DRIVER=X;UID=u;Pwd={SECRET}"),
        ("resolver.url", f"https://svc:{SECRET}@platform.example/api/resolve"),
        ("resolver.url", f"https://{SECRET}@platform.example/api/resolve"),
        ("resolver.url", f"https://platform.example/api/resolve?api_key={SECRET}"),
        ("resolver.url", f"https://platform.example/api/resolve?Token={SECRET}"),
        ("s3.endpoint_url", f"http://key:{SECRET}@127.0.0.1:8333"),
        ("catalog.url", f"postgresql://pdata@db/catalog?password={SECRET}"),
    ],
)
def test_a_secret_in_any_url_is_refused_naming_the_field_not_the_secret(path, url):
    with pytest.raises(ConfigError) as err:
        parse_config(with_change(path, url), source="clinic.yaml")
    message = str(err.value)
    assert message.startswith(f"clinic.yaml: {path}: ") and "secret" in message.lower()
    assert SECRET not in message and SECRET.lower() not in message.lower()


def test_validation_errors_never_carry_the_input():
    """Prefect stores a flow's parameter validation error in the run's state: pydantic's
    own message must not echo the value either."""
    from pydantic import ValidationError

    data = with_change("database.url", f"mssql+pyodbc://sidexis@host/S?pwd={SECRET}")
    with pytest.raises(ValidationError) as err:
        ClinicConfig.model_validate(data)
    assert SECRET not in str(err.value)
    # what Prefect puts into the run's state: each error's location and message
    assert SECRET not in repr([(e["loc"], e["msg"]) for e in err.value.errors()])


@pytest.mark.parametrize(
    "template, why",
    [
        ("images/{patient_guid}/{image_id}_{name}.dcm", "{clinic_id}"),
        ("images/{patient_guid}/{clinic_id}_{image_id}_{name!r}.dcm", "conversion"),
        ("images/{patient_guid}/{clinic_id}_{image_id:>2000}.dcm", "format spec"),
        ("images/{patient_guid}/../{clinic_id}_{image_id}.dcm", ".."),
        ("images/{patient_guid}//{clinic_id}_{image_id}.dcm", "empty"),
        ("images/{patient_guid}/{clinic_id}/{image_id}/", "empty"),
        ("images/x{patient_guid}/{clinic_id}_{image_id}.dcm", "images/{patient_guid}/"),
        ("images/{patient_guid}/{clinic_id}_{image_id}_{patient_guid}.dcm", "once"),
    ],
)
def test_unsafe_key_templates_are_refused_naming_the_field(template, why):
    with pytest.raises(ConfigError) as err:
        parse_config(with_change("s3.key_template", template), source="clinic.yaml")
    assert str(err.value).startswith("clinic.yaml: s3.key_template: ")
    assert why in str(err.value)


def test_orthanc_section_is_optional_and_checked():
    assert parse_config(VALID).orthanc is None
    cfg = parse_config(
        with_change("orthanc", {"url": "https://pacs.example:8042/", "username": "sync"})
    )
    assert cfg.orthanc is not None
    assert cfg.orthanc.url == "https://pacs.example:8042"  # one form: the catalog keys by it
    assert (cfg.orthanc.verify_tls, cfg.orthanc.concurrency) == (True, 4)
    assert parse_config(with_change("orthanc", {"url": "http://h", "username": " "})).orthanc
    for url, message in (
        ("https://sync:hunter2@pacs.example", "contains a secret"),
        ("ftp://pacs.example", "http:// or https://"),
        ("https://pacs.example/?token=abc", "contains a secret"),
    ):
        with pytest.raises(ConfigError, match=f"orthanc.url: .*{message}") as err:
            parse_config(with_change("orthanc", {"url": url}))
        assert "hunter2" not in str(err.value) and "abc" not in str(err.value)
    with pytest.raises(ConfigError, match="orthanc.password_secret_block"):
        parse_config(with_change("orthanc", {"url": "http://h", "password_secret_block": "A B"}))
    with pytest.raises(ConfigError, match="orthanc.concurrency"):
        parse_config(with_change("orthanc", {"url": "http://h", "concurrency": 0}))
