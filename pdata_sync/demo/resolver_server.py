"""A real HTTP server implementing the resolver API (docs/product-rules.md §5), for the demo and
tests: ``POST /api/app/patient-pms-resolver/resolve`` with
``{"clinicId", "cardIds"}`` -> ``{"items": [{"cardId", "patientGuid"}]}``.

It can be told to fail first (e.g. 503, then 429 with ``Retry-After``) to exercise the
client's retries. Binds to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RESOLVE_PATH = "/api/app/patient-pms-resolver/resolve"


class ResolverState:
    """Mapping and fault script shared by the handler threads."""

    def __init__(self, mapping: dict[str, dict[str, str]], fail_first: list[int] | None = None):
        self.mapping = mapping
        self.fail_first = list(fail_first or [])
        self.lock = threading.Lock()
        self.requests = 0
        self.statuses: list[int] = []
        self.card_ids_seen = 0


def _make_handler(state: ResolverState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "demo-resolver/1"

        def log_message(self, *args: Any) -> None:  # keep CardIds out of any log
            pass

        def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            # recorded before the answer goes: a client that has its answer may read it
            with state.lock:
                state.statuses.append(status)
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, **headers: str) -> None:
            self._send(
                status, {"error": {"code": code, "message": message, "details": None}}, headers
            )

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            with state.lock:
                state.requests += 1
                fault = state.fail_first.pop(0) if state.fail_first else None
            if self.path.split("?")[0] != RESOLVE_PATH:
                return self._error(404, "NotFound", "no such endpoint")
            if fault == 429:
                return self._error(429, "TooManyRequests", "slow down", **{"Retry-After": "1"})
            if fault is not None:
                return self._error(fault, "ServiceUnavailable", "try again later")
            try:
                body = json.loads(raw)
                clinic = body["clinicId"]
                cards = body["cardIds"]
                if not isinstance(clinic, str) or not isinstance(cards, list):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return self._error(400, "Validation", "expected {clinicId, cardIds[]}")
            known = state.mapping.get(clinic, {})
            with state.lock:
                state.card_ids_seen += len(cards)
            items = [{"cardId": c, "patientGuid": known[c]} for c in cards if c in known]
            return self._send(200, {"items": items})

    return Handler


class ResolverServer:
    """Context manager running the resolver on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        mapping: dict[str, dict[str, str]],
        *,
        port: int = 0,
        fail_first: list[int] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.state = ResolverState(mapping, fail_first)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self.state))
        self.scheme = "http"
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{self.scheme}://{host}:{port}{RESOLVE_PATH}"

    def __enter__(self) -> ResolverServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mapping", required=True, help="JSON {clinicId: {cardId: guid}}")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail-first", default="", help="statuses to answer first, e.g. 503,429")
    args = parser.parse_args(argv)
    mapping = json.loads(Path(args.mapping).read_text(encoding="utf-8"))
    faults = [int(s) for s in args.fail_first.split(",") if s.strip()]
    with ResolverServer(mapping, port=args.port, fail_first=faults) as server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
