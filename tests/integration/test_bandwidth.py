"""The uploads' bandwidth through the CLI, with SeaweedFS behind a shaped link on
127.0.0.1 (tests/kit/link.py) that records when each byte went up: a cap is what the link
sees, over any 10 s; a timetable that switches during a run changes the rate there; a
window that ends mid-backfill leaves nothing half-done; and a typical dental first sync with
thumbnails on keeps a 40 Mbit/s link busy. (One file: these tests mostly wait on the link
or the clock, so they share one test worker while the others use the CPU.)"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import assert_exactly_expected
from tests.kit.link import ShapedLink, bodies, busy, rate_mbit, windows

LINK_MBIT = 20
SMALL_CLINIC = {"patients": 14, "scale": 0.6}  # 7.5 MB in 27 images: 15 s at 4 Mbit/s


def link_to(seaweed) -> ShapedLink:
    host, port = seaweed.endpoint.removeprefix("http://").rsplit(":", 1)
    return ShapedLink(host, int(port), rtt_ms=20, up_mbit=LINK_MBIT)


def busy_span(sent: list[tuple[float, int]]) -> tuple[float, float]:
    """From the first to the last chunk of the uploads' bodies (tests/kit/link.py)."""
    span = bodies(sent)
    return span[0][0], span[-1][0]


def test_a_cap_of_4_mbit_on_a_20_mbit_link_is_what_the_link_carries(make_site, seaweed):
    with link_to(seaweed) as link:
        site = make_site(endpoint=link.url, transfer={"max_upload_mbit": 4}, **SMALL_CLINIC)
        code, summary = site.sync()
        assert code == 0, summary
        assert summary["uploaded"] == len(site.clinic.expected)
        start, end = busy_span(link.sent)
        assert end - start >= 10, f"the uploads took {end - start:.1f} s: too few to measure"
        measured = rate_mbit(link.sent, start, end)
        # and over any 10 s, not only on average: the panoramics (1.1 MB here, 2.2 s at the
        # cap) are paced as they are sent, not sent whole at the link's speed
        rates = windows(bodies(link.sent), 10.0)
        print(
            f"cap 4 Mbit/s: {measured:.2f} Mbit/s over {end - start:.1f} s; every 10 s "
            f"{min(rates):.2f}-{max(rates):.2f}"
        )
        assert abs(measured - 4) <= 0.4, f"{measured:.2f} Mbit/s at a cap of 4"
        assert min(rates) >= 3.6 and max(rates) <= 4.4, (min(rates), max(rates))
    assert_exactly_expected(site.client, site.clinic)


def test_a_timetable_that_switches_during_a_run_changes_the_rate(make_site, seaweed):
    """A window caps the run at 4 Mbit/s until the next minute (clinic time); from then on
    nothing caps it and the link is the limit. The run starts well before the switch (a busy
    machine starts it late), and at 4 Mbit/s it is still uploading when the switch comes."""
    with link_to(seaweed) as link:
        switch = wait_for_a_minute_to_begin_in(25)
        window = {
            "from": f"{switch - timedelta(hours=1):%H:%M}",
            "to": f"{switch:%H:%M}",
            "max_upload_mbit": 4,
        }
        site = make_site(
            endpoint=link.url,
            transfer={"bandwidth": [window], "upload_concurrency": 2},
            settings={"timezone": "UTC"},
            patients=20,
            scale=0.8,  # about 23 MB: 47 s at 4 Mbit/s, 9 s at the link's 20
        )
        code, summary = site.sync()
        assert code == 0, summary
        at_switch = time.monotonic() - (datetime.now(UTC) - switch).total_seconds()
        start, end = busy_span(link.sent)
        assert start < at_switch - 5 and end > at_switch + 3, (start, at_switch, end)
        before = rate_mbit(link.sent, start + 1, at_switch)
        after = rate_mbit(link.sent, at_switch + 1, end)
        print(f"in the window {before:.2f} Mbit/s, after it {after:.1f} Mbit/s")
        assert abs(before - 4) <= 0.4, f"{before:.2f} Mbit/s in the window capped at 4"
        assert after > 12, f"{after:.1f} Mbit/s after the window"
    assert_exactly_expected(site.client, site.clinic)


def wait_for_a_minute_to_begin_in(seconds: float) -> datetime:
    """Sleep until the next whole minute (UTC) is ``seconds`` away; returns that minute."""
    now = datetime.now(UTC)
    switch = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (switch - now).total_seconds() < seconds + 3:
        switch += timedelta(minutes=1)
    time.sleep(max(0.0, (switch - datetime.now(UTC)).total_seconds() - seconds))
    return switch


