"""Flows run in this process for a person at a terminal: ``pdata-sync`` commands and the
demo start them here and get (result, error) back; exit codes are the CLI's.

The flows are imported lazily (:func:`_loading_prefect`): nothing here starts Prefect until
a command needs it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.errors import PdataSyncError

EXIT_OK = 0


EXIT_FAILED = 1


EXIT_REFUSED = 2


EXIT_BUSY = 75  # EX_TEMPFAIL: another run of the clinic holds its lock; try again later


def _prepare_prefect_env() -> None:
    """Settings that must be in place before Prefect is imported."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pdata_sync")
    # No phoning home from clinic machines (and its heartbeat contends for the ephemeral
    # server's SQLite lock).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without a Prefect server configured, a run starts a temporary one; Prefect gives it
    # 20 s, which a busy 2-core machine overran on a first `make demo` (it measured 13-18 s
    # unloaded): wait longer rather than fail the run.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _outcome(state: Any) -> tuple[Any, BaseException | None]:
    """A flow run's (result, None), or (None, the error it ended with)."""
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        return None, data
    return data, None


def run_sync(
    config: ClinicConfig, full_run: bool = False, new_catalog: bool = False
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Run the ``sync-clinic`` flow; return (summary, error)."""
    with _loading_prefect():
        from pdata_sync.flows.sync import sync_clinic

    return _outcome(
        sync_clinic(config=config, full_run=full_run, new_catalog=new_catalog, return_state=True)
    )


def run_retrieve(
    config: ClinicConfig,
    guid: str,
    presign: int | None,
    download: str | None,
    manifest: str | None = None,
    previews: str | None = None,
) -> tuple[list[dict[str, Any]] | None, BaseException | None]:
    """Run the ``retrieve-patient-images`` flow; return (images, error)."""
    with _loading_prefect():
        from pdata_sync.flows.retrieve import retrieve_patient_images

    state = retrieve_patient_images(
        patient_guid=guid,
        s3=config.s3,
        presign_seconds=presign,
        download_dir=download,
        manifest_path=manifest,
        previews_dir=previews,
        orthanc=config.orthanc if previews else None,
        return_state=True,
    )
    return _outcome(state)


def run_verify(config: ClinicConfig) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Run the ``verify-clinic`` flow; return (findings, error)."""
    with _loading_prefect():
        from pdata_sync.flows.verify import verify_clinic

    return _outcome(verify_clinic(config=config, return_state=True))


def run_thumbnails(
    config: ClinicConfig, guid: str | None, redo: bool
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Run the ``make-thumbnails`` flow; return (report, error)."""
    with _loading_prefect():
        from pdata_sync.flows.thumbnails import make_thumbnails

    return _outcome(make_thumbnails(config=config, patient_guid=guid, redo=redo, return_state=True))


def run_restore(
    config: ClinicConfig, to: str, guids: list[str]
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Run the ``restore-clinic`` flow; return (report, error)."""
    with _loading_prefect():
        from pdata_sync.flows.restore import restore_clinic

    return _outcome(restore_clinic(config=config, to=to, patient_guids=guids, return_state=True))


def run_hold(
    config: ClinicConfig, guid: str, on: bool
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Run the ``legal-hold`` flow; return (report, error)."""
    with _loading_prefect():
        from pdata_sync.flows.hold import legal_hold

    return _outcome(legal_hold(config=config, patient_guid=guid, on=on, return_state=True))


def run_fleet_report(
    days: int, out_dir: str | None
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Run the ``fleet-report`` flow against the Prefect server; return (report, error)."""
    with _loading_prefect():
        from pdata_sync.flows.fleet_report import fleet_report

    return _outcome(fleet_report(days=days, out_dir=out_dir, return_state=True))


def orthanc_line(counts: dict[str, Any]) -> str:
    """One line of what a sync did in Orthanc (its summary's ``orthanc`` counts)."""
    return (
        f"Orthanc: stored {counts['stored']}, already stored {counts['already_stored']}, "
        f"unchanged {counts['unchanged']}, rejected {len(counts['rejected'])}, "
        f"failed {len(counts['failed'])}"
    )


def run_export(
    config: ClinicConfig, project: str, guids: list[str], studies: list[str]
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Run the ``export-research`` flow; return (report, error)."""
    with _loading_prefect():
        from pdata_sync.flows.research import export_research

    return _outcome(
        export_research(
            config=config,
            project=project,
            patient_guids=guids,
            study_uids=studies,
            return_state=True,
        )
    )


def refuse(message: str) -> int:
    """Say why the input was refused, on stderr; the refused exit code."""
    print(f"pdata-sync: {message}", file=sys.stderr)
    return EXIT_REFUSED


def view(config: ClinicConfig, guid: str, presign: int, port: int) -> int:
    """Serve OHIF and the patient's manifest on 127.0.0.1:``port`` until interrupted
    (``pdata-sync view``, the demo's ``--view``). ``guid`` and ``presign`` are validated."""
    from pdata_sync.archive.retrieval import patient_manifest
    from pdata_sync.viewer.ohif import OhifMissing, locate
    from pdata_sync.viewer.server import ManifestSource, ViewerServer, cors_allows, first_url

    try:
        ohif_dir = locate()
    except OhifMissing as exc:
        print(f"pdata-sync: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from pdata_sync.tasks.credentials import s3_client

    client = s3_client(config.s3, config.transfer)

    def build() -> dict[str, Any]:
        return patient_manifest(client, config.s3, guid, presign)[0]

    manifest, left_out = patient_manifest(client, config.s3, guid, presign)
    for item in left_out:
        print(f"pdata-sync: not shown: {item['key']}: {item['reason']}", file=sys.stderr)
    url = first_url(manifest)
    if url is None:
        print(
            f"pdata-sync: nothing to show: no viewable image under images/{guid}/", file=sys.stderr
        )
        return EXIT_FAILED
    source = ManifestSource(build, presign)
    source.prime(manifest)
    try:
        server = ViewerServer(ohif_dir, source, port)
    except OSError as exc:
        return refuse(f"view: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}")
    if not cors_allows(url, server.origin):
        server.stop()
        return refuse(
            f"view: bucket {config.s3.bucket!r} does not allow GET from {server.origin} "
            "(CORS), so the browser could not load the images; allow that origin on the "
            "bucket (docs/viewer.md, CORS) or pick an allowed --port"
        )
    count = sum(len(s["instances"]) for st in manifest["studies"] for s in st["series"])
    with server:
        print(server.viewer_url, flush=True)
        print(
            f"pdata-sync: viewing {count} image(s) of patient {guid} on {server.origin} "
            f"(images from S3, links valid {presign} s, renewed while serving); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return EXIT_OK


# Whether the terminal's log shows the traceback of an error pdata-sync names itself (a
# refusal, a classified failure): only with the CLI's -v. Prefect's run log keeps it always.
_BRIEF = {"on": False}


def brief_known_errors(on: bool = True) -> None:
    """Print pdata-sync's own errors on the terminal as their line, without a traceback (the
    CLI without -v); applied to the console handlers once Prefect has set them up."""
    _BRIEF["on"] = on
    if on:
        _brief_console_handlers()


class _BriefKnownErrors(logging.Formatter):
    """A console formatter that leaves out the traceback of a :class:`PdataSyncError` (its
    message says what is wrong); every other record as the wrapped formatter prints it."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, PdataSyncError):
            return self.inner.format(record)
        kept = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:  # other handlers (Prefect's run log) still get the traceback
            record.exc_info, record.exc_text = kept


class _BriefTerminal(logging.Filter):
    """The terminal without -v. Prefect's INFO lines (a temporary server starting, "Beginning
    flow run", every task's state) are left to the run's log, where they stay: the status
    line and the summary say what the run does. Prefect reports a run's exception three or
    four times (task run failed, its state, the flow's exception, the flow's state); for
    pdata-sync's own errors the command prints the message once itself. Only the terminal's
    handlers get this filter; Prefect's API handler keeps every record for the run's log."""

    def __init__(self) -> None:
        super().__init__()
        self.own_errors = _own_error_names()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, PdataSyncError):
            return False
        prefects = record.name == "prefect" or record.name.startswith("prefect.")
        if prefects and record.levelno < logging.WARNING:
            return False
        text = record.getMessage()
        if record.name.endswith("EventsWorker") and text.startswith("Still processing items"):
            return False  # Prefect flushing its events at exit: nothing to act on
        if record.levelno < logging.ERROR or not prefects:
            return True
        return not any(f"{name}:" in text or f"{name}(" in text for name in self.own_errors)


def _own_error_names() -> tuple[str, ...]:
    found, todo = set(), [PdataSyncError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return tuple(sorted(found))


def _brief_console_handlers() -> None:
    """The terminal's handlers without -v: tracebacks of pdata-sync's errors left out
    (:class:`_BriefKnownErrors`), and :class:`_BriefTerminal`'s filter."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
        if name == "prefect" or name.startswith("prefect.")
    ]  # fmt: skip
    for logger in loggers:
        for handler in logger.handlers:
            prefects = type(handler).__name__ == "PrefectConsoleHandler"
            console = prefects or isinstance(handler, logging.StreamHandler)
            if console and not isinstance(handler.formatter, _BriefKnownErrors):
                handler.setFormatter(_BriefKnownErrors(handler.formatter))
                handler.addFilter(_BriefTerminal())


@contextlib.contextmanager
def _loading_prefect() -> Iterator[None]:
    """Import the flows (or tasks) with Prefect's settings in place
    (:func:`_prepare_prefect_env`) and without garbage collection, then exempt what they
    loaded from it.

    Importing Prefect, pydantic, SQLAlchemy and boto3 leaves some 150,000 long-lived
    objects; Python's full collections, during the imports and then during the run, searched
    them for cycles: 0.6 s of a 10 s initial sync of 2,000 images, with the GIL held
    (0.2 s with this; bench/RESULTS.md). Frozen objects are still freed by reference
    counting; only cycles among them are never searched for, as at exit
    (:func:`_skip_final_collections`). Collection is on again whatever happens.
    """
    _prepare_prefect_env()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
        if _BRIEF["on"]:
            _brief_console_handlers()
