"""The house keeps its rules: the layer contract (.importlinter: cli > demo > console >
flows | fleet > tasks > pipeline > domains > base, no Prefect below tasks, no circle),
a docstring in every module, and no image library on a run that draws nothing."""

import ast
from pathlib import Path

import pdata_sync

CORE = Path(pdata_sync.__file__).parent


def test_the_import_contract_holds(monkeypatch):
    """import-linter reads the imports (also those inside functions) of the installed
    package and checks .importlinter's contracts; it prints what broke."""
    from importlinter.cli import lint_imports

    monkeypatch.chdir(CORE.parent)
    assert lint_imports(config_filename=".importlinter", no_cache=True, no_logo=True) == 0


def test_every_module_has_a_docstring():
    missing = [
        str(p) for p in CORE.rglob("*.py") if ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert missing == []


def test_a_sync_that_draws_and_reads_no_image_imports_no_image_library():
    """numpy, Pillow and pydicom cost about 0.5 s at start-up: a nightly run with nothing
    new (most nights) imports them only when it reads a header or draws a thumbnail."""
    import subprocess
    import sys

    probe = (
        "import sys, pdata_sync.cli, pdata_sync.flows.sync, pdata_sync.flows.verify; "
        "print(sorted(m for m in ('numpy', 'PIL', 'pydicom') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=CORE.parent
    )
    assert out.stdout.strip() == "[]", out.stdout