def backfill_artifacts(prefect_server, flow_run_id: str, clinic_id: str) -> tuple[list, float]:
    """The clinic's backfill table rows and progress value as this run left them."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with SyncPrefectClient(prefect_server.api_url) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_key = {a.key: a.data for a in found}
    table = by_key[f"backfill-nights-{clinic_id}"]
    return json.loads(table) if isinstance(table, str) else table, by_key[f"backfill-{clinic_id}"]


def test_a_window_that_ends_mid_backfill_completes_and_the_next_run_goes_on(
    make_site, seaweed, prefect_server
):
    """Past stop_at a run starts no upload, finishes those in flight, reports what is left
    and ends Completed (exit 0), with no multipart upload open and no catalog row claiming
    what S3 lacks; the next run leaves the bucket as one whole run would."""
    import sqlalchemy as sa

    with link_to(seaweed) as link:
        # the run must start before stop_at (one that starts after it runs until the next
        # day's; a busy machine starts it late), and be uploading when it comes: 47 s of
        # uploads at 4 Mbit/s
        switch = wait_for_a_minute_to_begin_in(25)
        site = make_site(
            endpoint=link.url,
            transfer={"max_upload_mbit": 4, "stop_at": f"{switch:%H:%M}", "batch_size": 10},
            settings={"timezone": "UTC"},
            patients=20,
            scale=0.8,
        )
        code, first = site.sync()
        assert code == 0, first
        left = first["left"]["images"]
        assert 0 < left < len(site.clinic.expected), first["left"]
        assert first["left"]["bytes"] > 0
        assert first["window_ended"].startswith(f"stopped at the end of its window: {left} ")
        assert first["failed"] == []
        # where the backfill stands: what is left, the rate achieved, the runs still needed
        assert first["backlog"] == {"images": left, "bytes": first["left"]["bytes"]}
        assert 3.2 <= first["rate"]["mbit_per_s"] <= 4.4, first["rate"]
        assert first["runs_left"] >= 1
        client = site.client
        assert client.list_multipart_uploads(Bucket="dental-images").get("Uploads", []) == []
        engine = sa.create_engine(f"sqlite:///{site.tmp_path / 'state' / 'catalog.sqlite'}")
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT key, state, etag FROM images")).all()
        engine.dispose()
        stored = {
            o["Key"]: o["ETag"].strip('"')
            for o in client.list_objects_v2(Bucket="dental-images").get("Contents", [])
        }
        for key, state, etag in rows:
            assert state in ("verified", "accepted", "retired") or key not in stored, state
            if state == "verified":
                assert stored.get(key) == etag, f"{key} recorded verified, S3 holds no such"
        assert not [r for r in rows if r.state == "pending"]
        # the backfill artifacts: this night's row, the share archived so far
        verified = sum(1 for r in rows if r.state == "verified")
        assert first["archived"]["images"] == verified
        nights, share = backfill_artifacts(
            prefect_server, first["flow_run_id"], site.clinic.clinic_id
        )
        # (the session's Prefect server may hold rows of an earlier clinic of the same id)
        last = nights[-1]
        assert (last["outcome"], last["left"], last["archived"]) == ("window ended", left, verified)
        assert last["nights left"] == first["runs_left"]
        first_nights = nights
        assert 0 < share < 100 and share == first["archived"]["percent"]

        # the next run, without the cap or the window (the night after, at full speed)
        code, second = site.sync(
            config=site.variant("next-night", transfer={"max_upload_mbit": None, "stop_at": None})
        )
        assert code == 0 and second["window_ended"] == "", second
        assert second["uploaded"] == left
        assert second["backlog"] == {"images": 0, "bytes": 0} and second["runs_left"] == 0
        # the table grew by the second night; the progress reads 100 %
        nights, share = backfill_artifacts(
            prefect_server, second["flow_run_id"], site.clinic.clinic_id
        )
        assert nights[:-1] == first_nights[-119:]  # one row more, the earlier ones kept
        assert (nights[-1]["outcome"], nights[-1]["left"]) == ("complete", 0)
        assert nights[-1]["archived"] == second["archived"]["images"] == len(stored_after(site))
        assert share == 100
    assert_exactly_expected(site.client, site.clinic)


def stored_after(site) -> list[str]:
    """The image keys in the bucket."""
    listed = site.client.list_objects_v2(Bucket="dental-images", Prefix="images/")
    return [o["Key"] for o in listed.get("Contents", [])]


UPLINK_MBIT = 40
# Intraoral images of 0.4-0.8 MB, three panoramics of 3 MB and one CBCT export of 100 MB:
# 25 images, 125 MB, 25 s at 40 Mbit/s
DENTAL_MIX = {
    "patients": 9,
    "images_per_patient": (4, 7),
    "scale": 1.0,
    "large_files": 1,
    "large_mb": 100,
}


def uplink_to(seaweed) -> ShapedLink:
    host, port = seaweed.endpoint.removeprefix("http://").rsplit(":", 1)
    return ShapedLink(host, int(port), rtt_ms=20, up_mbit=UPLINK_MBIT)


def test_a_dental_first_sync_with_thumbnails_keeps_the_link_busy(make_site, seaweed):
    with uplink_to(seaweed) as link:
        site = make_site(endpoint=link.url, **DENTAL_MIX)
        sizes = [
            Path(site.clinic.pdata_root, e["path"]).stat().st_size for e in site.clinic.expected
        ]
        assert max(sizes) > 100 * 1e6 and sum(s > 2e6 for s in sizes) >= 3, "not the mix"
        code, summary = site.sync()
        assert code == 0, summary
        assert summary["uploaded"] == len(site.clinic.expected)
        assert summary["thumbnails"]["made"] == len(site.clinic.expected) - 1  # not the CBCT
        used, span = busy(link.sent, UPLINK_MBIT)
        print(f"{sum(sizes) / 1e6:.0f} MB in {span:.1f} s: the link {used:.0%} busy")
        assert used >= 0.90, f"the link was {used:.0%} busy over {span:.1f} s"
    assert_exactly_expected(site.client, site.clinic)
