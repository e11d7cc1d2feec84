"""The demo's Orthanc keeps its port from one `make demo` to the next: the catalog knows an
Orthanc by its URL, so a new port made the second demo send every image again. (S3's
endpoint and `demo --shell`: tests/integration/test_viewer_browser.py.)"""

import socket

from pdata_sync.demo.ports import free_port


def test_a_port_left_in_time_wait_by_the_last_run_is_taken_again():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server's side closes first, as Orthanc's does at shutdown: TIME_WAIT
    client.close()
    server.close()
    assert free_port(port, reuse=True) == port  # as Orthanc binds it


def test_a_port_another_process_listens_on_is_not_taken():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        assert free_port(port, reuse=True) != port
    finally:
        server.close()
