"""What a fresh pdata-sync process costs at start and exit: the CLI skips Python's final
garbage-cycle searches at exit (a measured 0.5-0.9 s per run), the flows' imports are exempt
from the searches during the run, and a run that draws and reads no image imports no image
library. Each test starts an interpreter of its own (atexit and imports are per process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pdata_sync

# An atexit handler registered before main() runs after the CLI's own one (last registered,
# first run): by then the objects must be frozen, so the interpreter's final collections skip
# them.
PROBE = """
import atexit, gc, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0, flush=True))
from pdata_sync.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
"""


def _run(script: str) -> list[str]:
    """The stdout lines of ``script`` run in a fresh interpreter (atexit is per process)."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip().splitlines()


def test_cli_freezes_objects_before_the_final_collections() -> None:
    lines = _run(PROBE)
    assert lines[-1] == "frozen True"
    assert any(line.startswith("usage: pdata-sync") for line in lines)


# gc.freeze is looked up when main() registers it, so a counting stand-in sees every call.
TWICE = """
import atexit, gc
calls = []
real_freeze = gc.freeze
gc.freeze = lambda: (calls.append(1), real_freeze())
atexit.register(lambda: print("freezes", len(calls), flush=True))
from pdata_sync.cli import main
for _ in range(2):
    try:
        main(["--help"])
    except SystemExit:
        pass
"""


def test_main_registers_the_freeze_once_however_often_it_runs() -> None:
    assert _run(TWICE)[-1] == "freezes 1"


FROZEN_IMPORTS = """
import gc
from pdata_sync.console import _loading_prefect
try:
    with _loading_prefect():
        print("inside", gc.isenabled(), flush=True)
        raise RuntimeError("an import failed")
except RuntimeError:
    pass
print("after", gc.isenabled(), gc.get_freeze_count() > 0, flush=True)
"""


def test_imports_run_without_collection_which_is_on_again_even_after_a_failure() -> None:
    assert _run(FROZEN_IMPORTS) == ["inside False", "after True True"]


def test_a_sync_that_draws_and_reads_no_image_imports_no_image_library():
    """numpy, Pillow and pydicom cost about 0.5 s at start-up: a nightly run with nothing
    new (most nights) imports them only when it reads a header or draws a thumbnail."""
    probe = (
        "import sys, pdata_sync.cli, pdata_sync.flows.sync, pdata_sync.flows.verify; "
        "print(sorted(m for m in ('numpy', 'PIL', 'pydicom') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(pdata_sync.__file__).parent.parent,
    )
    assert out.stdout.strip() == "[]", out.stdout
