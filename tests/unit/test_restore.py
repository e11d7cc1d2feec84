"""Where restore puts an object (pdata_sync.archive.restore): only a Sidexis path naming the
object's own image id is trusted from its metadata, and never a folder inside PDATA."""

from __future__ import annotations

import pytest

from pdata_sync.archive.restore import _cell, check_target, trusted_source_path
from pdata_sync.base.errors import ConfigError
from pdata_sync.identity.keys import encode_name_for_metadata


@pytest.mark.parametrize(
    ("value", "image_id", "expected"),
    [
        ("P_142/0000_1043.dcm", 1043, "P_142/0000_1043.dcm"),
        ("P_00000142/0000_001043.dcm", 1043, "P_00000142/0000_001043.dcm"),
        ("P_142/0000_1043.dcm", 1044, None),  # another image's path
        ("../P_142/0000_1043.dcm", 1043, None),
        ("/etc/P_142/0000_1043.dcm", 1043, None),
        ("P_142/../../0000_1043.dcm", 1043, None),
        ("P_142/sub/0000_1043.dcm", 1043, None),
        ("P_142\\0000_1043.dcm", 1043, None),
        ("P_142/0000_1043.dcm\n", 1043, None),
        ("", 1043, None),
        (None, 1043, None),
    ],
)
def test_only_a_sidexis_path_of_the_same_image_is_trusted(value, image_id, expected):
    encoded = None if value is None else encode_name_for_metadata(value) if value else ""
    assert trusted_source_path(encoded, image_id) == expected


def test_a_target_inside_pdata_is_refused_and_one_beside_it_is_not(tmp_path):
    pdata = tmp_path / "PDATA"
    pdata.mkdir()
    (tmp_path / "link").symlink_to(pdata)
    for inside in (pdata, pdata / "restored", tmp_path / "link" / "x"):
        with pytest.raises(ConfigError, match="inside pdata_root"):
            check_target(inside, pdata)
    assert check_target(tmp_path / "restored", pdata) == tmp_path / "restored"


def test_a_name_that_looks_like_a_formula_stays_text_in_the_csv():
    assert _cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and _cell("OPG 2024") == "OPG 2024"
