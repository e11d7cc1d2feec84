"""Shared fixtures: small generated clinics, and real servers on 127.0.0.1 (SeaweedFS,
the resolver, a Prefect server), each started by the test setup and stopped after."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pdata_sync.demo.generate import Manifest, generate_clinic, write_dicom
from pdata_sync.demo.resolver_server import ResolverServer

BUCKET = "dental-images"
CLI = str(Path(sys.executable).parent / "pdata-sync")


def run_cli(args: list[str], env: dict[str, str], timeout: int = 240):
    """``pdata-sync *args`` as a subprocess with ``env`` added, output captured as text."""
    return subprocess.run(
        [CLI, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def make_clinic(root: Path, **kwargs) -> Manifest:
    """A small clinic: tiny images, every special case of docs/product-rules.md §2."""
    params = dict(patients=14, images_per_patient=(2, 4), scale=0.05, large_files=0, seed=11)
    params.update(kwargs)
    return generate_clinic(root, **params)


def load_mapping(manifest: Manifest) -> dict:
    return json.loads(Path(manifest.mapping_path).read_text(encoding="utf-8"))


def clinic_yaml(
    path: Path,
    clinic: Manifest,
    resolver,
    seaweed,
    /,
    *,
    endpoint: str | None = None,
    orthanc: dict[str, Any] | None = None,
    transfer: dict[str, Any] | None = None,
    **settings: Any,
) -> Path:
    """The one way tests write a clinic's config: at ``path`` for ``clinic`` on the test
    servers (``resolver``: a server or a URL; ``endpoint``: S3 other than ``seaweed``'s,
    e.g. a fault proxy), state beside it, ``transfer`` settings, and top-level ``settings``
    (a dict value changes keys of that section)."""
    import yaml

    from pdata_sync.demo.run import write_config

    config = write_config(
        path,
        clinic,
        resolver_url=resolver if isinstance(resolver, str) else resolver.url,
        endpoint=endpoint or seaweed.endpoint,
        state_dir=path.parent / "state",
        orthanc=orthanc,
        **(transfer or {}),
    )
    if settings:
        data = yaml.safe_load(config.read_text())
        for key, value in settings.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        config.write_text(yaml.safe_dump(data))
    return config


@dataclass
class Site:
    """A generated clinic with its resolver and config on the session's SeaweedFS, synced
    through the CLI (``pdata-sync sync --json`` as a subprocess) or a flow in-process."""

    clinic: Manifest
    client: Any
    resolver: ResolverServer
    config: Path
    tmp_path: Path
    request: pytest.FixtureRequest

    @property
    def env(self) -> dict[str, str]:
        """The CLI's environment: the session's Prefect server (started on first use: a
        flow run in-process needs none) and SeaweedFS's credentials."""
        servers = (self.request.getfixturevalue(name) for name in ("prefect_server", "seaweed"))
        return {name: value for server in servers for name, value in server.env().items()}

    def variant(self, name: str, **settings: Any) -> Path:
        """The clinic's config with ``settings`` changed (a dict value changes keys of that
        section) in another file beside it; ``self.config`` stays as it is."""
        import yaml

        data = yaml.safe_load(self.config.read_text())
        for key, value in settings.items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
        path = self.config.with_name(f"{name}.yaml")
        path.write_text(yaml.safe_dump(data))
        return path

    def sync(self, *extra: str, config: Path | None = None) -> tuple[int, dict]:
        """Exit code and summary of one sync (exit 0 or 1: a summary is printed)."""
        return self.cli("sync", *extra, config=config)

    def verify(self, *extra: str, config: Path | None = None) -> tuple[int, dict]:
        """Exit code and report of one verify (exit 0 or 1: a report is printed)."""
        return self.cli("verify", *extra, config=config)

    def cli(self, command: str, *extra: str, config: Path | None = None) -> tuple[int, dict]:
        """Exit code and JSON answer of ``pdata-sync command --config ... --json *extra``,
        which must end 0 or 1 (an answer is printed)."""
        args = [command, "--config", str(config or self.config), "--json", *extra]
        out = run_cli(args, self.env, timeout=300)
        assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]
        return out.returncode, json.loads(out.stdout)


