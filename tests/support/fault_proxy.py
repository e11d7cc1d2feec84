"""A fault-injecting HTTP proxy on 127.0.0.1, for the fault-injection tests.

It sits between pdata-sync and a real server (S3 or the resolver), forwards requests
unchanged (the Host header too, so S3 signatures stay valid) and, when told to, breaks them:

* ``status`` - answer 500 (``InternalError``) or 503 (``SlowDown``) instead of forwarding
* ``reset-request`` - read part of the request body, then reset the connection
* ``reset-response`` - forward, then reset the connection halfway through the response body
* ``delay`` - hold the request longer than the client's timeout, then forward it
* ``corrupt-body`` - flip one byte in the middle of the request body, then forward it (the
  damage a bad NIC or middlebox does; the server must refuse it by its checksum)
* ``unchecked`` - answer a PUT as a server that does not check ``x-amz-checksum-sha256``
  would: 200 with the MD5 of the body received as its ETag (nothing is forwarded or stored)
* ``damaged-unchecked`` - the same for a body damaged in transit (one byte flipped first)
* ``malformed-json`` / ``wrong-content-type`` / ``partial-items`` - resolver answers that are
  broken JSON, not JSON, or missing half of their ``items``

A fault hits every ``every``-th request that ``match`` accepts (method and path), optionally
only ``limit`` times. One connection per request (``Connection: close``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

KINDS = {
    "status",
    "reset-request",
    "reset-response",
    "delay",
    "corrupt-body",
    "unchecked",
    "damaged-unchecked",
    "malformed-json",
    "wrong-content-type",
    "partial-items",
}


@dataclass
class Fault:
    kind: str
    every: int = 1
    status: int = 503
    delay: float = 5.0
    limit: int | None = None
    match: Callable[[str, str], bool] = lambda method, path: True
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")

    def hits(self, method: str, path: str) -> bool:
        if not self.match(method, path):
            return False
        self.seen += 1
        if self.limit is not None and self.fired >= self.limit:
            return False
        if self.seen % self.every:
            return False
        self.fired += 1
        return True


@dataclass
class ProxyState:
    fault: Fault | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    faults_fired: int = 0
    log: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of each request


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("client closed")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: what a broken network path looks like to the client."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _s3_error(status: int) -> bytes:
    code = {500: "InternalError", 503: "SlowDown"}.get(status, "ServiceUnavailable")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected fault</Message></Error>"
    ).encode()


class _Handler(socketserver.BaseRequestHandler):
    server: FaultProxy._Server

    def handle(self) -> None:  # noqa: C901 - one request, many faults
        proxy = self.server.proxy
        sock: socket.socket = self.request
        try:
            head, body = _read_head(sock)
        except (ConnectionError, OSError):
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        lower = {k.lower(): v for k, v in headers}
        length = int(lower.get("content-length", "0") or 0)
        if lower.get("expect", "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if proxy.on_request is not None:
            proxy.on_request(method, target)
        with proxy.state.lock:
            proxy.state.requests += 1
            proxy.state.log.append((method, target))
            fault = proxy.state.fault
            fire = fault is not None and fault.hits(method, target)
            if fire:
                proxy.state.faults_fired += 1
        kind = fault.kind if fire and fault else None

        if kind == "reset-request":
            if length > 1:
                while len(body) < length // 2:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            _reset(sock)
            return
        while len(body) < length:
            chunk = sock.recv(min(1 << 20, length - len(body)))
            if not chunk:
                return
            body += chunk
        if kind == "status":
            assert fault is not None
            payload = (
                _s3_error(fault.status)
                if proxy.flavour == "s3"
                else json.dumps(
                    {"error": {"code": "Unavailable", "message": "injected fault"}}
                ).encode()
            )
            ctype = "application/xml" if proxy.flavour == "s3" else "application/json"
            self._send(sock, fault.status, [("Content-Type", ctype)], payload)
            return
        if kind in ("unchecked", "damaged-unchecked"):
            if kind == "damaged-unchecked" and body:
                body = _flip_middle_byte(body)
            etag = hashlib.md5(body).hexdigest()
            self._send(sock, 200, [("ETag", f'"{etag}"')], b"")
            return
        if kind == "malformed-json":
            self._send(sock, 200, [("Content-Type", "application/json")], b'{"items": [')
            return
        if kind == "delay":
            assert fault is not None
            time.sleep(fault.delay)
        if kind == "corrupt-body" and body:
            body = _flip_middle_byte(body)

        try:
            status, reason, resp_headers, resp_body = self._forward(method, target, headers, body)
        except OSError:
            _reset(sock)
            return
        if kind == "wrong-content-type":
            resp_headers = [(k, v) for k, v in resp_headers if k.lower() != "content-type"]
            resp_headers.append(("Content-Type", "text/html; charset=utf-8"))
        if kind == "partial-items":
            try:
                doc = json.loads(resp_body)
                doc["items"] = doc.get("items", [])[: len(doc.get("items", [])) // 2]
                resp_body = json.dumps(doc).encode()
            except (ValueError, AttributeError):
                pass
        if kind == "reset-response":
            self._send(sock, status, resp_headers, resp_body, cut=True)
            return
        self._send(sock, status, resp_headers, resp_body, reason=reason)

    def _forward(self, method, target, headers, body):
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() in ("expect", "connection", "transfer-encoding"):
                    continue
                conn.putheader(name, value)
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            resp_body = resp.read()
            # A HEAD answer has no body but the object's Content-Length: keep it.
            dropped = ("transfer-encoding", "connection")
            if method != "HEAD":
                dropped += ("content-length",)
            resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in dropped]
            return resp.status, resp.reason, resp_headers, resp_body
        finally:
            conn.close()

    @staticmethod
    def _send(sock, status, headers, body, *, reason="", cut=False):
        lines = [f"HTTP/1.1 {status} {reason or http.client.responses.get(status, '')}"]
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers = [*headers, ("Content-Length", str(len(body)))]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if cut:
                sock.sendall(head + body[: max(1, len(body) // 2)])
                _reset(sock)
                return
            sock.sendall(head + body)
        except OSError:
            pass


def _flip_middle_byte(body: bytes) -> bytes:
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]


class FaultProxy:
    """``with FaultProxy("http://127.0.0.1:8333", flavour="s3") as proxy:`` -> ``proxy.url``;
    ``proxy.set(Fault(...))`` / ``proxy.clear()`` while it runs."""

    class _Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        proxy: FaultProxy

    def __init__(self, upstream: str, flavour: str = "s3"):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_path = parts.path
        self.flavour = flavour
        self.state = ProxyState()
        # called with (method, path) before each request is handled (e.g. to stop the server)
        self.on_request: Callable[[str, str], None] | None = None
        self._server = self._Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.upstream_path}"

    def set(self, fault: Fault | None) -> None:
        with self.state.lock:
            self.state.fault = fault

    def clear(self) -> None:
        self.set(None)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
