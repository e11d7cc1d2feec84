"""Fixtures shared by the unit tests."""

import random
from pathlib import Path

import pytest

from pdata_sync.demo.generate import write_dicom


@pytest.fixture
def dicom_file(tmp_path: Path) -> Path:
    path = tmp_path / "0000_5.dcm"
    write_dicom(
        path,
        rng=random.Random(1),
        clinic_id="c",
        patient_id=1,
        patient_name="A^B",
        birth_date="19700101",
        image_id=5,
        modality="IO",
        rows=16,
        cols=16,
    )
    return path
