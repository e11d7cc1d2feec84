"""The view server serves OHIF's files, its own app-config and one manifest, and nothing
else: no directory listings, nothing outside OHIF's folder, no manifest without its token,
no method but GET and HEAD. Real HTTP on 127.0.0.1 against a stand-in OHIF folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from pdata_sync.viewer.ohif import MARKER, OhifMissing, check_integrity, locate
from pdata_sync.viewer.server import APP_CONFIG, ManifestSource, ViewerServer, resolve_static


@pytest.fixture
def ohif(tmp_path: Path) -> Path:
    root = tmp_path / "ohif"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<html>OHIF</html>")
    (root / "app-config.js").write_text("window.config = {public: 'demo server'}")
    (root / "a.wasm").write_bytes(b"\0asm")
    (root / "assets" / "x.svg").write_text("<svg/>")
    (root / "sw.js").write_text("self.addEventListener('fetch', () => {})")
    (root / MARKER).write_text("test")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    return root


@pytest.fixture
def server(ohif: Path):
    builds = []

    def build():
        builds.append(1)
        return {"studies": [{"PatientID": "g", "n": len(builds)}]}

    source = ManifestSource(build, lifetime_seconds=3600)
    with ViewerServer(ohif, source, port=0) as srv:
        srv.builds = builds
        yield srv


def get(server: ViewerServer, path: str, method: str = "GET") -> httpx.Response:
    return httpx.request(method, server.origin + path, timeout=10)


def test_listens_on_loopback_only_and_prints_a_dicomjson_url(server):
    assert server.httpd.server_address[0] == "127.0.0.1"
    assert server.viewer_url.startswith(f"{server.origin}/viewer/dicomjson?url=http%3A%2F%2F")
    assert server.token in server.viewer_url


def test_serves_ohif_files_with_their_types(server):
    assert get(server, "/a.wasm").headers["content-type"] == "application/wasm"
    assert get(server, "/assets/x.svg").text == "<svg/>"
    index = get(server, "/viewer/dicomjson?url=x")  # OHIF's route: its index.html
    assert index.status_code == 200 and "OHIF" in index.text


def test_app_config_is_ours_with_only_the_dicomjson_source(server):
    response = get(server, "/app-config.js")
    assert response.text == APP_CONFIG and "demo server" not in response.text
    assert response.text.count("sourceName:") == 1 and "'dicomjson'" in response.text
    assert response.headers["cache-control"] == "no-store"


def test_manifest_only_under_its_token(server):
    response = get(server, server.manifest_path)
    assert response.status_code == 200 and response.json()["studies"][0]["PatientID"] == "g"
    assert response.headers["cache-control"] == "no-store"
    assert get(server, "/m/wrong-token/manifest.json").status_code == 404
    assert get(server, "/m/").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/assets/",  # a directory: no listing
        "/assets",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/link.txt",  # a symlink out of the folder
        "/missing.js",
        "/sw.js",  # no service worker caching behind our back
    ],
)
def test_nothing_else_is_served(server, path):
    response = get(server, path)
    assert response.status_code == 404 or "OHIF" in response.text, path
    assert "outside" not in response.text and "addEventListener" not in response.text


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",  # DNS rebinding: the attacker's name now resolving to 127.0.0.1
        "evil.example:{port}",
        "127.0.0.1.nip.io:{port}",
        "127.0.0.1:1",  # another port
        "localhost:{port}@evil.example",
        "",
    ],
)
def test_a_host_header_not_ours_gets_nothing(server, host):
    """A page of another origin that reaches the viewer through DNS rebinding sends its own
    host name: it gets neither the manifest (presigned URLs) nor OHIF (issue 33)."""
    headers = {"Host": host.format(port=server.port)}
    for path in (server.manifest_path, "/app-config.js", "/a.wasm"):
        response = httpx.get(server.origin + path, headers=headers, timeout=10)
        assert response.status_code == 421, (host, path)
        assert b"studies" not in response.content


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}"])
def test_our_own_host_names_are_served(server, host):
    headers = {"Host": host.format(port=server.port)}
    response = httpx.get(server.origin + server.manifest_path, headers=headers, timeout=10)
    assert response.status_code == 200 and "studies" in response.json()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(server, method):
    response = get(server, server.manifest_path, method)
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


def test_manifest_is_rebuilt_when_half_its_links_lifetime_has_passed(ohif):
    counter = iter(range(1, 10))
    source = ManifestSource(lambda: {"n": next(counter)}, 1)
    source.prime({"n": 0})
    assert json.loads(source.body()) == {"n": 0}
    source._built_at -= 2  # the links are now past half their 1 s lifetime
    assert json.loads(source.body()) == {"n": 1}


def test_resolve_static_never_leaves_the_folder(ohif):
    assert resolve_static(ohif, "/index.html") == (ohif / "index.html").resolve()
    for path in ("/", "/assets", "/../secret.txt", "/link.txt", "/a\\..\\b"):
        assert resolve_static(ohif, path) is None, path


def test_missing_install_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PDATA_SYNC_OHIF_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(OhifMissing, match="nowhere.*make setup"):
        locate()


def test_tarball_with_other_content_is_refused():
    with pytest.raises(ValueError, match="refusing to install"):
        check_integrity(b"not the OHIF tarball")
