"""The commands that run a clinic's flows or read its archive: ``sync``, ``verify``,
``retrieve``, ``export``, ``thumbnails``, ``restore``, ``hold``, ``inventory``, ``audit``,
``view``, ``probe``. Each loads and checks its input (a refusal is one line and exit 2),
runs through :mod:`pdata_sync.console`, prints, and answers the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pdata_sync.base.config import load_config
from pdata_sync.base.errors import ConfigError
from pdata_sync.base.local_files import NotReplaced
from pdata_sync.cli.output import (
    print_backfill,
    print_drift,
    print_export,
    print_hold,
    print_images,
    print_restore,
    print_summary,
    run_and_print,
    terminal_progress,
)
from pdata_sync.console import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    _loading_prefect,
    refuse,
    run_export,
    run_fleet_report,
    run_hold,
    run_restore,
    run_retrieve,
    run_sync,
    run_thumbnails,
    run_verify,
    view,
)


def cmd_thumbnails(args: argparse.Namespace) -> int:
    from pdata_sync.archive.retrieval import validate_guid

    try:
        config = load_config(args.config)
        if args.patient_guid is not None:
            validate_guid(args.patient_guid)
    except ConfigError as exc:
        return refuse(str(exc))
    _, code = run_and_print(
        args,
        "thumbnails",
        lambda: run_thumbnails(config, args.patient_guid, args.redo),
        print_backfill,
    )
    return EXIT_OK if code is None else code


def cmd_restore(args: argparse.Namespace) -> int:
    from pdata_sync.archive.restore import check_target
    from pdata_sync.archive.retrieval import validate_guid

    try:
        config = load_config(args.config)
        guids = [validate_guid(g) for g in args.patient_guid or []]
        check_target(args.to, config.pdata_root)
    except ConfigError as exc:
        return refuse(str(exc))
    report, code = run_and_print(
        args, "restore", lambda: run_restore(config, args.to, guids), print_restore
    )
    if code is not None:
        return code
    if report["failed"]:
        print(f"pdata-sync: {len(report['failed'])} image(s) not restored", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_hold(args: argparse.Namespace) -> int:
    from pdata_sync.archive.retrieval import validate_guid

    try:
        config = load_config(args.config)
        guid = validate_guid(args.patient_guid)
    except ConfigError as exc:
        return refuse(str(exc))
    report, code = run_and_print(
        args, "hold", lambda: run_hold(config, guid, not args.off), print_hold
    )
    if code is not None:
        return code
    if report["failed"]:
        print(
            f"pdata-sync: the legal hold was not set on {len(report['failed'])} version(s)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def cmd_fleet_report(args: argparse.Namespace) -> int:
    """The fleet report from the Prefect server's run history (flow ``fleet-report``)."""
    if not 1 <= args.days <= 366:
        return refuse("--days: 1 to 366")

    def show(report: dict[str, Any]) -> None:
        print(report["headline"])
        print(f"  table: {report['parquet']}\n  chart: {report['chart']}")

    _, code = run_and_print(
        args, "fleet-report", lambda: run_fleet_report(args.days, args.out_dir), show
    )
    return EXIT_OK if code is None else code


def _catalog_images(config: Any) -> Any:
    """The clinic's rows in the worker's catalog (ClinicImages), read where the command runs;
    the catalog's password may be in a Prefect block."""
    with _loading_prefect():
        from pdata_sync.tasks.credentials import run_context

    return run_context(config).images()


def cmd_inventory(args: argparse.Namespace) -> int:
    """The catalog's rows of the clinic as Parquet or CSV (pdata_sync.pipeline.inventory):
    read from the worker's catalog only, nothing asked of S3."""
    from pdata_sync.pipeline.inventory import check_out, write_inventory

    try:
        config = load_config(args.config)
        out = check_out(args.out)
        rows = write_inventory(_catalog_images(config), out)
    except ConfigError as exc:
        return refuse(str(exc))
    except NotReplaced as exc:
        return refuse(f"inventory: {exc} (remove it, or choose another file)")
    answer = {"clinic_id": config.clinic_id, "rows": rows, "out": str(out)}
    print(json.dumps(answer) if args.json else f"clinic {config.clinic_id}: {rows} rows in {out}")
    return EXIT_OK


def audit_line(event: dict[str, Any]) -> str:
    """One event of ``pdata-sync audit`` as text; a retire's detail says where it went."""
    moved = f"  -> {event['detail']}" if event.get("detail") else ""
    return (
        f"{event['at']}  {event['key']}  {event['transition']}: {event['from_state'] or '-'} -> "
        f"{event['to_state'] or '-'}  run {event['flow_run_id'] or '-'}{moved}"
    )


def cmd_audit(args: argparse.Namespace) -> int:
    """An object's recorded history (by key, by flow run or by patient) from the worker's
    catalog: every transition with its run and time; nothing asked of S3, no names."""
    from pdata_sync.archive.retrieval import validate_guid

    try:
        config = load_config(args.config)
        if args.patient_guid is not None:
            validate_guid(args.patient_guid)
        events = _catalog_images(config).audit(
            key=args.key, flow_run_id=args.flow_run, patient_guid=args.patient_guid
        )
    except ConfigError as exc:
        return refuse(str(exc))
    for event in events:
        event["at"] = event["at"].isoformat() if event["at"] is not None else None
    if args.json:
        print(json.dumps({"clinic_id": config.clinic_id, "events": events}, indent=2))
        return EXIT_OK
    for e in events:
        print(audit_line(e))
    if not events:
        print(f"clinic {config.clinic_id}: nothing recorded for that")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return refuse(str(exc))
    result, code = run_and_print(args, "verify", lambda: run_verify(config), print_drift)
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


def cmd_sync(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return refuse(str(exc))
    started = time.monotonic()

    def timed() -> tuple[Any, BaseException | None]:
        result, error = run_sync(config, args.full, args.new_catalog)
        if result is not None:  # what the person at the terminal waited, Prefect's start too
            result["seconds"] = round(time.monotonic() - started, 1)
        return result, error

    summary, code = run_and_print(
        args,
        "sync",
        timed,
        lambda s: print_summary(s, sys.stdout),
        during=terminal_progress(not args.json),  # its line ends before the summary
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
    images, code = run_and_print(
        args,
        "retrieve",
        lambda: run_retrieve(
            config, args.patient_guid, args.presign, args.download, args.manifest, args.previews
        ),
        print_images,
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
    report, code = run_and_print(
        args, "export", lambda: run_export(config, args.project, guids, studies), print_export
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
