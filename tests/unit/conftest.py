"""The unit tests test the core in this process: no server, no subprocess.

Starting either fails the test, so a server test cannot creep in here: those live in
tests/integration (marked ``integration``) and tests/flows. moto's in-process S3 is allowed.
"""

import socket
import subprocess

import pytest


@pytest.fixture(autouse=True)
def _no_servers_no_processes(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a unit test starts no process and no server: tests/integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(socket.socket, "listen", refuse)
