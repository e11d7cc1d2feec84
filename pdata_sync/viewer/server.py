"""``pdata-sync view``: OHIF and one patient's manifest, served on 127.0.0.1 only
(docs/viewer.md).

The server answers exactly three kinds of request: OHIF's own files (from the pinned,
installed ``@ohif/app`` build; no directory listings, nothing outside that folder), the
``app-config.js`` written here (one data source: ``dicomjson``), and the patient's manifest
under a random path printed once. Paths of OHIF's single-page routes (``/viewer/...``: any
path whose last segment has no dot) get ``index.html``. Everything else is 404; every
method but GET and HEAD is 405. The images
themselves come straight from S3 by presigned URL: the bucket must allow GET from the
viewer's origin (CORS, docs/viewer.md), which :func:`cors_allows` checks before serving.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import secrets
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 8765

# Only the dicomjson data source: the viewer reads the manifest it is given and nothing
# else (OHIF's default build points at a public demo server; that is replaced, not added to).
APP_CONFIG = """window.config = {
  name: 'pdata-sync',
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: false,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'dicomjson',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomjson',
      sourceName: 'dicomjson',
      configuration: { friendlyName: 'pdata-sync archive (S3)', name: 'json' },
    },
  ],
};
"""

_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".map": "application/json",
    ".onnx": "application/octet-stream",
}


def content_type(path: Path) -> str:
    return _TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


def resolve_static(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` that ``url_path`` names, or None: never a directory, never
    anything outside ``root`` (``..``, symlinks out, encoded slashes)."""
    parts = [p for p in unquote(url_path).split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\0" in p for p in parts):
        return None
    if not parts:
        return None
    candidate = root.joinpath(*parts)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_file() or not resolved.is_relative_to(root.resolve()):
        return None
    return resolved


class ManifestSource:
    """The patient's manifest, rebuilt when half its URLs' lifetime has passed."""

    def __init__(self, build: Callable[[], dict[str, Any]], lifetime_seconds: int):
        self._build = build
        self._refresh_after = max(1.0, lifetime_seconds / 2)
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._built_at = 0.0

    def prime(self, manifest: dict[str, Any]) -> None:
        with self._lock:
            self._body = json.dumps(manifest).encode()
            self._built_at = time.monotonic()

    def body(self) -> bytes:
        with self._lock:
            if self._body is None or time.monotonic() - self._built_at > self._refresh_after:
                self._body = json.dumps(self._build()).encode()
                self._built_at = time.monotonic()
            return self._body


class ViewerServer:
    """``with ViewerServer(ohif_dir, manifests, port) as server: server.viewer_url``."""

    def __init__(self, ohif_dir: Path, manifests: ManifestSource, port: int = DEFAULT_PORT):
        self.ohif_dir = ohif_dir
        self.manifests = manifests
        self.token = secrets.token_urlsafe(24)
        self.httpd = ThreadingHTTPServer((HOST, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    def host_allowed(self, host: str | None) -> bool:
        """True for the Host header a browser sends to this server: 127.0.0.1 or
        localhost, with the port it serves (or none)."""
        if not host:
            return False
        name, _, port = host.strip().lower().rpartition(":")
        if not name or not port.isdigit():  # no port given
            name, port = host.strip().lower(), str(self.port)
        return name in ("127.0.0.1", "localhost", "[::1]") and port == str(self.port)

    @property
    def manifest_path(self) -> str:
        return f"/m/{self.token}/manifest.json"

    @property
    def viewer_url(self) -> str:
        manifest_url = self.origin + self.manifest_path
        return f"{self.origin}/viewer/dicomjson?url={quote(manifest_url, safe='')}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "pdata-sync-viewer"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("viewer: " + format, *args)  # the manifest path stays out of logs

            def _send(self, status: int, body: bytes, ctype: str, *, cache: bool) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _not_found(self) -> None:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", cache=False)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if not server.host_allowed(self.headers.get("Host")):
                    # DNS rebinding: a page of another origin whose name now resolves to
                    # 127.0.0.1 sends its own host name; only ours are served
                    self._send(421, b"misdirected request\n", "text/plain", cache=False)
                    return
                path = urlsplit(self.path).path
                if path == server.manifest_path:
                    try:
                        body = server.manifests.body()
                    except Exception as exc:  # noqa: BLE001 - the browser gets a 502
                        log.error("viewer: the manifest could not be rebuilt: %s", exc)
                        self._send(502, b"manifest unavailable\n", "text/plain", cache=False)
                        return
                    self._send(200, body, "application/json", cache=False)
                    return
                if path == "/app-config.js":
                    self._send(200, APP_CONFIG.encode(), "text/javascript", cache=False)
                    return
                if path.startswith("/m/"):
                    self._not_found()  # a wrong token: no hint of what exists
                    return
                target = resolve_static(server.ohif_dir, path)
                if target is None:
                    if "." not in path.rsplit("/", 1)[-1]:
                        target = server.ohif_dir / "index.html"  # OHIF's own routes
                    else:
                        self._not_found()
                        return
                if target.name in ("sw.js", "init-service-worker.js"):
                    self._not_found()  # no service worker: nothing cached behind our back
                    return
                self._send(200, target.read_bytes(), content_type(target), cache=True)

            do_HEAD = do_GET  # noqa: N815

            def _refuse(self) -> None:
                self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
                self.send_header("Allow", "GET, HEAD")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

        return Handler

    def start(self) -> ViewerServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever() that runs
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def first_url(manifest: dict[str, Any]) -> str | None:
    for study in manifest.get("studies", []):
        for series in study.get("series", []):
            for instance in series.get("instances", []):
                return str(instance["url"]).removeprefix("dicomweb:")
    return None


def cors_allows(url: str, origin: str, timeout: float = 15.0) -> bool:
    """Whether S3 lets a page from ``origin`` read ``url`` (a presigned GET): the answer to
    a one-byte GET sent with that Origin must allow it, as a browser will require."""
    response = httpx.get(url, headers={"Origin": origin, "Range": "bytes=0-0"}, timeout=timeout)
    allowed = response.headers.get("Access-Control-Allow-Origin", "")
    return response.status_code in (200, 206) and allowed in ("*", origin)
