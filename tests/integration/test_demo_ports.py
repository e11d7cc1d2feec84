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


def test_s3_whose_port_was_taken_before_it_bound_starts_on_other_ports(tmp_path):
    """Ports are chosen free, then bound by weed a moment later; another server starting
    at that moment can take one (a whole suite worker once lost its S3 that way). The
    start tries again on new ports instead of failing."""
    from pdata_sync.demo.ports import free_port_pair
    from pdata_sync.demo.seaweed import SeaweedS3

    taken: set[int] = set()
    ports = {name: free_port_pair(taken) for name in SeaweedS3.PORTS}
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", ports["s3"]))
        thief.listen()
        with SeaweedS3(tmp_path / "s3", buckets=("a-bucket",), ports=ports) as s3:
            assert s3.port != ports["s3"]
            names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
            assert names == ["a-bucket"]
