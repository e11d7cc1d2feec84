"""The argument parser: every command, its options and their help."""

from __future__ import annotations

import argparse

from pdata_sync.cli.alerts import cmd_deployments_alerts
from pdata_sync.cli.runs import (
    cmd_audit,
    cmd_export,
    cmd_fleet_report,
    cmd_hold,
    cmd_inventory,
    cmd_probe,
    cmd_restore,
    cmd_retrieve,
    cmd_sync,
    cmd_thumbnails,
    cmd_verify,
    cmd_view,
)
from pdata_sync.cli.setup import (
    cmd_blocks_aws,
    cmd_blocks_db_password,
    cmd_blocks_research_secret,
    cmd_check_config,
    cmd_config_reference,
    cmd_demo,
    cmd_deployments_render,
)


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

    p = sub.add_parser(
        "restore", help="write the clinic's archived images back as a Sidexis share, from S3"
    )
    p.add_argument("--config", required=True, help="clinic config YAML file")
    p.add_argument(
        "--to",
        required=True,
        help="a new folder for the share (P_{patientId}/...); never inside pdata_root",
    )
    p.add_argument(
        "--patient-guid",
        action="append",
        help="restore only this patient's images (repeat for several)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "hold", help="set or clear a legal hold on every version of a patient's objects"
    )
    p.add_argument("--config", required=True, help="clinic config YAML file")
    p.add_argument("--patient-guid", required=True, help="the patient's GUID (canonical UUID)")
    p.add_argument("--off", action="store_true", help="clear the hold instead of setting it")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=cmd_hold)

    p = sub.add_parser(
        "fleet-report",
        help="every clinic at a glance from the Prefect server's run history: a table, a "
        "chart and a Parquet file",
    )
    p.add_argument("--days", type=int, default=30, help="the period the report covers")
    p.add_argument(
        "--out-dir",
        default=None,
        help="folder for {date}.parquet and {date}.png (default: the state folder's reports/fleet)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_fleet_report)

    p = sub.add_parser("inventory", help="export the catalog's rows as Parquet or CSV")
    p.add_argument("--config", required=True, help="clinic config YAML file")
    p.add_argument("--out", required=True, help="the file to write: FILE.parquet or FILE.csv")
    p.add_argument("--json", action="store_true", help="print the answer as JSON on stdout")
    p.set_defaults(func=cmd_inventory)

    p = sub.add_parser("audit", help="an object's recorded history, from the catalog")
    p.add_argument("--config", required=True, help="clinic config YAML file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="one object key (images/{patientGuid}/...)")
    which.add_argument("--flow-run", help="what one flow run did (its id)")
    which.add_argument("--patient-guid", help="every key of one patient")
    p.add_argument("--json", action="store_true", help="print the events as JSON on stdout")
    p.set_defaults(func=cmd_audit)

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
    a = dsub.add_parser(
        "alerts",
        help="apply the clinic files' alerts to the Prefect server as automations "
        "(after `prefect deploy --all`)",
    )
    a.add_argument("--folder", default="deployments", help="folder of clinic files")
    a.add_argument(
        "--prune",
        action="store_true",
        help="also delete pdata-sync automations of clinics without a file in the folder",
    )
    a.set_defaults(func=cmd_deployments_alerts)

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
        "--shell",
        action="store_true",
        help="after the demo run, keep its S3, resolver and Orthanc up and write their "
        "environment to <workdir>/shell.env, so pdata-sync can be run by hand, until Ctrl-C",
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
