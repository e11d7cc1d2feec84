"""The README's first command: a demo clinic end to end on this machine.

Generates the clinic once (PDATA of real DICOM files, a SQLite Sidexis database), starts a
resolver, a real S3-compatible server and, when Debian's package is installed, Orthanc on
127.0.0.1, runs the sync and a retrieval, prints the summaries, and stops what it started.
Data persists in the work folder, so a second run shows everything unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pdata_sync.base.config import load_config
from pdata_sync.demo.generate import Manifest, generate_clinic
from pdata_sync.demo.orthanc_server import OrthancServer, orthanc_binary
from pdata_sync.demo.ports import SERVERS_FILE, remembered
from pdata_sync.demo.resolver_server import RESOLVE_PATH, ResolverServer
from pdata_sync.demo.seaweed import SeaweedS3

BUCKET = "dental-images"


def write_config(
    path: Path,
    manifest: Manifest | Any,
    *,
    resolver_url: str,
    endpoint: str,
    state_dir: Path,
    resolver_batch_size: int = 10,
    orthanc: dict[str, Any] | None = None,
    **transfer: object,
) -> Path:
    """A clinic config file for a generated clinic (the demo, the tests, the benchmarks):
    ``manifest`` is anything with ``clinic_id``, ``pdata_root`` and ``database_path``."""
    data = {
        "clinic_id": manifest.clinic_id,
        "pdata_root": manifest.pdata_root,
        "database": {"url": f"sqlite:///{manifest.database_path}", "schema": None},
        "resolver": {"url": resolver_url, "batch_size": resolver_batch_size},
        "s3": {"bucket": BUCKET, "region": "us-east-1", "endpoint_url": endpoint},
        "transfer": {"state_dir": str(state_dir), **transfer},
    }
    if orthanc is not None:
        data["orthanc"] = orthanc
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load_or_generate(work: Path, fresh: bool = False) -> Manifest:
    """The demo clinic under ``work/clinic``: generated once, then reused."""
    if fresh and work.exists():
        shutil.rmtree(work)
    clinic_dir = work / "clinic"
    manifest_path = clinic_dir / "manifest.json"
    if manifest_path.exists():
        manifest = Manifest.load(manifest_path)
        print(f"demo: reusing the clinic in {clinic_dir}", file=sys.stderr)
    else:
        t0 = time.monotonic()
        manifest = generate_clinic(clinic_dir)
        print(
            f"demo: generated {len(manifest.expected)} expected objects in "
            f"{time.monotonic() - t0:.1f} s under {clinic_dir}",
            file=sys.stderr,
        )
    return manifest


VIEW_PORT = 8765


def view_instructions(workdir: str | Path, guid: str, port: int = VIEW_PORT) -> str:
    """The lines the demo ends with: how to look at a demo patient's X-rays in OHIF."""
    option = "" if str(workdir) == ".demo" else f" --workdir {workdir}"
    return (
        f"\nTo see patient {guid}'s X-rays in OHIF, run\n"
        f"  .venv/bin/pdata-sync demo --view{option}\n"
        "and open the address it prints. It starts the demo's S3 server again, allows the "
        "viewer's origin on the bucket (CORS) and runs\n"
        f"  pdata-sync view --config {Path(workdir) / 'clinic.yaml'} --patient-guid {guid} "
        f"--port {port}\n"
        "which works the same against any clinic's bucket (docs/viewer.md)."
    )


def allow_viewer_origin(client: Any, bucket: str, origin: str) -> None:
    """Let a viewer served from ``origin`` GET the bucket's objects (CORS; docs/viewer.md)."""
    client.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": [origin],
                    "AllowedMethods": ["GET", "HEAD"],
                    "AllowedHeaders": ["*"],
                    "MaxAgeSeconds": 3600,
                }
            ]
        },
    )


def demo_s3(work: Path) -> tuple[SeaweedS3, dict[str, int]]:
    """The demo's S3 server (not started) on the ports and keys of its last start
    (``servers.json``), and the demo's ports (the resolver's among them)."""
    kept = remembered(work, (*SeaweedS3.PORTS, "resolver"), pairs=SeaweedS3.PORTS)
    ports, keys = kept["ports"], kept["s3_keys"]
    server = SeaweedS3(
        work / "s3",
        buckets=(BUCKET,),
        ports={name: ports[name] for name in SeaweedS3.PORTS},
        keys=(keys[0], keys[1]),
    )
    return server, ports


def view_demo(workdir: str | Path = ".demo", port: int = VIEW_PORT) -> int:
    """Start the demo's S3 server on its stored data and run ``pdata-sync view`` for the
    demo's first patient until Ctrl-C. The demo must have run once (`make demo`)."""
    from pdata_sync.console import EXIT_FAILED, view
    from pdata_sync.demo.ports import free_port
    from pdata_sync.viewer.server import HOST

    work = Path(workdir).resolve()
    manifest_path = work / "clinic" / "manifest.json"
    if not manifest_path.exists() or not (work / "s3").exists():
        print(f"demo: nothing synced in {work} yet: run `make demo` first", file=sys.stderr)
        return EXIT_FAILED
    manifest = Manifest.load(manifest_path)
    guid = manifest.expected[0]["patient_guid"]
    if port == 0:
        port = free_port()  # known before serving: the bucket's CORS rule names it
    s3_server, ports = demo_s3(work)
    with s3_server as s3:
        os.environ.update(s3.env())
        config_path = write_config(
            work / "clinic.yaml",
            manifest,
            resolver_url=f"http://127.0.0.1:{ports['resolver']}{RESOLVE_PATH}",
            endpoint=s3.endpoint,
            state_dir=work / "state",
        )
        allow_viewer_origin(s3.client(), BUCKET, f"http://{HOST}:{port}")
        return view(load_config(config_path), guid, 3600, port)


