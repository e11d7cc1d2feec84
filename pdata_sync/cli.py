"""Command line: ``pdata-sync sync | retrieve | view | verify | export | thumbnails | probe |
check-config | config-reference | deployments | blocks | demo``.

Exit codes: 0 nothing failed; 1 some images failed, ``verify`` found drift, or the run
crashed; 2 the input was refused (bad config, bad patient GUID, bad option). With
``--json`` stdout holds exactly one JSON document and everything else (logs) goes to stderr.

Parsing and printing only: the flows are run by :mod:`pdata_sync.console`, which imports
Prefect lazily, only when a command needs it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pdata_sync.base.config import load_config
from pdata_sync.base.errors import ClinicBusyError, ConfigError, PdataSyncError, describe
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.console import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    _loading_prefect,
    orthanc_line,
    refuse,
    run_export,
    run_retrieve,
    run_sync,
    run_thumbnails,
    run_verify,
    view,
)


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[Any]:
    """While active, anything written to fd 1 (by us, Prefect or a child) goes to stderr.
    Yields a text stream on the original stdout."""
    if not enabled:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real_stdout = os.fdopen(os.dup(saved), "w", encoding="utf-8")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield real_stdout
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real_stdout.flush()


def _run_and_print(
    args: argparse.Namespace,
    label: str,
    run: Callable[[], tuple[Any, BaseException | None]],
    print_text: Callable[[Any], None],
) -> tuple[Any, int | None]:
    """Run a flow (its output kept off stdout with ``--json``) and print its result as JSON
    or text. Returns (result, None), or (None, the exit code) when the run ended in error."""
    with _stdout_to_stderr(args.json) as out:
        result, error = run()
    if error is not None:
        if isinstance(error, ClinicBusyError):
            print(f"pdata-sync: {error}", file=sys.stderr)
            return None, EXIT_BUSY
        if isinstance(error, ConfigError):
            return None, refuse(str(error))
        print(f"pdata-sync: {label} failed: {describe(error)}", file=sys.stderr)
        return None, EXIT_FAILED
    if args.json:
        print(json.dumps(result, indent=2), file=out)
        out.flush()
    else:
        print_text(result)
    return result, None


def cmd_thumbnails(args: argparse.Namespace) -> int:
    from pdata_sync.archive.retrieval import validate_guid

    try:
        config = load_config(args.config)
        if args.patient_guid is not None:
            validate_guid(args.patient_guid)
    except ConfigError as exc:
        return refuse(str(exc))
    _, code = _run_and_print(
        args,
        "thumbnails",
        lambda: run_thumbnails(config, args.patient_guid, args.redo),
        _print_backfill,
    )
    return EXIT_OK if code is None else code


def _print_backfill(report: dict[str, Any]) -> None:
    print(
        f"clinic {report['clinic_id']}: {report['images']} images, {report['made']} "
        f"thumbnails made, {report['present']} already there"
    )
    for item in report["not_made"]:
        print(f"  not made: {item['key']}: {item['reason']}")


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return refuse(str(exc))
    result, code = _run_and_print(args, "verify", lambda: run_verify(config), _print_drift)
    if code is not None:
        return code
    if not result["ok"]:
        drift = len(result["missing"]) + len(result["changed"]) + len(result["unknown"])
        if drift:
            print(f"pdata-sync: {drift} object(s) differ from the catalog", file=sys.stderr)
        if result["orthanc"] and result["orthanc"]["missing"]:
            gone = len(result["orthanc"]["missing"])
            print(
                f"pdata-sync: {gone} image(s) recorded as stored in Orthanc are no longer "
                "there (the next sync stores them again)",
                file=sys.stderr,
            )
        return EXIT_FAILED
    return EXIT_OK


def _print_drift(result: dict[str, Any]) -> None:
    print(
        f"clinic {result['clinic_id']}: {result['rows']} catalog rows, "
        f"{result['verified_ok']} verified and intact in S3"
    )
    for key in result["missing"]:
        print(f"  missing: {key}")
    for item in result["changed"]:
        print(f"  changed: {item['key']}: {item['reason']}")
    for key in result["unknown"]:
        print(f"  unknown: {key}")
    for key in result["unverified"]:
        print(f"  not yet verified: {key}")
    if result["orthanc"] is not None:
        print(f"Orthanc: {result['orthanc']['checked']} images recorded as held, checked")
        for key in result["orthanc"]["missing"]:
            print(f"  missing in Orthanc: {key}")


def _print_images(images: list[dict[str, Any]]) -> None:
    for img in images:
        print(f"{img['key']}  {img['size']} bytes  {img['last_modified']}")
        if "url" in img:
            print(f"  {img['url']}")
        if img.get("manifest_problem"):
            print(f"  not in the viewer manifest: {img['manifest_problem']}")
        if img.get("preview"):
            print(f"  preview ({img['preview_source']}): {img['preview']}")
        elif img.get("preview_problem"):
            print(f"  no preview: {img['preview_problem']}")
        if img.get("download_problem"):
            print(f"  not downloaded: {img['download_problem']}")
    print(f"{len(images)} image(s)", file=sys.stderr)


def _print_summary(summary: dict[str, Any], out: Any) -> None:
    print(
        f"clinic {summary['clinic_id']}: {summary['uploaded']} uploaded, "
        f"{summary['unchanged']} unchanged, {len(summary['rejected'])} rejected, "
        f"{len(summary['failed'])} failed "
        f"({summary['folders']} folders, {summary['patients_resolved']} patients resolved, "
        f"{summary['objects_planned']} objects)",
        file=out,
    )
    if summary.get("mode") == "incremental":
        print(
            f"  incremental run: read the {summary['folders']} folder(s) of changed patients; "
            f"{summary['patients_to_read_again']} to read again next run",
            file=out,
        )
    elif summary.get("full_reason"):
        print(f"  full run: {summary['full_reason']}", file=out)
    for reason, count in summary["skipped"].items():
        print(f"  skipped {count:>6}  {reason}", file=out)
    for label in ("rejected", "failed"):
        for item in summary[label]:
            print(f"  {label}: {item['path']}: {item['reason']}", file=out)
    orthanc = summary.get("orthanc")
    if orthanc is not None:
        print(orthanc_line(orthanc), file=out)
        for label in ("rejected", "failed"):
            for item in orthanc[label]:
                print(f"  {label} by Orthanc: {item['path']}: {item['reason']}", file=out)


@contextlib.contextmanager
def _terminal_progress(enabled: bool) -> Iterator[None]:
    """A status line on stderr while a sync runs, if stderr is a terminal (see progress)."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    from pdata_sync.pipeline import progress

    real = sys.stderr
    bar = progress.TerminalProgress(real)
    wrapped = progress.StatusLineStream(real, bar)
    # log handlers made before (the CLI's) and while (Prefect's) the run starts write
    # through the stand-in, so log lines never run into the status line
    handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is real]
    for handler in handlers:
        handler.setStream(wrapped)  # type: ignore[attr-defined]
    sys.stderr = wrapped  # type: ignore[assignment]
    progress.listen(bar)
    try:
        yield
    finally:
        progress.listen(None)
        sys.stderr = real
        for handler in handlers:
            handler.setStream(real)  # type: ignore[attr-defined]
        bar.finish()


