"""The commands that set a worker up: ``check-config``, ``config-reference``,
``deployments render``, ``blocks`` (secrets into Prefect blocks, never echoed) and ``demo``.
"""

from __future__ import annotations

import argparse
import os
import sys

from pdata_sync.base.config import load_config
from pdata_sync.base.errors import ConfigError
from pdata_sync.console import (
    EXIT_FAILED,
    EXIT_OK,
    _loading_prefect,
    refuse,
)


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

    return run_demo(workdir=args.workdir, fresh=args.fresh, shell=args.shell)
