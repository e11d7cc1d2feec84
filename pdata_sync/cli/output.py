"""What the commands print: a flow's result as one JSON document on stdout (everything
else, Prefect's output included, sent to stderr) or as text for a person, and the status
line of a sync on a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pdata_sync.base.errors import ClinicBusyError, ConfigError, describe
from pdata_sync.console import (
    EXIT_BUSY,
    EXIT_FAILED,
    orthanc_line,
    refuse,
)


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[Any]:
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


def run_and_print(
    args: argparse.Namespace,
    label: str,
    run: Callable[[], tuple[Any, BaseException | None]],
    print_text: Callable[[Any], None],
    during: contextlib.AbstractContextManager[Any] | None = None,
) -> tuple[Any, int | None]:
    """Run a flow (its output kept off stdout with ``--json``; inside ``during``, e.g. the
    terminal's status line, which is finished before anything is printed) and print its
    result as JSON or text. Returns (result, None), or (None, the exit code) when the run
    ended in error."""
    with stdout_to_stderr(args.json) as out, during or contextlib.nullcontext():
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


def print_backfill(report: dict[str, Any]) -> None:
    print(
        f"clinic {report['clinic_id']}: {report['images']} images, {report['made']} "
        f"thumbnails made, {report['present']} already there"
    )
    for item in report["not_made"]:
        print(f"  not made: {item['key']}: {item['reason']}")


def print_hold(report: dict[str, Any]) -> None:
    print(
        f"clinic {report['clinic_id']}: legal hold {report['status']} on "
        f"{report['versions']} version(s) of {len(report['images'])} image(s) of patient "
        f"{report['patient_guid']} (with their thumbnails and retired copies), "
        f"{len(report['failed'])} failed"
    )
    for item in report["failed"]:
        print(f"  failed: {item['key']} (version {item['version']}): {item['reason']}")


def print_restore(report: dict[str, Any]) -> None:
    print(
        f"clinic {report['clinic_id']}: {report['objects']} images in S3, "
        f"{report['written']} written ({report['bytes_written']:,} bytes), "
        f"{report['present']} already there, {report['unmapped']} unmapped "
        f"(under unmapped/), {len(report['failed'])} not restored"
    )
    print(f"  list of what is there: {report['csv']}")
    for item in report["failed"]:
        print(f"  not restored: {item['key']}: {item['reason']}")


def print_drift(result: dict[str, Any]) -> None:
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
    for item in result.get("unencrypted", []):
        print(f"  not encrypted at rest: {item['key']}: {item['reason']}")
    if result["orthanc"] is not None:
        print(f"Orthanc: {result['orthanc']['checked']} images recorded as held, checked")
        for key in result["orthanc"]["missing"]:
            print(f"  missing in Orthanc: {key}")


def print_images(images: list[dict[str, Any]]) -> None:
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


def print_summary(summary: dict[str, Any], out: Any) -> None:
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
    if summary.get("window_ended"):
        print(f"  {summary['window_ended']}; the next run goes on from there", file=out)
        rate, runs = summary.get("rate"), summary.get("runs_left")
        if rate and runs:
            print(
                f"  this run: {rate['mbit_per_s']} Mbit/s, {rate['images_per_s']} images/s; "
                f"about {runs} more run(s) like it for what is left",
                file=out,
            )
    archived = summary.get("archived")
    if archived and archived["images"]:
        left = (summary.get("left") or {}).get("images")
        share = f" ({archived['percent']} % of what is known)" if left else ""
        print(
            f"  archive: {archived['images']:,} images ({archived['bytes'] / 1e9:,.2f} GB) "
            f"confirmed in S3{share}",
            file=out,
        )
    seconds = summary.get("seconds")
    took = f" in {seconds:,.1f} s" if seconds is not None else ""
    thumbs = summary.get("thumbnails") or {}
    print(
        f"  {summary['bytes_uploaded'] / 1e6:,.1f} MB uploaded{took}; "
        f"{len(summary.get('retired') or [])} retired, {len(summary.get('notes') or [])} "
        f"note(s), {thumbs.get('made', 0)} thumbnail(s) made, "
        f"{len(thumbs.get('not_made') or [])} not made",
        file=out,
    )
    for reason, count in summary["skipped"].items():
        print(f"  skipped {count:>6}  {reason}", file=out)
    for item in summary.get("retired") or []:
        print(f"  retired: {item['key']}: {item['reason']}", file=out)
    for label in ("rejected", "failed", "notes"):
        for item in summary[label]:
            print(f"  {label.removesuffix('s')}: {item['path']}: {item['reason']}", file=out)
    for item in thumbs.get("not_made") or []:
        print(f"  thumbnail not made: {item['path']}: {item['reason']}", file=out)
    orthanc = summary.get("orthanc")
    if orthanc is not None:
        print(orthanc_line(orthanc), file=out)
        for label in ("rejected", "failed"):
            for item in orthanc[label]:
                print(f"  {label} by Orthanc: {item['path']}: {item['reason']}", file=out)


@contextlib.contextmanager
def terminal_progress(enabled: bool) -> Iterator[None]:
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


def print_export(report: dict[str, Any]) -> None:
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