def cmd_sync(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return refuse(str(exc))
    with _terminal_progress(not args.json):
        summary, code = _run_and_print(
            args,
            "sync",
            lambda: run_sync(config, args.full, args.new_catalog),
            lambda s: _print_summary(s, sys.stdout),
        )
    if code is not None:
        return code
    orthanc_down = (summary["orthanc"] or {}).get("unavailable")
    if orthanc_down:  # S3 was synced; Orthanc was not (product-rules §12.4)
        print(f"pdata-sync: {orthanc_down['reason']} (images in S3 only)", file=sys.stderr)
        if orthanc_down["config"]:
            return EXIT_REFUSED
    if summary["failed"]:
        print(f"pdata-sync: {len(summary['failed'])} image(s) failed", file=sys.stderr)
        return EXIT_FAILED
    if summary["orthanc"] is not None and summary["orthanc"]["failed"]:
        print(
            f"pdata-sync: {len(summary['orthanc']['failed'])} image(s) not stored in Orthanc "
            "(they are in S3; the next run tries Orthanc again)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def cmd_retrieve(args: argparse.Namespace) -> int:
    from pdata_sync.archive.retrieval import validate_expiry, validate_guid

    try:
        config = load_config(args.config)
        validate_guid(args.patient_guid)
        if args.presign is not None:
            validate_expiry(args.presign)
    except ConfigError as exc:
        return refuse(str(exc))
    images, code = _run_and_print(
        args,
        "retrieve",
        lambda: run_retrieve(
            config, args.patient_guid, args.presign, args.download, args.manifest, args.previews
        ),
        _print_images,
    )
    if code is not None:
        return code
    if args.manifest:
        print(f"pdata-sync: viewer manifest written to {args.manifest}", file=sys.stderr)
    refused = [i for i in images if i.get("download_problem")]
    if refused:
        print(
            f"pdata-sync: {len(refused)} image(s) not downloaded (nothing in "
            f"{args.download} was replaced)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _print_export(report: dict[str, Any]) -> None:
    by_source = ", ".join(f"{n} from {s}" for s, n in report["exported_by_source"].items())
    print(
        f"project {report['project']}: {report['exported']} exported ({by_source}), "
        f"{report['skipped_already_exported']} already exported, "
        f"{len(report['held_back'])} held back, {len(report['failed'])} failed"
    )
    for label in ("held_back", "failed"):
        for item in report[label]:
            print(f"  {label.replace('_', ' ')}: {item['key']}: {item['reason']}")
    for what, values in report.get("not_found", {}).items():
        for value in values:
            print(f"  not found: {what.removesuffix('s').replace('_', ' ')} {value}")
    if report.get("manifest"):
        print(f"manifest: {report['manifest']}")


def cmd_export(args: argparse.Namespace) -> int:
    """De-identified research export of patients or studies (docs/research-export.md)."""
    from pdata_sync.research.export import ExportRequest, read_request_csv, validate_project

    try:
        config = load_config(args.config)
        validate_project(args.project)
        if config.research is None:
            raise ConfigError(f"{args.config}: no research section (bucket, secret_block)")
        guids, studies = list(args.patient_guid or []), list(args.study_uid or [])
        if args.from_csv:
            from_file = read_request_csv(args.from_csv)
            guids += from_file.patient_guids
            studies += from_file.study_uids
        ExportRequest(tuple(guids), tuple(studies))
    except ConfigError as exc:
        return refuse(str(exc))
    report, code = _run_and_print(
        args, "export", lambda: run_export(config, args.project, guids, studies), _print_export
    )
    if code is not None:
        return code
    missing = sum(len(v) for v in report.get("not_found", {}).values())
    if report["failed"] or missing:
        problems = [f"{len(report['failed'])} instance(s) not exported"] if report["failed"] else []
        if missing:
            problems.append(
                f"{missing} requested patient(s) or study(ies) not found in clinic "
                f"{config.clinic_id}'s archive"
            )
        print(f"pdata-sync: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_view(args: argparse.Namespace) -> int:
    """Serve OHIF and the patient's manifest on 127.0.0.1 until interrupted."""
    from pdata_sync.archive.retrieval import validate_expiry, validate_guid

    try:
        config = load_config(args.config)
        guid = validate_guid(args.patient_guid)
        presign = validate_expiry(args.presign)
    except ConfigError as exc:
        return refuse(str(exc))
    return view(config, guid, presign, args.port)


def cmd_probe(args: argparse.Namespace) -> int:
    """What a sample of the share's files and their database rows say (pdata_sync.source.probe):
    read-only, nothing uploaded, no resolver, no names or CardIds printed."""
    from pdata_sync.source.pdata import check_root
    from pdata_sync.source.probe import probe, render_text
    from pdata_sync.source.sidexis_db import check_database

    try:
        config = load_config(args.config)
        if args.sample < 1:
            raise ConfigError("--sample: at least 1 file")
        check_root(config.pdata_root)
        with _loading_prefect():  # the database password may be in a Prefect block
            from pdata_sync.tasks.credentials import run_context

        engine = run_context(config).engine
        check_database(engine, config.database)
    except ConfigError as exc:
        return refuse(str(exc))
    report = probe(config, engine, args.sample)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(render_text(report)))
    return EXIT_OK


def cmd_config_reference(args: argparse.Namespace) -> int:
    """Every setting with its type, default, limits and description, from the models."""
    from pdata_sync.base.config_reference import render_reference

    sys.stdout.write(render_reference())
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return refuse(str(exc))
    if config.orthanc is not None:
        from pdata_sync.orthanc.client import insecure

        for warning in insecure(config.orthanc):
            print(f"pdata-sync: warning: {warning}", file=sys.stderr)
    print(f"{args.config}: valid config for clinic {config.clinic_id}")
    return EXIT_OK


def cmd_deployments_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pdata_sync.fleet.deployments import render_to

    try:
        current = render_to(Path(args.folder), Path(args.output), check=args.check)
    except ConfigError as exc:
        return refuse(str(exc))
    if args.check and not current:
        print(
            f"pdata-sync: {args.output} is out of date with {args.folder}/; run "
            "`pdata-sync deployments render`",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"{args.output} is up to date with {args.folder}/", file=sys.stderr)
    return EXIT_OK


def _check_block_name(name: str) -> str | None:
    from pdata_sync.base.config import _block_name

    try:
        _block_name(name)
    except ValueError as exc:
        return str(exc)
    return None


def cmd_blocks_aws(args: argparse.Namespace) -> int:
    problem = _check_block_name(args.name)
    if problem:
        return refuse(f"--name: {problem}")
    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        return refuse("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment first")
    with _loading_prefect():
        from pdata_sync.tasks.credentials import save_aws_block

    save_aws_block(args.name, key_id, secret, args.region)
    print(f"saved AwsCredentials block {args.name!r} (key id ...{key_id[-4:]})", file=sys.stderr)
    return EXIT_OK


def cmd_blocks_db_password(args: argparse.Namespace) -> int:
    problem = _check_block_name(args.name)
    if problem:
        return refuse(f"--name: {problem}")
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{args.what} password for block {args.name}: ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        return refuse("no password given (type it at the prompt or pipe it on stdin)")
    with _loading_prefect():
        from pdata_sync.tasks.credentials import save_secret_block

    save_secret_block(args.name, value)
    print(f"saved Secret block {args.name!r}", file=sys.stderr)
    return EXIT_OK


def cmd_blocks_research_secret(args: argparse.Namespace) -> int:
    """The research export's secret in a Secret block: generated (256 random bits) or read
    from stdin and checked. An existing block is never replaced: a new secret gives every
    patient of every project other pseudonyms."""
    import secrets

    from pdata_sync.research.deid import secret_problem

    problem = _check_block_name(args.name)
    if problem:
        return refuse(f"--name: {problem}")
    if args.generate:
        value = secrets.token_urlsafe(32)  # 32 random bytes, 43 base64url characters
    else:
        value = sys.stdin.readline().rstrip("\r\n")
        if problem := secret_problem(value):
            return refuse(f"the secret on stdin is too weak ({problem}); or use --generate")
    with _loading_prefect():
        from prefect.blocks.system import Secret

        from pdata_sync.tasks.credentials import save_secret_block

        try:
            Secret.load(args.name)
        except ValueError:
            pass  # no such block: the name is free
        else:
            return refuse(
                f"a block named {args.name!r} exists: it is not replaced (a new secret "
                "changes every pseudonym of every project); choose another name"
            )
        save_secret_block(args.name, value)
    print(
        f"saved Secret block {args.name!r} ({'generated, ' if args.generate else ''}"
        "256 bits); set research.secret_block to it",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    if args.view:
        from pdata_sync.demo.run import VIEW_PORT, view_demo

        return view_demo(workdir=args.workdir, port=VIEW_PORT if args.port is None else args.port)
    if args.serve:
        from pdata_sync.demo.serve import serve_demo

        return serve_demo(
            workdir=args.workdir, fresh=args.fresh, port=4200 if args.port is None else args.port
        )
    from pdata_sync.demo.run import run_demo

    return run_demo(workdir=args.workdir, fresh=args.fresh)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdata-sync",
        description="Copy a Sidexis PDATA archive to S3 under images/{patientGuid}/.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sync", help="sync one clinic's PDATA to S3")
    p.add_argument("--config", required=True, help="clinic config YAML file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument(
        "--full",
        action="store_true",
        help="read every patient folder (also with incremental runs), ask the resolver for "
        "every CardId (renewing cached answers) and list every patient in S3: a remapped "
        "patient is seen now, not after the cache expires",
    )
    p.add_argument(
        "--new-catalog",
        action="store_true",
        help="set the worker's catalog file aside (kept, renamed) and start a new one that "
        "trusts nothing, for a catalog that was lost or damaged (a run refuses those)",
    )
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("retrieve", help="list / presign / download a patient's images")
    p.add_argument("--config", required=True, help="clinic config YAML file (its s3 section)")
    p.add_argument("--patient-guid", required=True, help="the patient's GUID (canonical UUID)")
    p.add_argument(
        "--presign",
        type=int,
        nargs="?",
        const=3600,
        metavar="SECONDS",
        help="add presigned GET URLs valid this long (default 3600, at most 604800)",
    )
    p.add_argument("--download", metavar="DIR", help="download the images into DIR")
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help="write an OHIF DICOM JSON manifest (presigned URLs, --presign or 3600 s) to FILE",
    )
    p.add_argument(
        "--previews",
        metavar="DIR",
        help="write one PNG preview per image into DIR: Orthanc's, when the clinic has one, "
        "else drawn here",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON on stdout")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser(
        "export", help="de-identified research export of patients or studies to the research bucket"
    )
    p.add_argument("--config", required=True, help="clinic config YAML file (with research:)")
    p.add_argument("--project", required=True, help="project slug (lower-case, digits, dashes)")
    p.add_argument("--patient-guid", action="append", help="a patientGuid (repeatable)")
    p.add_argument("--study-uid", action="append", help="a StudyInstanceUID (repeatable)")
    p.add_argument(
        "--from-csv",
        metavar="FILE",
        help="patients and/or studies from a CSV file (patient_guid, study_instance_uid)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "verify", help="re-check S3 against the catalog (reads S3; records drift in the catalog)"
    )
    p.add_argument("--config", required=True, help="clinic config YAML file")
    p.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "view", help="show a patient's images in OHIF, served on 127.0.0.1 (reads S3 only)"
    )
    p.add_argument("--config", required=True, help="clinic config YAML file (its s3 section)")
    p.add_argument("--patient-guid", required=True, help="the patient's GUID (canonical UUID)")
    p.add_argument(
        "--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free)"
    )
    p.add_argument(
        "--presign",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="lifetime of the image links (default 3600, at most 604800); renewed while "
        "the viewer runs",
    )
    p.set_defaults(func=cmd_view)

    p = sub.add_parser(
        "thumbnails", help="make the missing thumbnails of archived images (reads S3 only)"
    )
    p.add_argument("--config", required=True, help="clinic config YAML file")
    p.add_argument("--patient-guid", help="only this patient's images")
    p.add_argument("--redo", action="store_true", help="draw every thumbnail again")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=cmd_thumbnails)

    p = sub.add_parser(
        "probe",
        help="read a sample of the share and the database (nothing uploaded) and report how "
        "file headers relate to folders and CardIds, and media rows to folders",
    )
    p.add_argument("--config", required=True, help="clinic config YAML file")
    p.add_argument(
        "--sample", type=int, default=500, help="files to read (default 500, spread over folders)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("check-config", help="validate a clinic config file and exit")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "config-reference", help="print the configuration reference (docs/config.md) as Markdown"
    )
    p.set_defaults(func=cmd_config_reference)

    p = sub.add_parser("deployments", help="per-clinic deployments and prefect.yaml")
    dsub = p.add_subparsers(dest="deployments_command", required=True)
    r = dsub.add_parser("render", help="write prefect.yaml from deployments/*.yaml")
    r.add_argument("--folder", default="deployments", help="folder of clinic files")
    r.add_argument("--output", default="prefect.yaml")
    r.add_argument("--check", action="store_true", help="fail if the output is out of date")
    r.set_defaults(func=cmd_deployments_render)

    p = sub.add_parser("blocks", help="store secrets in Prefect blocks")
    bsub = p.add_subparsers(dest="blocks_command", required=True)
    b = bsub.add_parser(
        "aws", help="AwsCredentials block from AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY"
    )
    b.add_argument("--name", required=True, help="block name, e.g. pdata-sync-aws")
    b.add_argument("--region", default=None)
    b.set_defaults(func=cmd_blocks_aws)
    b = bsub.add_parser("db-password", help="Secret block with the database password (stdin)")
    b.add_argument("--name", required=True, help="block name, e.g. clinic-001-sidexis-password")
    b.set_defaults(func=cmd_blocks_db_password, what="database")
    b = bsub.add_parser("orthanc-password", help="Secret block with the Orthanc password (stdin)")
    b.add_argument("--name", required=True, help="block name, e.g. clinic-001-orthanc-password")
    b.set_defaults(func=cmd_blocks_db_password, what="Orthanc")
    b = bsub.add_parser(
        "research-secret",
        help="Secret block with the research export's key (--generate, or stdin); never "
        "replaces one",
    )
    b.add_argument("--name", required=True, help="block name, e.g. pdata-sync-research-key")
    b.add_argument("--generate", action="store_true", help="generate 256 random bits (recommended)")
    b.set_defaults(func=cmd_blocks_research_secret)

    p = sub.add_parser("demo", help="run a generated demo clinic end to end on this machine")
    p.add_argument("--workdir", default=".demo", help="where the demo keeps its data")
    p.add_argument("--fresh", action="store_true", help="start from an empty demo")
    p.add_argument(
        "--serve",
        action="store_true",
        help="keep running as a Prefect server with the demo clinic deployed and workers "
        "started, until Ctrl-C (docs/operations.md)",
    )
    p.add_argument(
        "--view",
        action="store_true",
        help="after a demo run: start its S3 server again and show the first demo patient's "
        "X-rays in OHIF (pdata-sync view), until Ctrl-C",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="Prefect UI/API port with --serve (default 4200), viewer port with --view "
        "(default 8765); 0: any free port",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def _skip_final_collections() -> None:
    """Let the process end without Python's last searches for garbage cycles.

    At exit Python runs full garbage collections over every object still alive; after
    Prefect, pydantic, SQLAlchemy and boto3 are loaded that costs 0.5-0.9 s of a 4 s
    no-change run (bench/RESULTS.md). Freezing the objects in an atexit handler skips it and
    takes nothing away: every atexit handler still runs (Prefect's log and event drains,
    logging.shutdown, finalizers of temporary folders), objects are still freed by reference
    counting; only cycles still alive at exit are not searched for, and Python does not
    promise to finalize those anyway.
    """
    atexit.unregister(gc.freeze)  # once per process, also when main() is called again
    atexit.register(gc.freeze)


def main(argv: list[str] | None = None) -> int:
    _skip_final_collections()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per HTTP request to the Prefect API drowns what matters.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    protect_logs()
    try:
        return args.func(args)
    except PdataSyncError as exc:
        return refuse(str(exc)) if isinstance(exc, ConfigError) else _fail(exc)
    except KeyboardInterrupt:
        print("pdata-sync: interrupted", file=sys.stderr)
        return 130


def _fail(exc: BaseException) -> int:
    print(f"pdata-sync: {describe(exc)}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
