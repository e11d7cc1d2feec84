"""The resolver client against a real HTTP server on 127.0.0.1 (and a few malformed
answers through httpx's mock transport)."""

import time
from pathlib import Path

import httpx
import pytest

from pdata_sync.base.config import ResolverConfig
from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.identity.resolver import ResolutionCache, ResolverClient

G1 = "11111111-1111-4111-8111-111111111111"
G2 = "22222222-2222-4222-8222-222222222222"
NIL = "00000000-0000-0000-0000-000000000000"
MAPPING = {"clinic-001": {"A-1001": G1, "000457": G2}}


def client_for(url: str, **kw) -> ResolverClient:
    cfg = ResolverConfig(url=url, batch_size=kw.pop("batch_size", 100), max_attempts=4)
    return ResolverClient(cfg, "clinic-001", kw.pop("cache", None), initial_delay=0.01, **kw)


def test_resolves_in_batches_and_reports_unknown():
    with ResolverServer(MAPPING) as server, client_for(server.url, batch_size=2) as client:
        result = client.resolve(["A-1001", "000457", "UNKNOWN", "457"])
    assert result.mapping == {"A-1001": G1, "000457": G2}
    assert result.unknown == {"UNKNOWN", "457"}  # leading zeros matter
    assert result.failed == {}
    # two batches, then one more call to confirm the two unknown CardIds
    assert result.calls == 3 and server.state.requests == 3


def test_retries_503_then_429_honouring_retry_after():
    with ResolverServer(MAPPING, fail_first=[503, 429]) as server, client_for(server.url) as c:
        start = time.monotonic()
        result = c.resolve(["A-1001"])
        elapsed = time.monotonic() - start
    assert result.mapping == {"A-1001": G1}
    assert server.state.statuses == [503, 429, 200]
    assert elapsed >= 1.0  # the 429 said Retry-After: 1


def test_gives_up_after_max_attempts_and_reports_the_batch_failed():
    with ResolverServer(MAPPING, fail_first=[503] * 10) as server, client_for(server.url) as c:
        result = c.resolve(["A-1001", "000457"])
    assert result.mapping == {}
    assert set(result.failed) == {"A-1001", "000457"}
    assert "503" in result.failed["A-1001"] and "4 attempts" in result.failed["A-1001"]
    assert server.state.requests == 4


def test_other_4xx_is_permanent_for_that_batch_not_retried():
    server = ResolverServer(MAPPING)
    with server, client_for(server.url.replace("/resolve", "/wrong")) as c:
        result = c.resolve(["A-1001"])
    assert server.state.requests == 1
    assert "404" in result.failed["A-1001"]


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="{not json", headers={"content-type": "application/json"}),
        httpx.Response(200, text="<html>login</html>", headers={"content-type": "text/html"}),
        httpx.Response(200, json={"result": []}),
    ],
)
def test_malformed_answers_are_retried_then_reported(response):
    calls = []

    def handler(request):
        calls.append(request)
        return response

    with client_for("http://resolver.test/x", transport=httpx.MockTransport(handler)) as c:
        result = c.resolve(["A-1001"])
    assert len(calls) == 4
    assert "A-1001" in result.failed


def test_timeouts_are_transient():
    attempts = []

    def handler(request):
        attempts.append(1)
        if len(attempts) < 3:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(
            200, json={"items": [{"cardId": "A-1001", "patientGuid": G1.upper()}]}
        )

    with client_for("http://resolver.test/x", transport=httpx.MockTransport(handler)) as c:
        result = c.resolve(["A-1001"])
    assert result.mapping == {"A-1001": G1}  # upper-case GUIDs are normalised
    assert len(attempts) == 3


