"""``pdata-sync view`` in a real browser, as the demo hands it to a user: ``make demo``'s
command prints how to view a patient, ``pdata-sync demo --view`` serves OHIF and the
patient's manifest, and Debian's chromium (headless, WebGL through SwiftShader, driven by
Playwright) opens the printed URL. OHIF loads the manifest from the view server and the
DICOM files from SeaweedFS by presigned URL (CORS set on the bucket for the viewer's
origin); the viewport must show the patient's X-ray: the picture in it is the thumbnail
pdata-sync drew of the same image, enlarged. And Prefect's own UI in the same browser: a
retrieval's presigned links, a sync's changes and the fleet report's chart on their
artifact pages."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import yaml
from PIL import Image

from pdata_sync.demo.generate import write_dicom
from pdata_sync.demo.ports import free_port
from pdata_sync.demo.run import allow_viewer_origin
from tests.conftest import BUCKET, CLI, clinic_yaml, make_clinic, run_cli
from tests.kit.s3 import empty_bucket

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root
    "--use-angle=swiftshader",  # WebGL without a GPU
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",  # this machine's network is closed
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Where the test keeps its screenshot (docs/screenshots/viewer.png is one of these).
SHOT_ENV = "PDATA_VIEWER_SCREENSHOT"


def grey(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def shown_picture(pixels: np.ndarray) -> np.ndarray:
    """The part of the viewport the image covers (the canvas is black around it)."""
    rows = np.where((pixels > 12).mean(axis=1) > 0.5)[0]
    cols = np.where((pixels > 12).mean(axis=0) > 0.5)[0]
    assert rows.size and cols.size, "nothing drawn in the viewport"
    return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def similarity(picture: np.ndarray, thumbnail: bytes) -> tuple[float, float]:
    """(pixel correlation, histogram overlap) of the viewport's picture and a thumbnail."""
    reference = grey(thumbnail)
    resized = np.asarray(
        Image.fromarray(picture.astype(np.uint8)).resize(
            (reference.shape[1], reference.shape[0]), Image.Resampling.BILINEAR
        ),
        dtype=np.float64,
    )
    histogram = np.histogram(resized, bins=16, range=(0, 256))[0] / resized.size
    expected = np.histogram(reference, bins=16, range=(0, 256))[0] / reference.size
    return correlation(resized, reference), float(np.minimum(histogram, expected).sum())


