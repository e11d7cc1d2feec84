"""The uploads' bandwidth through the CLI, with SeaweedFS behind a shaped link on
127.0.0.1 (20 ms round trip, 20 Mbit/s up, tests/kit/link.py) that records when each byte
went up: the cap is what the link sees, and a timetable that switches during a run
changes the rate there."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from tests.conftest import assert_exactly_expected
from tests.kit.link import ShapedLink, rate_mbit

LINK_MBIT = 20
SMALL_CLINIC = {"patients": 14, "scale": 0.6}  # 7.5 MB in 27 images: 15 s at 4 Mbit/s


def link_to(seaweed) -> ShapedLink:
    host, port = seaweed.endpoint.removeprefix("http://").rsplit(":", 1)
    return ShapedLink(host, int(port), rtt_ms=20, up_mbit=LINK_MBIT)


def busy_span(sent: list[tuple[float, int]]) -> tuple[float, float]:
    """From the first to the last chunk of the uploads (the bodies; small requests before
    and after them do not count)."""
    big = [at for at, n in sent if n >= 16 * 1024]
    return big[0], big[-1]


def test_a_cap_of_4_mbit_on_a_20_mbit_link_is_what_the_link_carries(make_site, seaweed):
    with link_to(seaweed) as link:
        site = make_site(endpoint=link.url, transfer={"max_upload_mbit": 4}, **SMALL_CLINIC)
        code, summary = site.sync()
        assert code == 0, summary
        assert summary["uploaded"] == len(site.clinic.expected)
        start, end = busy_span(link.sent)
        assert end - start >= 10, f"the uploads took {end - start:.1f} s: too few to measure"
        measured = rate_mbit(link.sent, start, end)
        print(f"cap 4 Mbit/s: {measured:.2f} Mbit/s over {end - start:.1f} s")
        assert abs(measured - 4) <= 0.4, f"{measured:.2f} Mbit/s at a cap of 4"
    assert_exactly_expected(site.client, site.clinic)


def test_a_timetable_that_switches_during_a_run_changes_the_rate(make_site, seaweed):
    """The run starts uncapped; at the next minute (clinic time) a window caps it at 4."""
    now = datetime.now(UTC)
    if now.second > 45:  # leave the run time to start before the switch
        time.sleep(61 - now.second)
        now = datetime.now(UTC)
    switch = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    window = {
        "from": f"{switch:%H:%M}",
        "to": f"{switch + timedelta(hours=1):%H:%M}",
        "max_upload_mbit": 4,
    }
    with link_to(seaweed) as link:
        site = make_site(
            endpoint=link.url,
            transfer={"bandwidth": [window], "upload_concurrency": 2},
            settings={"timezone": "UTC"},
            patients=20,
            scale=0.8,  # about 23 MB: 6 s at the link's speed leave 8 MB for the window
        )
        # before the switch the link is the limit; the run is still uploading after it
        delay = (switch - datetime.now(UTC)).total_seconds() - 9
        if delay > 0:
            time.sleep(delay)
        code, summary = site.sync()
        assert code == 0, summary
        at_switch = time.monotonic() - (datetime.now(UTC) - switch).total_seconds()
        start, end = busy_span(link.sent)
        assert start < at_switch - 5 and end > at_switch + 10, (start, at_switch, end)
        before = rate_mbit(link.sent, start + 1, at_switch - 1)
        after = rate_mbit(link.sent, at_switch + 2, end)
        print(f"before the window {before:.1f} Mbit/s, in it {after:.2f} Mbit/s")
        assert before > 12, f"{before:.1f} Mbit/s before the window"
        assert abs(after - 4) <= 0.4, f"{after:.2f} Mbit/s in the window capped at 4"
