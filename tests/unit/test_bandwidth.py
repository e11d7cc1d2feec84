"""The uploads' bandwidth: a cap, a timetable in the clinic's time zone, and the throttle
that paces every upload of a process (pdata_sync.base.bandwidth), on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest
from pydantic import ValidationError

from pdata_sync.base.bandwidth import MBIT, Bandwidth, Throttle, Window
from pdata_sync.base.config import ClinicConfig, TransferConfig


class Clock:
    """Monotonic and wall time that move only when the throttle sleeps."""

    def __init__(self, wall: datetime) -> None:
        self.now = 0.0
        self.start = wall

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime:
        from datetime import timedelta

        return self.start + timedelta(seconds=self.now)

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def throttle(bandwidth: Bandwidth, clock: Clock) -> Throttle:
    return Throttle(bandwidth, monotonic=clock.monotonic, wall=clock.wall, sleep=clock.sleep)


def test_bodies_go_out_at_the_cap_whatever_their_sizes():
    clock = Clock(datetime(2026, 12, 7, 12, tzinfo=UTC))
    pace = throttle(Bandwidth(default_mbit=4), clock)
    sizes = [300_000, 2_000_000, 50_000, 8_000_000, 700_000] * 4
    for n in sizes:
        pace.take(n)
    # the last body starts once all before it have gone out at 4 Mbit/s
    assert clock.now == pytest.approx(sum(sizes[:-1]) / (4 * MBIT))


def test_no_cap_never_waits():
    clock = Clock(datetime(2026, 12, 7, 12, tzinfo=UTC))
    pace = throttle(Bandwidth(), clock)
    for _ in range(100):
        pace.take(10_000_000)
    assert clock.now == 0 and pace.taken == 1_000_000_000


def test_a_timetable_that_switches_during_a_run_changes_the_pace():
    # 06:59:50 in Berlin (UTC+1 in December): 10 s at no cap, then 4 Mbit/s from 07:00
    clock = Clock(datetime(2026, 12, 7, 5, 59, 50, tzinfo=UTC))
    day = Window(time(7), time(19), 4)
    pace = throttle(Bandwidth(None, (day,), "Europe/Berlin"), clock)
    pace.take(5_000_000)
    assert clock.now == 0  # before 07:00 clinic time: not capped
    clock.sleep(10)  # now 07:00:00 in Berlin
    for _ in range(3):
        pace.take(500_000)
    assert clock.now - 10 == pytest.approx(2 * 500_000 / (4 * MBIT))


def test_a_window_may_run_past_midnight_and_the_zone_is_the_clinics():
    night = Window(time(22), time(6), 40)
    bandwidth = Bandwidth(2, (night,), "Europe/Berlin")
    assert bandwidth.mbit_at(datetime(2026, 12, 7, 23, 30, tzinfo=UTC)) == 40  # 00:30 there
    assert bandwidth.mbit_at(datetime(2026, 12, 7, 4, 59, tzinfo=UTC)) == 40  # 05:59
    assert bandwidth.mbit_at(datetime(2026, 12, 7, 5, 0, tzinfo=UTC)) == 2  # 06:00: day cap
    assert bandwidth.mbit_at(datetime(2026, 7, 7, 20, 0, tzinfo=UTC)) == 40  # 22:00 in summer


def test_the_config_refuses_overlapping_windows_and_times_that_are_not_times():
    day = {"from": "07:00", "to": "19:00", "max_upload_mbit": 4}
    with pytest.raises(ValidationError, match="07:00-19:00 and 18:00-02:00 overlap"):
        TransferConfig.model_validate(
            {"bandwidth": [day, {"from": "18:00", "to": "02:00", "max_upload_mbit": 1}]}
        )
    for bad in ("7", "25:00", "07:00:00", "noon"):
        with pytest.raises(ValidationError, match="is not a time of day as HH:MM"):
            TransferConfig.model_validate({"bandwidth": [{**day, "from": bad}]})
    with pytest.raises(ValidationError, match="is empty"):
        TransferConfig.model_validate({"bandwidth": [{**day, "to": "07:00"}]})
    with pytest.raises(ValidationError):
        TransferConfig.model_validate({"max_upload_mbit": 0})
    transfer = TransferConfig.model_validate({"max_upload_mbit": 10, "bandwidth": [day]})
    assert transfer.uploads("Europe/Berlin") == Bandwidth(
        10, (Window(time(7), time(19), 4),), "Europe/Berlin"
    )
    assert not transfer.uncapped().uploads(None).capped


def test_the_clinics_time_zone_must_be_one():
    base = {
        "clinic_id": "c1",
        "pdata_root": "/srv/pdata",
        "database": {"url": "sqlite:////tmp/x.db", "schema": None},
        "resolver": {"url": "http://127.0.0.1:9/r"},
        "s3": {"bucket": "dental-images"},
    }
    assert ClinicConfig.model_validate({**base, "timezone": "Europe/Berlin"}).timezone
    with pytest.raises(ValidationError, match="is not a time zone name"):
        ClinicConfig.model_validate({**base, "timezone": "Mars/Olympus"})


def test_a_window_ends_at_the_first_stop_at_after_the_run_started():
    from pdata_sync.base.bandwidth import window_end

    # a nightly run from 19:00 Berlin stops at 06:30 there the next morning
    start = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)  # 19:00 in Berlin
    assert window_end(start, time(6, 30), "Europe/Berlin") == datetime(
        2026, 12, 8, 5, 30, tzinfo=UTC
    )
    # across the change to summer time, 06:30 is still 06:30 on the clinic's clock
    spring = datetime(2027, 3, 27, 18, 0, tzinfo=UTC)
    assert window_end(spring, time(6, 30), "Europe/Berlin") == datetime(
        2027, 3, 28, 4, 30, tzinfo=UTC
    )
    # a run that starts after stop_at runs until the next day's (the timetable caps its day)
    late = datetime(2026, 12, 8, 5, 31, tzinfo=UTC)
    assert window_end(late, time(6, 30), "Europe/Berlin") == datetime(
        2026, 12, 9, 5, 30, tzinfo=UTC
    )
    transfer = TransferConfig.model_validate({"stop_at": "6:30"})
    assert transfer.stop_at == "06:30"
    assert TransferConfig().deadline(start, None) is None
    with pytest.raises(ValidationError, match="is not a time of day as HH:MM"):
        TransferConfig.model_validate({"stop_at": "half past six"})


def test_a_paced_body_goes_out_chunk_by_chunk_at_the_cap_and_rewinds_for_a_retry():
    from pdata_sync.base.bandwidth import PACED_CHUNK, PacedBody

    clock = Clock(datetime(2026, 12, 7, 12, tzinfo=UTC))
    pace = throttle(Bandwidth(default_mbit=10), clock)
    data = bytes(range(256)) * 20_000  # 5.12 MB: 4.1 s at 10 Mbit/s
    body = PacedBody(data, pace)
    seen = b""
    while chunk := body.read(1 << 20):  # http.client asks for more: it gets one chunk
        assert len(chunk) <= PACED_CHUNK
        # each chunk leaves once the bytes before it have gone out at the cap: a steady
        # pace, not the whole body at the link's speed once its turn came
        assert clock.now == pytest.approx(len(seen) / (10 * MBIT))
        seen += chunk
    assert seen == data and len(data) // PACED_CHUNK >= 70
    body.seek(0)  # botocore rewinds the body to send it again
    assert body.tell() == 0 and body.read(10) == data[:10]


def test_only_bodies_longer_than_the_grain_at_the_cap_in_force_are_paced_as_they_go():
    clock = Clock(datetime(2026, 12, 7, 12, tzinfo=UTC))
    capped = throttle(Bandwidth(default_mbit=10), clock)  # 0.5 s at 10 Mbit/s: 625,000 bytes
    assert not capped.whole_body_too_coarse(600_000)
    assert capped.whole_body_too_coarse(700_000)
    assert not throttle(Bandwidth(), clock).whole_body_too_coarse(10**9)  # no cap: never
