"""The demo's servers keep their ports from one `make demo` to the next: the catalog knows
an Orthanc by its URL and S3 by its endpoint, so a new port made the second demo trust
nothing (and send every image to Orthanc again). And `demo --shell` keeps them up for
commands run by hand."""

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


def test_demo_shell_keeps_its_servers_up_for_commands_run_by_hand(tmp_path, prefect_server):
    """`pdata-sync demo --shell`: after the demo run the servers stay up, and the
    environment it wrote (owner-only, keys not printed) lets a person run `sync` by hand,
    which finds everything archived and vouched for; SIGTERM stops them all. (That a
    restarted demo comes back on the same endpoint is checked by the viewer test, which
    starts the demo twice.)"""
    import json
    import os
    import signal
    import stat
    import subprocess

    from pdata_sync.demo.run import SHELL_READY
    from tests.conftest import CLI, make_clinic, run_cli

    work = tmp_path / "demo"
    clinic = make_clinic(work / "clinic", clinic_id="demo-clinic", patients=9, large_files=0)
    clinic.save(work / "clinic" / "manifest.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(prefect_server.env())
    proc = subprocess.Popen(
        [CLI, "demo", "--shell", "--workdir", str(work)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = []
        for line in proc.stdout:
            printed.append(line)
            if line.strip() == SHELL_READY:
                break
        out = "".join(printed)
        assert SHELL_READY in out, out[-2000:] + proc.stderr.read()[-3000:]
        summary = json.loads(out.split("=== sync summary ===", 1)[1].split("\nsync took")[0])
        assert summary["uploaded"] > 0
        assert stat.S_IMODE((work / "servers.json").stat().st_mode) == 0o600
        shell_env = work / "shell.env"
        assert stat.S_IMODE(shell_env.stat().st_mode) == 0o600
        assert f"set -a; . {shell_env}; set +a" in out
        assert "AWS_SECRET_ACCESS_KEY" not in out  # the keys are in the file, not on screen
        values = dict(
            line.split("=", 1)
            for line in shell_env.read_text().splitlines()
            if line and not line.startswith("#")
        )
        by_hand = run_cli(
            ["sync", "--config", str(work / "clinic.yaml"), "--json"],
            {**env, **{k: v.strip("'") for k, v in values.items()}},
        )
        assert by_hand.returncode == 0, by_hand.stderr[-3000:]
        again = json.loads(by_hand.stdout)
        assert again["uploaded"] == 0
        assert again["unchanged_by_catalog"] == again["unchanged"] == summary["uploaded"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    leftovers = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
    assert leftovers.stdout.split() == [], "a demo server is still running"