def open_site(
    stack: ExitStack,
    folder: Path,
    seaweed,
    request: pytest.FixtureRequest,
    *,
    endpoint: str | None = None,
    orthanc: dict[str, Any] | None = None,
    transfer: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    resolver_options: dict[str, Any] | None = None,
    **clinic_params: Any,
) -> Site:
    """The one scaffolding of the integration tests: a clinic generated under ``folder``
    (``make_clinic``'s parameters), its resolver started on ``stack`` (``resolver_options``,
    e.g. ``fail_first``) and its config ``folder/clinic.yaml`` on the session's SeaweedFS
    (``endpoint``: another S3 such as a fault proxy; ``orthanc``, ``transfer`` and top-level
    ``settings`` as for ``clinic_yaml``). Tests use it through ``make_site``; fixtures
    wider than a test and loops of many clinics call it directly."""
    clinic = make_clinic(folder / "clinic", **clinic_params)
    resolver = stack.enter_context(ResolverServer(load_mapping(clinic), **(resolver_options or {})))
    config = clinic_yaml(
        folder / "clinic.yaml",
        clinic,
        resolver,
        seaweed,
        endpoint=endpoint,
        orthanc=orthanc,
        transfer=transfer,
        **(settings or {}),
    )
    return Site(clinic, seaweed.client(), resolver, config, folder, request)


@pytest.fixture
def make_site(request, tmp_path, seaweed) -> Iterator[Callable[..., Site]]:
    """``make_site(**options)``: ``open_site`` in this test's folder (a second site in a
    folder of its own), on an empty bucket; resolvers stopped and the bucket emptied after."""
    from tests.kit.s3 import empty_bucket

    empty_bucket(seaweed.client(), BUCKET)
    made: list[Site] = []
    with ExitStack() as stack:

        def make(**options: Any) -> Site:
            folder = tmp_path / f"site{len(made)}" if made else tmp_path
            made.append(open_site(stack, folder, seaweed, request, **options))
            return made[-1]

        yield make
    empty_bucket(seaweed.client(), BUCKET)


@pytest.fixture
def site(make_site) -> Site:
    """A small clinic (tests/conftest.make_clinic) on an empty bucket."""
    return make_site()


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime_ns, sha256) of every file under ``root``: proof nothing was written."""
    snap = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            snap[str(path.relative_to(root))] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return snap


def stored_objects(client, prefix: str = "images/", bucket: str = BUCKET) -> dict[str, bytes]:
    """key -> stored bytes of every object under ``prefix`` in ``bucket``."""
    stored = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            stored[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return stored


def assert_exactly_expected(client, clinic) -> dict[str, str]:
    """Every expected object once, byte-identical, nothing else; returns prefix -> key."""
    stored = stored_objects(client)
    found: dict[str, str] = {}
    for entry in clinic.expected:
        prefix = f"images/{entry['patient_guid']}/{clinic.clinic_id}_{entry['image_id']}_"
        keys = [k for k in stored if k.startswith(prefix)]
        assert len(keys) == 1, f"{prefix}: {keys}"
        assert stored[keys[0]] == Path(clinic.pdata_root, entry["path"]).read_bytes()
        found[prefix] = keys[0]
    assert len(stored) == len(clinic.expected), set(stored) - set(found.values())
    return found


@pytest.fixture
def clinic(tmp_path: Path) -> Manifest:
    return make_clinic(tmp_path / "clinic")


@pytest.fixture
def resolver(clinic: Manifest):
    with ResolverServer(load_mapping(clinic)) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    from pdata_sync.demo.seaweed import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweed"), buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the whole session."""
    from tests.kit.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc on 127.0.0.1 (loopback clients only), authentication on, for one test.
    The set-up installs it (.ci/bootstrap): a missing Orthanc fails, it never skips."""
    from pdata_sync.demo.orthanc_server import OrthancServer, orthanc_binary

    assert orthanc_binary() is not None, "Orthanc is installed by the set-up (.ci/bootstrap)"
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    from pdata_sync.demo.prefect_server import PrefectServer

    # with its UI: the browser tests read Prefect's own pages (the UI costs no start time)
    with PrefectServer(tmp_path_factory.mktemp("prefect-home"), ui=True) as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch):
    """Fake credentials for moto; never real ones."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield


