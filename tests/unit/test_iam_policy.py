"""The worker's IAM policy (ops/worker-iam-policy.json, ADR 0017) and the code agree: the
policy never lets the worker destroy a version or lift a lock, and the code never asks."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEVER = (
    "s3:BypassGovernanceRetention",
    "s3:DeleteObjectVersion",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPolicy",
    "s3:DeleteBucket",
)


def statements() -> list[dict]:
    return json.loads((ROOT / "ops" / "worker-iam-policy.json").read_text())["Statement"]


def actions(statement: dict) -> list[str]:
    found = statement["Action"]
    return [found] if isinstance(found, str) else found


def test_the_policy_denies_what_would_destroy_or_unprotect_the_archive():
    denied = {a for s in statements() if s["Effect"] == "Deny" for a in actions(s)}
    assert set(NEVER) <= denied
    for statement in (s for s in statements() if s["Effect"] == "Allow"):
        for granted in actions(statement):
            # no wildcard that would cover one of them, even where a Deny also stands
            assert not [n for n in NEVER if fnmatch(n, granted)], granted


def test_the_code_never_asks_to_bypass_a_lock_or_delete_a_version():
    source = "\n".join(p.read_text() for p in (ROOT / "pdata_sync").rglob("*.py"))
    assert not re.search(r"BypassGovernance|bypass-governance", source, re.IGNORECASE)
    assert not re.search(r"delete_object\([^)]*VersionId", source, re.DOTALL)
    assert "delete_object_version" not in source
