"""What type (1, 1C, 2, 2C, 3) an attribute has in the IOD of a SOP class, from the DICOM
standard's tables as highdicom ships them as data (SOP class -> IOD -> modules -> attributes
with their sequence path).

De-identification needs it: a combined action code of PS3.15 Table E.1-1 (X/D, X/Z/D, Z/D,
X/Z/U*) says "remove unless the IOD requires the attribute (type 1, 2)", so the choice is
made per attribute and per the image's IOD (docs/research-export.md). The JSON files are
read directly, without importing highdicom (which would load its imaging stack for three
tables).
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

REQUIRED = frozenset({"1", "1C"})  # present with a value (1C: when its condition holds)
PRESENT = frozenset({"2", "2C"})  # present, may be empty
_STRICTNESS = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


def _standard_dir() -> Path:
    spec = importlib.util.find_spec("highdicom")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("highdicom is not installed: its IOD tables are a dependency")
    return Path(next(iter(spec.submodule_search_locations))) / "_standard"


@cache
def _table(name: str) -> Any:
    return json.loads((_standard_dir() / name).read_text(encoding="utf-8"))


@lru_cache(maxsize=64)
def attribute_types(sop_class_uid: str) -> dict[tuple[str, ...], str] | None:
    """``{(enclosing sequence keywords..., keyword): type}`` for every attribute of the IOD
    of ``sop_class_uid`` (the strictest type where modules disagree), or None for a SOP
    class the tables do not know."""
    iod = _table("sop_class_iod_map.json").get(sop_class_uid.strip())
    if iod is None:
        return None
    attributes = _table("module_attribute_map.json")
    types: dict[tuple[str, ...], str] = {}
    for module in _table("iod_module_map.json").get(iod, []):
        for attr in attributes.get(module["key"], []):
            where = (*attr["path"], attr["keyword"])
            kind = attr["type"]
            if kind not in _STRICTNESS:
                continue  # untyped rows of the tables ("None"): as if unknown
            if where not in types or _STRICTNESS[kind] < _STRICTNESS[types[where]]:
                types[where] = kind
    return types
