"""Ports on 127.0.0.1 for the servers the demo (and the tests) start."""

from __future__ import annotations

import socket


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
