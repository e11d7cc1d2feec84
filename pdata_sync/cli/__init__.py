"""Command line: ``pdata-sync sync | retrieve | restore | hold | inventory | audit | view |
verify | export | thumbnails | probe | check-config | config-reference | deployments | blocks |
demo``.

Exit codes: 0 nothing failed; 1 some images failed, ``verify`` found drift, or the run
crashed; 2 the input was refused (bad config, bad patient GUID, bad option). With
``--json`` stdout holds exactly one JSON document and everything else (logs) goes to stderr.

Parsing and printing only: the flows are run by :mod:`pdata_sync.console`, which imports
Prefect lazily, only when a command needs it. Here: ``main`` (logging, the exit-time
garbage collection skipped, errors to one line); the parser in :mod:`~pdata_sync.cli.parser`;
the commands in :mod:`~pdata_sync.cli.runs` (a clinic's runs) and
:mod:`~pdata_sync.cli.setup` (a worker's set-up); what they print in
:mod:`~pdata_sync.cli.output`.
"""

from __future__ import annotations

import atexit
import gc
import logging
import sys

from pdata_sync.base.errors import ConfigError, PdataSyncError, describe
from pdata_sync.base.logsafety import protect_logs
from pdata_sync.cli.parser import build_parser
from pdata_sync.console import EXIT_FAILED, brief_known_errors, refuse

__all__ = ["build_parser", "main"]


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
    # One line per HTTP request to the Prefect API drowns what matters; botocore says where
    # it found credentials on every run.
    for library in ("httpx", "botocore", "boto3"):
        logging.getLogger(library).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    protect_logs()
    brief_known_errors(not args.verbose)  # a refusal is its line; -v shows the traceback
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
