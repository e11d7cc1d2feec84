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
