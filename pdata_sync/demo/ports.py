"""Ports on 127.0.0.1 for the servers the demo (and the tests) start."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Any


def port_is_free(port: int, reuse: bool = False) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now. ``reuse``: as a server binding with
    SO_REUSEADDR would see it (a port its last run left in TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int = 0, reuse: bool = False) -> int:
    """``preferred`` if it is free on 127.0.0.1 (see :func:`port_is_free`), else one the
    system gives out. Free when asked: the caller's server binds it soon after."""
    if preferred and port_is_free(preferred, reuse):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def written_since(log: Path, offset: int) -> str:
    """What a server wrote to its (appended) log from ``offset`` on: this start's lines,
    to tell a port another process took from any other failure."""
    with open(log, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


GRPC_OFFSET = 10000  # weed listens on port + GRPC_OFFSET for gRPC


def free_port_pair(taken: set[int]) -> int:
    """A port p such that p and p + 10000 are free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or port in taken or port + GRPC_OFFSET in taken:
            port = 20000 + secrets.randbelow(25000)
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if port_is_free(port) and port_is_free(port + GRPC_OFFSET):
            taken.update({port, port + GRPC_OFFSET})
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


SERVERS_FILE = "servers.json"


def remembered(work: Path, names: tuple[str, ...], pairs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The demo's ports (``names``; those in ``pairs`` also need port + GRPC_OFFSET, SeaweedFS's
    gRPC) and S3 keys, kept in ``work/servers.json`` (0600) so that a restarted demo comes
    back on the same endpoints: the catalog knows S3 by its endpoint, and one that moved
    would make it trust nothing. A port another program holds now is replaced, and the
    file rewritten: the next run trusts less, once, rather than failing."""
    import json
    import os

    path = work / SERVERS_FILE
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        kept = {}
    if not isinstance(kept, dict):
        kept = {}
    ports = kept.get("ports") if isinstance(kept.get("ports"), dict) else {}
    chosen: dict[str, int] = {}
    taken: set[int] = set()
    for name in names:
        port = ports.get(name)
        needs = (port, port + GRPC_OFFSET) if name in pairs and isinstance(port, int) else (port,)
        usable = isinstance(port, int) and all(
            1024 < p < 65536 and p not in taken and port_is_free(p, True) for p in needs
        )
        if not usable:
            port = free_port_pair(taken) if name in pairs else free_port()
        chosen[name] = port
        taken.update({port, port + GRPC_OFFSET} if name in pairs else {port})
    keys = kept.get("s3_keys")
    if not (isinstance(keys, list) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        keys = ["PDS" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)]
    state = {"ports": chosen, "s3_keys": keys}
    if state != kept:
        work.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
    return state