SHELL_READY = "pdata-sync demo: shell ready"
ORTHANC_PORT = 8042  # Orthanc's usual port, when free: the catalog knows Orthanc by its URL


@contextlib.contextmanager
def _orthanc(work: Path) -> Iterator[OrthancServer | None]:
    """Orthanc for the demo when Debian's package is installed (its data kept in the work
    folder, so a second demo finds it there), else None."""
    if orthanc_binary() is None:
        print("demo: Orthanc is not installed; syncing to S3 only", file=sys.stderr)
        yield None
        return
    with OrthancServer(work / "orthanc", port=ORTHANC_PORT) as server:
        yield server


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM end the demo, also where SIGINT was ignored at start
    (a shell's background job), so its servers are stopped on the way out."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


SHELL_ENV = "shell.env"


def shell_instructions(work: Path, env_file: Path, config_path: Path) -> str:
    """What ``demo --shell`` prints: how to use the servers it keeps up from another
    terminal. The keys are in the file (0600), not on the screen."""
    return (
        "\n=== the demo's servers stay up until Ctrl-C ===\n"
        "In another terminal, in this folder:\n"
        f"  set -a; . {env_file}; set +a\n"
        f"  .venv/bin/pdata-sync sync --config {config_path}\n"
        f"  .venv/bin/pdata-sync verify --config {config_path}\n"
        f"  .venv/bin/pdata-sync audit --config {config_path} --patient-guid GUID\n"
        f"The ports stay the same at the next start ({work / SERVERS_FILE}), so the catalog "
        "keeps trusting what it recorded."
    )


def write_shell_env(work: Path, values: dict[str, str]) -> Path:
    """``work/shell.env``: the demo servers' environment, owner-only, rewritten by the demo
    itself only (never through a link)."""
    path = work / SHELL_ENV
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# pdata-sync demo --shell: the demo's S3 keys and servers (demo only)\n")
        for name, value in values.items():
            fh.write(f"{name}={shlex.quote(value)}\n")
    return path


def run_demo(workdir: str | Path = ".demo", fresh: bool = False, shell: bool = False) -> int:
    """Sync the demo clinic and retrieve a patient. The servers come back on the ports
    of the last start (``servers.json``). ``shell``: keep them up afterwards and write their
    environment for commands run by hand, until Ctrl-C."""
    from pdata_sync.console import EXIT_FAILED, EXIT_OK, orthanc_line, run_retrieve, run_sync

    work = Path(workdir).resolve()
    manifest = load_or_generate(work, fresh)
    mapping = json.loads(Path(manifest.mapping_path).read_text(encoding="utf-8"))
    s3_server, ports = demo_s3(work)

    with (
        stop_on_signals(),
        ResolverServer(mapping, port=ports["resolver"]) as resolver,
        s3_server as s3,
        _orthanc(work) as orthanc,
    ):
        os.environ.update(s3.env())
        if orthanc is not None:
            os.environ["PDATA_SYNC_ORTHANC_PASSWORD"] = orthanc.password
        config_path = write_config(
            work / "clinic.yaml",
            manifest,
            resolver_url=resolver.url,
            endpoint=s3.endpoint,
            state_dir=work / "state",
            orthanc=None if orthanc is None else {"url": orthanc.url, "username": orthanc.user},
        )
        config = load_config(config_path)
        print(
            f"demo: resolver at {resolver.url}, S3 at {s3.endpoint}"
            f"{'' if orthanc is None else f', Orthanc at {orthanc.url}'}; syncing...",
            file=sys.stderr,
        )
        t0 = time.monotonic()
        summary, error = run_sync(config)
        elapsed = time.monotonic() - t0
        if error is not None:
            print(f"demo: sync failed: {error}", file=sys.stderr)
            return EXIT_FAILED
        assert summary is not None
        print("\n=== sync summary ===")
        print(json.dumps(summary, indent=2))
        print(f"sync took {elapsed:.1f} s")

        guid = manifest.expected[0]["patient_guid"]
        images, error = run_retrieve(config, guid, 3600, None)
        if error is not None:
            print(f"demo: retrieval failed: {error}", file=sys.stderr)
            return EXIT_FAILED
        assert images is not None
        print(f"\n=== retrieval of patient {guid}: {len(images)} images ===")
        for img in images:
            print(f"{img['key']}  {img['size']:>9} bytes  {img['name']}")
        in_orthanc = summary["orthanc"]
        if in_orthanc is not None:
            print(orthanc_line(in_orthanc))
        print(
            f"\nuploaded {summary['uploaded']}, unchanged {summary['unchanged']}, "
            f"rejected {len(summary['rejected'])}, failed {len(summary['failed'])}; "
            "run `make demo` again to see everything unchanged."
        )
        print(view_instructions(workdir, guid))
        orthanc_failed = in_orthanc is not None and in_orthanc["failed"]
        code = EXIT_OK if not summary["failed"] and not orthanc_failed else EXIT_FAILED
        if shell:
            values = dict(s3.env())
            if orthanc is not None:
                values["PDATA_SYNC_ORTHANC_PASSWORD"] = orthanc.password
            for name in ("PREFECT_API_URL", "PREFECT_HOME"):
                if os.environ.get(name):
                    values[name] = os.environ[name]
            env_file = write_shell_env(work, values)
            print(shell_instructions(work, env_file, config_path), flush=True)
            print(SHELL_READY, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
            print("demo: servers stopped", file=sys.stderr)
        return code