# rows of the fault-injection table: (fault, times fired, runs to converge, images lost,
# images corrupted, unexpected objects); printed at the end of the session
# The fault suite's table. Tests may run in pytest-xdist workers, so rows go through a file
# that the main process creates (workers inherit its path) and prints at the end.
FAULT_ROWS_ENV = "PDATA_SYNC_TEST_FAULT_ROWS"
MODEL_ROWS_ENV = "PDATA_SYNC_TEST_MODEL_ROWS"


def record_fault_row(row: tuple[str, int, int, int, int, int]) -> None:
    path = os.environ.get(FAULT_ROWS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def record_model_run(row: tuple[int, int, float]) -> None:
    """(sequences, steps, seconds) of a model-based test run, for the session summary."""
    path = os.environ.get(MODEL_ROWS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the main process set the paths
    for env, name in ((FAULT_ROWS_ENV, "fault-rows.jsonl"), (MODEL_ROWS_ENV, "model-rows.jsonl")):
        path = Path(config.rootpath) / ".pytest_cache" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text("")
        os.environ[env] = str(path)


def _model_summary(terminalreporter) -> None:
    path = os.environ.get(MODEL_ROWS_ENV)
    if not path or not Path(path).exists():
        return
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            sequences, steps, seconds = json.loads(line)
            terminalreporter.section("catalog model: invariants held")
            terminalreporter.write_line(
                f"{sequences} sequences, {steps} steps, {seconds} s, no invariant violated"
            )


def pytest_terminal_summary(terminalreporter):
    _model_summary(terminalreporter)
    path = os.environ.get(FAULT_ROWS_ENV)
    if not path or not Path(path).exists():
        return
    rows = sorted(
        tuple(json.loads(line))
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    )
    if not rows:
        return
    tr = terminalreporter
    tr.section("fault injection: nothing lost, nothing corrupted")
    header = ("fault", "fired", "runs", "lost", "corrupted", "unexpected")
    width = max(len(r[0]) for r in rows)
    tr.write_line(
        f"{header[0]:<{width}}  {header[1]:>5}  {header[2]:>4}  {header[3]:>4}  "
        f"{header[4]:>9}  {header[5]:>10}"
    )
    for row in rows:
        tr.write_line(
            f"{row[0]:<{width}}  {row[1]:>5}  {row[2]:>4}  {row[3]:>4}  {row[4]:>9}  {row[5]:>10}"
        )


@pytest.fixture
def dicom_file(tmp_path: Path) -> Path:
    """One small intra-oral DICOM file with a name and birth date in it."""
    path = tmp_path / "0000_5.dcm"
    write_dicom(
        path,
        rng=random.Random(1),
        clinic_id="c",
        patient_id=1,
        patient_name="A^B",
        birth_date="19700101",
        image_id=5,
        modality="IO",
        rows=16,
        cols=16,
    )
    return path


# The longest files, longest first (measured with --durations, 2026-12-07: seconds of one
# worker). The workers take whole files in collection order, so a long file collected last
# (alphabetically test_schedules_fire, 107 s) ran alone at the end while the others idled.
LONGEST_FIRST = (
    "test_faults.py",  # ~190 s
    "test_bandwidth.py",  # ~240 s, waiting for a minute to begin or on a shaped link
    "test_schedules_fire.py",  # 107 s
    "test_fleet.py",  # 101 s
    "test_edges.py",  # ~90 s
    "test_prefect_deployments.py",  # ~90 s
    "test_alerts.py",  # ~60 s, mostly waiting for a compressed "no completed sync"
    "test_catalog_trust.py",
    "test_research_export.py",
    "test_integrity.py",
    "test_viewer_browser.py",
    "test_demo_serve.py",
    # next, the files of 20-75 s: scheduled last (alphabetical order), one of them alone
    # kept a worker busy minutes after the others had finished
    "test_orthanc.py",  # ~75 s
    "test_cli_sync.py",  # ~50 s
    "test_viewer_manifest.py",  # ~45 s with its module fixture
    "test_object_lock.py",  # ~40 s
    "test_failures.py",
    "test_retirement.py",
    "test_incremental.py",
    "test_catalog_model.py",  # ~25-37 s, one test
    "test_encryption.py",
    "test_restore.py",
)


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))  # stable


os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
