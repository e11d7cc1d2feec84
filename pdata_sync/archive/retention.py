"""How long an image must be kept: the retention rule (docs/adr/0017-retention-rule.md).

In Germany (StrlSchG § 85), the records of an X-ray examination are kept 10 years after it
and, for a patient who was under 18 at the examination, until their 28th birthday. As a
rule of numbers: ``years`` after the examination and, for a patient who was a minor
(younger than ``adult_age``) at it, until the age ``minors_until_age``; the later of the
two. Another country's rule is other numbers (``minors_until_age`` None: no rule for
minors).

The dates come from the file's own header. The examination is StudyDate, else
AcquisitionDate, else ContentDate, else the day of the upload; the birth date is
PatientBirthDate. A date that cannot be one (not a real YYYYMMDD, before 1900, or an
examination after the upload) is not used. Without a usable birth date a patient may have
been a minor, so the image is kept as long as a newborn's would be: a longer lock is
lawful, a shorter one is not.

Pure: dates in, a date and where it came from out. The birth date is never returned, stored
or logged; only the date it leads to is. An Object Lock date can be extended, never
shortened, so every doubt lengthens the date, and nothing here can shorten it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

EARLIEST = date(1900, 1, 1)
FROM_STUDY, FROM_ACQUISITION, FROM_CONTENT, FROM_UPLOAD = (
    "StudyDate",
    "AcquisitionDate",
    "ContentDate",
    "the upload date",
)


@dataclass(frozen=True)
class RetentionRule:
    """A country's rule: ``years`` after the examination; for a patient younger than
    ``adult_age`` at it, at least until the age ``minors_until_age`` (None: no such rule)."""

    years: int = 10
    minors_until_age: int | None = 28
    adult_age: int = 18

    def __post_init__(self) -> None:
        if not 1 <= self.years <= 100:
            raise ValueError(f"retention of {self.years} years: must be 1 to 100")
        if self.minors_until_age is not None and not (
            self.adult_age <= self.minors_until_age <= 100
        ):
            raise ValueError("minors_until_age must be between adult_age and 100")


@dataclass(frozen=True)
class Retention:
    """Until when an image is kept, and why (no birth date in it, by design)."""

    until: date
    examined: date
    examined_from: str  # which header date gave the examination (or the upload date)
    minor: bool | None  # a minor at the examination; None: unknown (no usable birth date)

    def ended(self, today: date) -> bool:
        """The rule asks nothing more of this image: S3 takes no lock date in the past."""
        return self.until < today

    def note(self, today: date) -> str | None:
        """What a run should count and say about this image's date, or None (never the
        date itself: a minor's would tell the birth date)."""
        if self.ended(today):
            return "its retention period has ended: stored without a lock"
        if self.examined_from == FROM_UPLOAD:
            return "no usable examination date in the header: kept from the upload date"
        if self.minor is None:
            return "no usable birth date in the header: kept as long as for a minor"
        return None


def dicom_date(value: object) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date, or None when it is not a real one from 1900."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        parsed = date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return parsed if parsed >= EARLIEST else None


def years_after(day: date, years: int) -> date:
    """``day`` plus whole years; 29 February becomes 1 March (the later day)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February in a year that has none
        return date(day.year + years, 3, 1)


def retain_until(
    rule: RetentionRule,
    *,
    uploaded: date,
    study: object = None,
    acquisition: object = None,
    content: object = None,
    birth: object = None,
) -> Retention:
    """The date until which S3 must keep an image, from its header's dates (DICOM DA
    values, any of them absent or broken) and the day it was uploaded."""
    examined, source = uploaded, FROM_UPLOAD
    for value, name in ((study, FROM_STUDY), (acquisition, FROM_ACQUISITION),
                        (content, FROM_CONTENT)):  # fmt: skip
        day = dicom_date(value)
        if day is not None and day <= uploaded:  # no examination after its own upload
            examined, source = day, name
            break
    until = years_after(examined, rule.years)
    if rule.minors_until_age is None:
        return Retention(until, examined, source, None)
    born = dicom_date(birth)
    if born is None or born > examined:
        # unknown: the patient may have been a minor; a newborn's date is the latest
        return Retention(max(until, years_after(examined, rule.minors_until_age)), examined,
                         source, None)  # fmt: skip
    minor = examined < years_after(born, rule.adult_age)
    if minor:
        until = max(until, years_after(born, rule.minors_until_age))
    return Retention(until, examined, source, minor)


def rule_of(lock: Any) -> RetentionRule:
    """The rule of a clinic's ``s3.object_lock`` (pdata_sync.base.config.ObjectLockConfig)."""
    return RetentionRule(
        years=lock.years, minors_until_age=lock.minors_until_age, adult_age=lock.adult_age
    )


def of_header(rule: RetentionRule, dates: Any, uploaded: date) -> Retention:
    """:func:`retain_until` of a header's dates (pdata_sync.source.dicom_meta.HeaderDates)."""
    return retain_until(
        rule,
        uploaded=uploaded,
        study=dates.study,
        acquisition=dates.acquisition,
        content=dates.content,
        birth=dates.birth,
    )


def lock_params(mode: str, until: date) -> dict[str, Any]:
    """The S3 request parameters that lock a version in ``mode`` through the whole of
    ``until``: up to the start of the next day in UTC, which is past the end of ``until``
    anywhere west of UTC+24 (a day short would be unlawful, a day long is not)."""
    end = datetime.combine(until + timedelta(days=1), time(0), tzinfo=UTC)
    return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": end}


def locked_until(params: dict[str, Any] | None) -> date | None:
    """The day :func:`lock_params` locks through (None: no lock)."""
    if not params:
        return None
    return params["ObjectLockRetainUntilDate"].date() - timedelta(days=1)