def test_resolver_faults_fail_the_card_id_and_are_never_unknown():
    """A null patientGuid means "not known"; a malformed one, the nil GUID (what an ABP
    backend serialises for "no value") or two different patientGuids for one CardId are the
    resolver's faults: that CardId's images must fail, never be pooled or skipped."""

    def handler(request):
        return httpx.Response(
            200,
            json={
                "items": [
                    {"cardId": "A", "patientGuid": None},
                    {"cardId": "B", "patientGuid": "../x"},
                    {"cardId": "C", "patientGuid": NIL},
                    {"cardId": "D", "patientGuid": G1},
                    {"cardId": "D", "patientGuid": G2},
                    {"cardId": "E", "patientGuid": G1},
                    {"cardId": "E", "patientGuid": G1.upper()},  # the same GUID twice: fine
                    {"cardId": "NOT-ASKED", "patientGuid": G1},
                ]
            },
        )

    with client_for("http://resolver.test/x", transport=httpx.MockTransport(handler)) as c:
        result = c.resolve(["A", "B", "C", "D", "E"])
    assert result.mapping == {"E": G1}
    assert result.unknown == {"A"}
    assert set(result.failed) == {"B", "C", "D"}
    assert "malformed patientGuid" in result.failed["B"]
    assert "nil patientGuid" in result.failed["C"]
    assert "2 different patientGuids" in result.failed["D"]
    for card, reason in result.failed.items():
        assert card not in reason.split()  # reasons never carry the CardId


def test_cached_resolutions_follow_the_same_rules(tmp_path: Path):
    path = tmp_path / "cache.json"
    cache = ResolutionCache(path, "clinic-001", 3600)
    cache.put("A", NIL)  # e.g. written by an older version
    cache.put("B", G1)
    cache.save()
    again = ResolutionCache(path, "clinic-001", 3600)
    assert again.get("A") is None and again.get("B") == G1


def test_cache_is_used_across_runs_and_holds_no_card_ids(tmp_path: Path):
    path = tmp_path / "cache.json"
    with ResolverServer(MAPPING) as server:
        with client_for(server.url, cache=ResolutionCache(path, "clinic-001", 3600)) as c:
            first = c.resolve(["A-1001", "UNKNOWN"])
        with client_for(server.url, cache=ResolutionCache(path, "clinic-001", 3600)) as c:
            second = c.resolve(["A-1001", "UNKNOWN"])
    assert first.mapping == second.mapping == {"A-1001": G1}
    assert second.from_cache == 1
    # A-1001 once (then cached); UNKNOWN asked and confirmed on each run (never cached)
    assert server.state.card_ids_seen == 5
    text = path.read_text()
    assert "A-1001" not in text and G1 in text


def test_expired_cache_entries_are_not_used(tmp_path: Path):
    path = tmp_path / "cache.json"
    cache = ResolutionCache(path, "clinic-001", ttl_seconds=-1)
    cache.put("A-1001", G1)
    cache.save()
    assert ResolutionCache(path, "clinic-001", 3600).get("A-1001") is None


def test_truncated_answer_is_recovered_by_asking_again():
    calls = []

    def handler(request):
        import json

        asked = json.loads(request.content)["cardIds"]
        calls.append(asked)
        known = {"A": G1, "B": G2}
        items = [{"cardId": c, "patientGuid": known[c]} for c in asked if c in known]
        if len(calls) == 1:
            items = items[:1]  # the first answer lost an item
        return httpx.Response(200, json={"items": items})

    with client_for("http://resolver.test/x", transport=httpx.MockTransport(handler)) as c:
        result = c.resolve(["A", "B", "C"])
    assert result.mapping == {"A": G1, "B": G2}
    assert result.unknown == {"C"}
    assert calls == [["A", "B", "C"], ["B", "C"]]


def test_a_full_run_asks_for_every_card_id_and_renews_the_cache(tmp_path: Path):
    """A CardId remapped on the platform is seen by a full run at once, and later runs do
    not fall back to the cached old patientGuid; a CardId now unknown loses its entry."""
    path = tmp_path / "cache.json"
    old = ResolutionCache(path, "clinic-001", 3600)
    old.put("A-1001", G2)  # what the platform said yesterday
    old.put("GONE", G1)
    old.save()
    with ResolverServer(MAPPING) as server:  # today: A-1001 -> G1, GONE unknown
        cache = ResolutionCache(path, "clinic-001", 3600)
        with client_for(server.url, cache=cache) as c:
            assert c.resolve(["A-1001"]).mapping == {"A-1001": G2}  # cached: not asked
            full = c.resolve(["A-1001", "GONE"], refresh=True)
    assert full.mapping == {"A-1001": G1} and full.unknown == {"GONE"} and full.from_cache == 0
    later = ResolutionCache(path, "clinic-001", 3600)
    assert later.get("A-1001") == G1 and later.get("GONE") is None
