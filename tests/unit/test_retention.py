"""The retention rule (pdata_sync.archive.retention): how long the law keeps an X-ray, from
the file's own dates; every doubt lengthens the date, nothing shortens it."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

import pytest

from pdata_sync.archive.retention import (
    FROM_ACQUISITION,
    FROM_STUDY,
    FROM_UPLOAD,
    RetentionRule,
    dicom_date,
    lock_params,
    locked_until,
    retain_until,
    years_after,
)

GERMANY = RetentionRule()  # 10 years; minors until their 28th birthday
UPLOADED = date(2026, 12, 7)


def test_an_adult_is_kept_ten_years_after_the_examination():
    kept = retain_until(GERMANY, uploaded=UPLOADED, study="20200510", birth="19800101")
    assert (kept.until, kept.examined_from, kept.minor) == (date(2030, 5, 10), FROM_STUDY, False)
    assert kept.note(UPLOADED) is None


@pytest.mark.parametrize(
    "birth,until,minor",
    [
        ("20100301", date(2038, 3, 1), True),  # 10 at the examination: until 28
        ("20020511", date(2030, 5, 11), True),  # 18 the day after: until 28, the later
        ("20020510", date(2030, 5, 10), False),  # 18 that very day: an adult
        ("19930101", date(2030, 5, 10), False),
    ],
)
def test_a_minor_is_kept_until_their_28th_birthday_if_that_is_later(birth, until, minor):
    kept = retain_until(GERMANY, uploaded=UPLOADED, study="20200510", birth=birth)
    assert (kept.until, kept.minor) == (until, minor)


def test_the_examination_date_falls_back_through_the_header_then_to_the_upload():
    kept = retain_until(GERMANY, uploaded=UPLOADED, study="", acquisition="20190102")
    assert (kept.examined, kept.examined_from) == (date(2019, 1, 2), FROM_ACQUISITION)
    for broken in ("2019", "20190230", "18991231", "2019-01-02", "abcdefgh", None, 20190102.5):
        kept = retain_until(GERMANY, uploaded=UPLOADED, study=broken, birth="19800101")
        assert (kept.examined, kept.examined_from) == (UPLOADED, FROM_UPLOAD), broken
        assert "upload date" in (kept.note(UPLOADED) or "")
    # an examination after its own upload is a wrong clock, never a later lock of 80 years
    kept = retain_until(
        GERMANY, uploaded=UPLOADED, study="20990101", content="20240229", birth="19800101"
    )
    assert kept.examined == date(2024, 2, 29) and kept.until == date(2034, 3, 1)


def test_without_a_usable_birth_date_the_image_is_kept_as_for_a_newborn():
    for birth in (None, "", "20250101", "notadate"):  # absent, empty, after the examination
        kept = retain_until(GERMANY, uploaded=UPLOADED, study="20200510", birth=birth)
        assert kept.until == date(2048, 5, 10) and kept.minor is None, birth
        assert "birth date" in (kept.note(UPLOADED) or "")


def test_another_countrys_rule_is_other_numbers():
    austria_like = RetentionRule(years=30, minors_until_age=None)
    kept = retain_until(austria_like, uploaded=UPLOADED, study="20200510", birth="20150101")
    assert (kept.until, kept.minor) == (date(2050, 5, 10), None)
    with pytest.raises(ValueError):
        RetentionRule(years=0)
    with pytest.raises(ValueError):
        RetentionRule(minors_until_age=12)


def test_dates():
    assert dicom_date(" 20200229 ") == date(2020, 2, 29)
    assert years_after(date(2020, 2, 29), 1) == date(2021, 3, 1)
    assert years_after(date(2020, 2, 29), 4) == date(2024, 2, 29)


def test_the_date_is_never_shorter_than_the_law_asks():
    """20,000 random examinations, births (or none) and uploads, leap days among them."""
    rng = random.Random(35)
    first, span = date(1900, 1, 1).toordinal(), 47_000  # to 2028

    def day() -> date:
        return date.fromordinal(first + rng.randrange(span))

    for _ in range(20_000):
        examined, uploaded = day(), day()
        born = None if rng.random() < 0.2 else day()
        kept = retain_until(
            GERMANY,
            uploaded=uploaded,
            study=examined.strftime("%Y%m%d"),
            birth=born and born.strftime("%Y%m%d"),
        )
        assert kept.until >= years_after(kept.examined, 10)
        assert kept.examined <= uploaded
        if born is not None and born <= kept.examined < years_after(born, 18):
            assert kept.minor is True and kept.until >= years_after(born, 28)
        if kept.minor is None:  # unknown: as long as any patient examined that day could need
            assert kept.until >= years_after(kept.examined, 28)


def test_a_period_already_ended_is_said_without_its_date_and_is_not_lockable():
    kept = retain_until(GERMANY, uploaded=UPLOADED, study="20120105", birth="19700101")
    assert kept.until == date(2022, 1, 5) and kept.ended(UPLOADED)
    assert kept.note(UPLOADED) == "its retention period has ended: stored without a lock"
    live = retain_until(GERMANY, uploaded=UPLOADED, study="20200105", birth="19700101")
    assert not live.ended(UPLOADED) and live.note(UPLOADED) is None


def test_lock_params_cover_the_whole_last_day_and_read_back():
    params = lock_params("COMPLIANCE", date(2030, 6, 15))
    assert params["ObjectLockRetainUntilDate"] == datetime(2030, 6, 16, tzinfo=UTC)
    assert locked_until(params) == date(2030, 6, 15) and locked_until(None) is None
