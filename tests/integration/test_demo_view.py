"""The README's first command ends with how to view a demo patient, and that instruction
works: ``pdata-sync demo`` prints the view command, ``pdata-sync demo --view`` starts the
demo's S3 again and serves OHIF with the patient's manifest, whose every image is
readable from the viewer's origin (CORS), until SIGTERM; nothing of it is left running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import CLI, make_clinic, run_cli


def test_demo_prints_the_view_command_and_demo_view_serves_the_patient(tmp_path, prefect_server):
    work = tmp_path / "demo"
    clinic = make_clinic(work / "clinic", clinic_id="demo-clinic", patients=9, large_files=0)
    clinic.save(work / "clinic" / "manifest.json")  # the demo reuses a generated clinic
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(prefect_server.env())
    demo = run_cli(["demo", "--workdir", str(work)], env)
    assert demo.returncode == 0, demo.stderr[-3000:]
    guid = clinic.expected[0]["patient_guid"]
    assert f".venv/bin/pdata-sync demo --view --workdir {work}" in demo.stdout
    assert re.search(
        rf"pdata-sync view --config {re.escape(str(work))}/clinic.yaml "
        rf"--patient-guid {guid} --port 8765",
        demo.stdout,
    )

    proc = subprocess.Popen(
        [CLI, "demo", "--view", "--workdir", str(work), "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url or proc.stderr.read()[-3000:]
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        manifest_url = parse_qs(urlsplit(url).query)["url"][0]
        manifest = httpx.get(manifest_url, timeout=30).json()
        instances = [
            i for st in manifest["studies"] for se in st["series"] for i in se["instances"]
        ]
        mine = [e for e in clinic.expected if e["patient_guid"] == guid]
        assert len(instances) == len(mine)
        for instance in instances:
            image = httpx.get(
                instance["url"].removeprefix("dicomweb:"), headers={"Origin": origin}, timeout=30
            )
            assert image.status_code == 200
            assert image.headers["access-control-allow-origin"] == origin
            assert image.content[128:132] == b"DICM"
        assert httpx.get(url, timeout=30).status_code == 200  # OHIF itself
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    leftovers = subprocess.run(
        ["pgrep", "-f", str(work)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == [], "the demo's S3 server is still running"
