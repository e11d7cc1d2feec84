"""A clinic's first sync uses the link, not the CPU: through the CLI, SeaweedFS behind a
shaped link on 127.0.0.1 (20 ms round trip, 40 Mbit/s up, tests/kit/link.py), a typical
dental mix with thumbnails on keeps the link busy, and a cap holds over every 10 s."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import assert_exactly_expected
from tests.kit.link import ShapedLink, bodies, busy, windows

LINK_MBIT = 40
# Intraoral images of 0.4-0.8 MB, panoramics of 3 MB and one CBCT export of 100 MB: about
# 140 MB, 28 s at 40 Mbit/s
DENTAL_MIX = {
    "patients": 12,
    "images_per_patient": (4, 7),
    "scale": 1.0,
    "large_files": 1,
    "large_mb": 100,
}
# about 25 MB without a CBCT: 20 s at 10 Mbit/s
SMALL_MIX = {"patients": 14, "images_per_patient": (4, 6), "scale": 1.0, "seed": 5}


def link_to(seaweed) -> ShapedLink:
    host, port = seaweed.endpoint.removeprefix("http://").rsplit(":", 1)
    return ShapedLink(host, int(port), rtt_ms=20, up_mbit=LINK_MBIT)


def test_a_dental_first_sync_with_thumbnails_keeps_the_link_busy(make_site, seaweed):
    with link_to(seaweed) as link:
        site = make_site(endpoint=link.url, **DENTAL_MIX)
        sizes = [
            Path(site.clinic.pdata_root, e["path"]).stat().st_size for e in site.clinic.expected
        ]
        assert max(sizes) > 100 * 1e6 and sum(s > 2e6 for s in sizes) >= 3, "not the mix"
        code, summary = site.sync()
        assert code == 0, summary
        assert summary["uploaded"] == len(site.clinic.expected)
        assert summary["thumbnails"]["made"] == len(site.clinic.expected) - 1  # not the CBCT
        used, span = busy(link.sent, LINK_MBIT)
        print(f"{sum(sizes) / 1e6:.0f} MB in {span:.1f} s: the link {used:.0%} busy")
        assert used >= 0.90, f"the link was {used:.0%} busy over {span:.1f} s"
    assert_exactly_expected(site.client, site.clinic)


def test_a_cap_of_10_mbit_holds_over_every_10_seconds(make_site, seaweed):
    with link_to(seaweed) as link:
        site = make_site(endpoint=link.url, transfer={"max_upload_mbit": 10}, **SMALL_MIX)
        code, summary = site.sync()
        assert code == 0, summary
        sent = bodies(link.sent)
        assert sent[-1][0] - sent[0][0] >= 15, "too few bytes to measure windows of 10 s"
        rates = windows(sent, 10.0)
        print(f"cap 10 Mbit/s: every 10 s between {min(rates):.2f} and {max(rates):.2f} Mbit/s")
        assert min(rates) >= 9.0 and max(rates) <= 11.0, (min(rates), max(rates))
    assert_exactly_expected(site.client, site.clinic)
