"""What a research export request may be: refused before any work, naming what and where."""

from __future__ import annotations

import pytest

from pdata_sync.base.errors import ConfigError
from pdata_sync.research.export import (
    ExportOutcome,
    ExportReport,
    ExportRequest,
    read_request_csv,
    validate_project,
)

G1 = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"
G2 = "a1b2c3d4-0000-4000-8000-000000000001"


def test_a_csv_of_patients_and_studies(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(f"patient_guid,study_instance_uid\n{G1},\n,1.2.3.4\n{G2},1.2.3.5\n{G1},\n")
    request = read_request_csv(path)
    assert request.patient_guids == (G1, G2)
    assert request.study_uids == ("1.2.3.4", "1.2.3.5")


@pytest.mark.parametrize(
    "text, message",
    [
        ("name\nx\n", "needs a patient_guid or study_instance_uid column"),
        (f"patient_guid\n{G1}\nnot-a-guid\n", "r.csv, line 3: "),
        ("study_instance_uid\n1.2.x\n", "r.csv, line 2: '1.2.x' is not a StudyInstanceUID"),
        ("patient_guid\n", "names no patient and no study"),
    ],
)
def test_a_bad_csv_is_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_request_csv(path)


def test_project_slugs():
    assert validate_project("caries-2027") == "caries-2027"
    for bad in ("", "Caries", "a/b", "-x", "x" * 64, "a_b"):
        with pytest.raises(ConfigError, match="project"):
            validate_project(bad)
    with pytest.raises(ConfigError, match="names no patient"):
        ExportRequest()


def test_the_report_never_pairs_an_archive_key_with_a_pseudonym():
    report = ExportReport("p1")
    report.add(
        [
            ExportOutcome(
                f"images/{G1}/c_1_x.dcm",
                "exported",
                source="orthanc",
                export_key="research/p1/RPABC/2.25.1/2.25.2/2.25.3.dcm",
                pseudonym="RPABC",
                study_uid="2.25.1",
                series_uid="2.25.2",
                sop_uid="2.25.3",
            ),
            ExportOutcome(f"images/{G2}/c_2_x.dcm", "failed", reason="not in the archive"),
        ]
    )
    data = report.to_dict()
    assert data["exported_by_source"] == {"archive": 0, "orthanc": 1, "pdata": 0}
    assert "RPABC" not in str(data)  # the report: archive keys and counts
    manifest = report.manifest_csv().decode()
    assert "RPABC" in manifest and G1 not in manifest and G2 not in manifest
