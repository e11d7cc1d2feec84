"""Patient and media queries against a real SQLite database file with the Sidexis tables."""

import sqlite3
from pathlib import Path

import pytest

from pdata_sync.base.config import DatabaseConfig
from pdata_sync.base.errors import ConfigError
from pdata_sync.source.sidexis_db import (
    SKIP_PATIENT_DELETED,
    SKIP_PATIENT_NO_CARD_ID,
    SKIP_PATIENT_NOT_IN_DB,
    check_database,
    clean_card_id,
    fetch_media,
    fetch_media_by_patient,
    fetch_patients,
    make_engine,
)


@pytest.fixture
def db(tmp_path: Path) -> DatabaseConfig:
    path = tmp_path / "sidexis.db"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE Patient (PatientId INTEGER, CardId TEXT, IsDeleted BIT, LastName TEXT);
        CREATE TABLE MediaBase (MediaBaseId INTEGER, PatientId INTEGER, Name TEXT, IsDeleted BIT);
        INSERT INTO Patient VALUES (1, '  A-1  ', 0, 'Muster');
        INSERT INTO Patient VALUES (2, NULL, 0, 'x');
        INSERT INTO Patient VALUES (3, '', 0, 'x');
        INSERT INTO Patient VALUES (4, '   ', 0, 'x');
        INSERT INTO Patient VALUES (5, 'D-5', 1, 'x');
        INSERT INTO Patient VALUES (6, '000457', 0, 'x');
        INSERT INTO Patient VALUES (7, 'C-7', 0, 'x');
        INSERT INTO Patient VALUES (7, 'C-7b', 0, 'x');
        INSERT INTO Patient VALUES (7, 'C-7', 0, 'x');
        INSERT INTO Patient VALUES (7, 'OLD', 1, 'x');
        INSERT INTO Patient VALUES (8, 'E-8', NULL, 'x');
        INSERT INTO MediaBase VALUES (10, 1, 'OPG', 0);
        INSERT INTO MediaBase VALUES (11, 1, 'Bissflügel', 1);
        INSERT INTO MediaBase VALUES (12, 1, NULL, 0);
        """
    )
    con.commit()
    con.close()
    return DatabaseConfig(url=f"sqlite:///{path}", schema=None)


def test_card_ids_trimmed_and_bad_patients_skipped_with_reason(db):
    lookup = fetch_patients(make_engine(db), db, [1, 2, 3, 4, 5, 6, 7, 8, 99])
    assert lookup.card_ids == {1: ["A-1"], 6: ["000457"], 7: ["C-7", "C-7b"], 8: ["E-8"]}
    assert lookup.skipped == {
        2: SKIP_PATIENT_NO_CARD_ID,
        3: SKIP_PATIENT_NO_CARD_ID,
        4: SKIP_PATIENT_NO_CARD_ID,
        5: SKIP_PATIENT_DELETED,
        99: SKIP_PATIENT_NOT_IN_DB,
    }


@pytest.mark.parametrize(
    "raw, expected",
    [(None, None), ("", None), ("  \t ", None), (" 007 ", "007"), (457, "457"), ("A 1", "A 1")],
)
def test_clean_card_id(raw, expected):
    assert clean_card_id(raw) == expected


def test_media_names_and_deleted_flags(db):
    media = fetch_media(make_engine(db), db, [10, 11, 12, 13])
    assert media[10].name == "OPG" and not media[10].deleted
    assert media[11].deleted
    assert media[12].name is None
    assert 13 not in media
    assert media[10].patient_id == 1  # MediaBase.PatientId, for the folder check of the plan
    # without a patient column configured, nothing is read and nothing is checked
    without = fetch_media(
        make_engine(db), db.model_copy(update={"media_patient_column": None}), [10]
    )
    assert without[10].patient_id is None and without[10].name == "OPG"


def test_media_rows_by_patient_agree_with_the_rows_by_id(db):
    """What an incremental run compares per patient is what the plan reads per image."""
    engine = make_engine(db)
    with sqlite3.connect(db.url.removeprefix("sqlite:///")) as con:
        con.executescript(
            "INSERT INTO MediaBase VALUES (20, 7, 'PSA', 'true');"
            "INSERT INTO MediaBase VALUES (21, NULL, 'orphan', 0);"
            "INSERT INTO MediaBase VALUES (22, 9, 'not wanted', 0);"
        )
    by_patient = fetch_media_by_patient(engine, db, [1, 7, 8])
    by_id = fetch_media(engine, db, [10, 11, 12, 20, 21, 22])
    assert by_patient == {
        pid: [(i, by_id[i].name, by_id[i].deleted) for i in sorted(by_id)
              if by_id[i].patient_id == pid]
        for pid in (1, 7)
    }  # fmt: skip
    assert by_patient[7] == [(20, "PSA", True)]
    assert by_patient[1] == [(10, "OPG", False), (11, "Bissflügel", True), (12, None, False)]


def test_more_ids_than_sql_server_allows_in_one_statement(tmp_path: Path):
    path = tmp_path / "big.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE Patient (PatientId INTEGER, CardId TEXT, IsDeleted BIT)")
    con.executemany("INSERT INTO Patient VALUES (?,?,0)", [(i, f"C{i}") for i in range(1, 4501)])
    con.execute("CREATE TABLE MediaBase (MediaBaseId INTEGER, Name TEXT, IsDeleted BIT)")
    con.commit()
    con.close()
    cfg = DatabaseConfig(url=f"sqlite:///{path}", schema=None)
    engine = make_engine(cfg)
    statements = []
    from sqlalchemy import event

    event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cur, stmt, params, ctx, many: statements.append(len(params)),
    )
    lookup = fetch_patients(engine, cfg, range(1, 4501))
    assert len(lookup.card_ids) == 4500
    assert len(statements) == 3 and max(statements) <= 2000


def test_database_is_opened_read_only(db):
    engine = make_engine(db)
    with engine.connect() as conn, pytest.raises(Exception, match="readonly"):
        conn.exec_driver_sql("INSERT INTO Patient VALUES (100, 'X', 0, 'x')")


def test_missing_table_or_column_is_a_config_error_naming_it(db):
    check_database(make_engine(db), db)  # the good mapping passes
    bad_col = db.model_copy(update={"card_id_column": "ChartNo"})
    with pytest.raises(ConfigError, match=r"table Patient or one of its columns .*ChartNo"):
        check_database(make_engine(bad_col), bad_col)
    bad_table = db.model_copy(update={"media_table": "Media"})
    with pytest.raises(ConfigError, match="table Media "):
        check_database(make_engine(bad_table), bad_table)


def test_unreachable_database_is_a_config_error(tmp_path: Path):
    cfg = DatabaseConfig(url=f"sqlite:///{tmp_path / 'nope' / 'x.db'}", schema=None)
    with pytest.raises(ConfigError, match="cannot connect"):
        check_database(make_engine(cfg), cfg)
