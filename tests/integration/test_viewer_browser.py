"""``pdata-sync view`` in a real browser: Debian's chromium (headless, WebGL through
SwiftShader), driven by Playwright, opens the printed URL; OHIF loads the manifest from the
view server and the DICOM files from SeaweedFS by presigned URL (CORS set on the bucket for
the viewer's origin), and the viewport must show the patient's X-ray: the picture in it is
the thumbnail pdata-sync drew of the same image, enlarged."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.demo.run import write_config
from pdata_sync.demo.seaweed import empty_bucket
from pdata_sync.keys import thumbnail_key
from tests.conftest import BUCKET, CLI, load_mapping, make_clinic, run_cli

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def allow_origin(client, origin: str) -> None:
    """The bucket's CORS rule for the viewer, as the demo sets it (docs/viewer.md)."""
    client.put_bucket_cors(
        Bucket=BUCKET,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": [origin],
                    "AllowedMethods": ["GET", "HEAD"],
                    "AllowedHeaders": ["*"],
                    "MaxAgeSeconds": 600,
                }
            ]
        },
    )


@pytest.fixture(scope="module")
def synced(tmp_path_factory, seaweed, prefect_server):
    tmp = tmp_path_factory.mktemp("browser")
    clinic = make_clinic(tmp / "clinic", patients=9, scale=0.5, large_files=0)
    client = seaweed.client()
    empty_bucket(client, BUCKET)
    with ResolverServer(load_mapping(clinic)) as resolver:
        config = write_config(
            tmp / "clinic.yaml",
            clinic,
            resolver_url=resolver.url,
            endpoint=seaweed.endpoint,
            state_dir=tmp / "state",
        )
        env = {**prefect_server.env(), **seaweed.env()}
        out = run_cli(["sync", "--config", str(config), "--json"], env)
        assert out.returncode == 0, out.stderr[-3000:]
    yield clinic, client, config, env, tmp
    client.delete_bucket_cors(Bucket=BUCKET)
    empty_bucket(client, BUCKET)


def start_view(config: Path, guid: str, port: int, env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [CLI, "view", "--config", str(config), "--patient-guid", guid, "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    url = proc.stdout.readline().strip()
    if not url:
        proc.wait(timeout=30)
        raise AssertionError(f"view printed no URL: {proc.stderr.read()[-2000:]}")
    return proc, url


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


def test_viewer_shows_the_patients_xray_in_headless_chromium(synced):
    from playwright.sync_api import sync_playwright

    clinic, client, config, env, tmp = synced
    assert Path(CHROMIUM).exists(), "chromium is installed by the set-up (.ci/bootstrap)"
    guid = clinic.expected[0]["patient_guid"]
    port = free_port()
    allow_origin(client, f"http://127.0.0.1:{port}")
    proc, url = start_view(config, guid, port, env)
    try:
        assert url.startswith(f"http://127.0.0.1:{port}/viewer/dicomjson?url=")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(f"{r.url[:80]} {r.failure}"))
            page.goto(url)
            canvas = page.locator("canvas.cornerstone-canvas").first
            canvas.wait_for(timeout=90_000)
            deadline = time.monotonic() + 90
            while True:  # until the image is drawn (OHIF draws a black canvas first)
                shot = canvas.screenshot()
                pixels = grey(shot)
                h, w = pixels.shape
                center = pixels[h // 5 : h - h // 5, w // 5 : w - w // 5]
                if center.std() > 20 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            full = page.screenshot()
            browser.close()
        # a blank canvas is one flat colour (standard deviation 0; a few pixels of overlay
        # text stay far below 20)
        assert center.std() > 20, f"the viewport stayed blank; failed requests: {failed}"
        (tmp / "viewer.png").write_bytes(full)
        if os.environ.get(SHOT_ENV):
            shutil.copyfile(tmp / "viewer.png", os.environ[SHOT_ENV])

        # The picture is one of the patient's images: it matches that image's thumbnail.
        picture = shown_picture(pixels)
        scores = {}
        for entry in (e for e in clinic.expected if e["patient_guid"] == guid):
            keys = client.list_objects_v2(
                Bucket=BUCKET, Prefix=f"images/{guid}/{clinic.clinic_id}_{entry['image_id']}_"
            )["Contents"]
            thumb = client.get_object(Bucket=BUCKET, Key=thumbnail_key(keys[0]["Key"]))
            reference = grey(thumb["Body"].read())
            resized = np.asarray(
                Image.fromarray(picture.astype(np.uint8)).resize(
                    (reference.shape[1], reference.shape[0]), Image.Resampling.BILINEAR
                ),
                dtype=np.float64,
            )
            histogram = np.histogram(resized, bins=16, range=(0, 256))[0] / resized.size
            expected = np.histogram(reference, bins=16, range=(0, 256))[0] / reference.size
            scores[entry["image_id"]] = (
                correlation(resized, reference),
                float(np.minimum(histogram, expected).sum()),
            )
        best = max(scores.values())
        assert best[0] > 0.9, f"viewport does not look like any thumbnail: {scores}"
        assert best[1] > 0.7, f"viewport histogram far from the thumbnail's: {scores}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]


def test_view_refuses_a_bucket_whose_cors_does_not_allow_the_viewer(synced):
    clinic, client, config, env, _ = synced
    port = free_port()
    allow_origin(client, "https://pacs.example.org")
    out = run_cli(
        [
            "view",
            "--config",
            str(config),
            "--patient-guid",
            clinic.expected[0]["patient_guid"],
            "--port",
            str(port),
        ],
        env,
        timeout=120,
    )
    assert out.returncode == 2
    assert f"does not allow GET from http://127.0.0.1:{port} (CORS)" in out.stderr
    assert out.stdout == "", "no viewer URL is printed for a viewer that cannot work"
