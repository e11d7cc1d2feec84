"""The core package stays free of Prefect (only the CLI starts flows, lazily)."""

import ast
from pathlib import Path

import pdata_sync

CORE = Path(pdata_sync.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_prefect_in_the_core():
    offenders = [
        str(p.relative_to(CORE))
        for p in CORE.rglob("*.py")
        if p.name != "cli.py" and {"prefect", "prefect_aws", "flows", "tasks"} & imported_modules(p)
    ]
    assert offenders == []


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
        "import sys, pdata_sync.cli, flows.sync, flows.verify; "
        "print(sorted(m for m in ('numpy', 'PIL', 'pydicom') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=CORE.parent
    )
    assert out.stdout.strip() == "[]", out.stdout
