"""A small HTTP server on 127.0.0.1 that answers as a broken or hostile Orthanc would, for
the tests of what pdata-sync trusts in Orthanc's answers (docs/orthanc.md).

Each answer is chosen by ``answer(method, path, headers)``, set by the test; it returns
``(status, content_type, body)``, where ``body`` may be bytes or an iterator of chunks
(sent without a Content-Length, so the client cannot know the size in advance).
``sent[path]`` counts the bytes of body the server managed to send before the client hung
up; ``requests`` lists (method, path).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, str, bytes | Iterator[bytes]]


def json_answer(status: int, document: Any) -> Answer:
    return status, "application/json", json.dumps(document).encode()


class FakeOrthanc:
    def __init__(self, answer: Callable[[str, str, dict[str, str]], Answer]):
        self.answer = answer
        self.sent: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                fake.requests.append((self.command, self.path))
                status, kind, body = fake.answer(self.command, self.path, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    fake.sent[self.path] = len(body)
                    return
                self.send_header("Connection", "close")  # the body ends when the socket does
                self.end_headers()
                self.close_connection = True
                sent = 0
                try:
                    for chunk in body:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        fake.sent[self.path] = sent
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what we want to see

            do_GET = do_POST = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOrthanc:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
