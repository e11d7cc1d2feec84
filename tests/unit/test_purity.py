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