def viewport_after_load(url: str, timeout: float = 90) -> tuple[np.ndarray, bytes, list[str], str]:
    """Open ``url`` in headless chromium; wait until the viewport shows a picture. Returns
    the viewport's grey pixels, a screenshot of the page, the requests that failed and the
    page's text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(f"{r.url[:80]} {r.failure}"))
        page.goto(url)
        canvas = page.locator("canvas.cornerstone-canvas").first
        canvas.wait_for(timeout=timeout * 1000)
        deadline = time.monotonic() + timeout
        while True:  # until the image is drawn (OHIF draws a black canvas first)
            pixels = grey(canvas.screenshot())
            h, w = pixels.shape
            center = pixels[h // 5 : h - h // 5, w // 5 : w - w // 5]
            if center.std() > 20 or time.monotonic() > deadline:
                break
            time.sleep(1)
        page_shot = page.screenshot()
        text = page.inner_text("body")
        browser.close()
    # a blank canvas is one flat colour (standard deviation 0; a few pixels of overlay text
    # stay far below 20)
    assert center.std() > 20, f"the viewport stayed blank; failed requests: {failed}"
    return pixels, page_shot, failed, text


def demo_shell(work: Path, env: dict[str, str]) -> str:
    """``pdata-sync demo --shell``: its output once its servers are up for commands by hand;
    it checks that a sync by hand with the environment it wrote finds everything archived
    and vouched for, then stops it with SIGTERM and checks it left no process."""
    import json
    import stat

    from pdata_sync.demo.run import SHELL_READY

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
    return out


def test_demo_view_shows_the_patients_xray_in_headless_chromium(tmp_path, prefect_server):
    """What the README promises: the demo prints how to view a patient; that command
    serves OHIF, and a browser shows the patient's X-ray from S3. The demo runs as
    `demo --shell` (the demo, then its servers kept up for commands run by hand), and
    `demo --view` restarts its S3 on the same endpoint."""
    assert Path(CHROMIUM).exists(), "chromium is installed by the set-up (.ci/bootstrap)"
    work = tmp_path / "demo"
    clinic = make_clinic(
        work / "clinic", clinic_id="demo-clinic", patients=9, scale=0.5, large_files=0
    )
    clinic.save(work / "clinic" / "manifest.json")  # the demo reuses a generated clinic
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(prefect_server.env())
    printed = demo_shell(work, env)
    # Orthanc is installed by the set-up: the demo stores every image there too
    counts = re.search(r"^Orthanc: stored (\d+), already stored (\d+), .* failed 0$", printed, re.M)
    assert counts, printed[-2000:]
    assert int(counts[1]) + int(counts[2]) == len(clinic.expected)
    guid = clinic.expected[0]["patient_guid"]
    servers = (work / "servers.json").read_text()
    endpoint = yaml.safe_load((work / "clinic.yaml").read_text())["s3"]["endpoint_url"]
    assert f".venv/bin/pdata-sync demo --view --workdir {work}" in printed
    assert (
        f"pdata-sync view --config {work}/clinic.yaml --patient-guid {guid} --port 8765" in printed
    )

    proc = subprocess.Popen(
        [CLI, "demo", "--view", "--workdir", str(work), "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url or proc.stderr.read()[-3000:]
        # the restarted S3 is where the catalog knows it: same ports and keys, same
        # endpoint in the clinic's config (the catalog's name for this S3 and bucket)
        assert (work / "servers.json").read_text() == servers
        config = yaml.safe_load((work / "clinic.yaml").read_text())
        assert config["s3"]["endpoint_url"] == endpoint
        assert "/viewer/dicomjson?url=" in url
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        manifest = httpx.get(parse_qs(urlsplit(url).query)["url"][0], timeout=30).json()
        instances = [
            i for st in manifest["studies"] for se in st["series"] for i in se["instances"]
        ]
        assert len(instances) == sum(e["patient_guid"] == guid for e in clinic.expected)
        thumbnails = []
        for instance in instances:  # S3 lets the viewer's origin read every image
            image = httpx.get(
                instance["url"].removeprefix("dicomweb:"), headers={"Origin": origin}, timeout=30
            )
            assert image.status_code == 200 and image.content[128:132] == b"DICM"
            assert image.headers["access-control-allow-origin"] == origin
            thumbnails.append(httpx.get(instance["thumbnail"], timeout=30).content)

        pixels, page_shot, _, text = viewport_after_load(url)
        # OHIF labels each thumbnail with its series' description: the Sidexis image name
        labels = {se["SeriesDescription"] for st in manifest["studies"] for se in st["series"]}
        assert labels and "unnamed" not in labels
        assert all(label in text for label in labels), (labels, text[:2000])
        (tmp_path / "viewer.png").write_bytes(page_shot)
        if os.environ.get(SHOT_ENV):
            shutil.copyfile(tmp_path / "viewer.png", os.environ[SHOT_ENV])
        # The picture is one of the patient's images: it matches that image's thumbnail.
        scores = sorted(similarity(shown_picture(pixels), t) for t in thumbnails)
        assert scores[-1][0] > 0.9, f"viewport does not look like any thumbnail: {scores}"
        assert scores[-1][1] > 0.7, f"viewport histogram far from the thumbnail's: {scores}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    leftovers = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
    assert leftovers.stdout.split() == [], "the demo's S3 server is still running"


def test_view_refuses_a_bucket_whose_cors_does_not_allow_the_viewer(tmp_path, seaweed):
    """A viewer that would stay blank is refused, naming the bucket, the origin and the fix."""
    client = seaweed.client()
    empty_bucket(client, BUCKET)
    guid = "3f2c8a54-1b7e-4c1e-9a3d-2b6f0c9e8d71"
    path = tmp_path / "x.dcm"
    write_dicom(
        path,
        rng=random.Random(1),
        clinic_id="c-1",
        patient_id=1,
        patient_name="Test^Cors",
        birth_date="19700101",
        image_id=7,
        modality="IO",
        rows=32,
        cols=32,
    )
    client.put_object(Bucket=BUCKET, Key=f"images/{guid}/c-1_7_x.dcm", Body=path.read_bytes())
    clinic = SimpleNamespace(clinic_id="c-1", pdata_root=str(tmp_path), database_path="x.db")
    config = clinic_yaml(tmp_path / "c.yaml", clinic, "http://127.0.0.1:9/x", seaweed)
    port = free_port()
    allow_viewer_origin(client, BUCKET, "https://pacs.example.org")
    try:
        out = run_cli(
            ["view", "--config", str(config), "--patient-guid", guid, "--port", str(port)],
            seaweed.env(),
            timeout=120,
        )
    finally:
        client.delete_bucket_cors(Bucket=BUCKET)
        empty_bucket(client, BUCKET)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"does not allow GET from http://127.0.0.1:{port} (CORS)" in out.stderr
    assert "docs/viewer.md" in out.stderr
    assert out.stdout == "", "no viewer URL is printed for a viewer that cannot work"


def test_the_prefect_ui_hands_out_a_retrievals_links_and_shows_what_a_sync_changed(
    make_site, seaweed, prefect_server, tmp_path
):
    """What the UI starts ends somewhere a person sees it, in Prefect's own UI in headless
    chromium: a retrieval with presigned links leaves them as links on an artifact page,
    and each one downloads its image; a sync's changes artifact lists the keys it uploaded;
    the fleet report's chart is drawn on its artifact page."""
    from playwright.sync_api import sync_playwright
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
    )
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

    site = make_site()
    guid = site.clinic.expected[0]["patient_guid"]
    server = prefect_server  # the session's, with its UI
    env = {**server.env(), **seaweed.env()}
    synced = run_cli(["sync", "--config", str(site.config), "--json"], env)
    assert synced.returncode == 0, synced.stderr[-2000:]
    sync_run = json.loads(synced.stdout)["flow_run_id"]
    args = ["retrieve", "--config", str(site.config), "--patient-guid", guid]
    retrieved = run_cli([*args, "--presign", "900", "--json"], env)
    assert retrieved.returncode == 0, retrieved.stderr[-2000:]
    images = json.loads(retrieved.stdout)
    report = run_cli(["fleet-report", "--out-dir", str(tmp_path / "reports"), "--json"], env)
    assert report.returncode == 0, report.stderr[-2000:]

    with SyncPrefectClient(server.api_url) as client:
        (retrieval,) = client.read_flow_runs(  # the newest of this patient's (by its name)
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrieve-patient-images"])),
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"retrieve-{guid[:8]}-")),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )

        def artifacts(run_id):
            return client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )

        (links,) = [a for a in artifacts(retrieval.id) if a.type == "markdown"]
        (changes,) = [a for a in artifacts(sync_run) if a.key and a.key.startswith("sync-changes-")]
        chart = next(  # the newest version: other tests may have reported before
            a
            for a in client.read_artifacts(sort=ArtifactSort.CREATED_DESC)
            if a.key == "fleet-report-chart"
        )

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{server.ui_url}/artifacts/artifact/{links.id}")
        anchors = page.locator("a", has_text="download")
        anchors.first.wait_for(timeout=60_000)
        hrefs = [anchors.nth(i).get_attribute("href") for i in range(anchors.count())]
        page.goto(f"{server.ui_url}/artifacts/artifact/{changes.id}")
        first_key = sorted(e["key"] for e in images)[0]
        page.get_by_text(first_key).first.wait_for(timeout=60_000)
        changes_text = page.inner_text("body")
        page.goto(f"{server.ui_url}/artifacts/artifact/{chart.id}")
        drawn = page.locator("img[src^='data:image/png']").first
        drawn.wait_for(timeout=60_000)
        chart_width = drawn.evaluate("img => img.naturalWidth")
        browser.close()

    assert sorted(hrefs) == sorted(i["url"] for i in images)
    for href in hrefs:  # each link on the page downloads its image, no credential needed
        got = httpx.get(href, timeout=30)
        assert got.status_code == 200 and got.content[128:132] == b"DICM"
    assert all(image["key"] in changes_text for image in images)
    assert "uploaded" in changes_text
    assert chart_width > 500  # the PNG decoded in the page
