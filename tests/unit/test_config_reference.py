"""docs/config.md is the reference the models render: every setting there, none stale."""

from pathlib import Path

from pydantic import BaseModel

from pdata_sync.base.config import ClinicConfig
from pdata_sync.base.config_reference import render_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_the_config_reference_is_what_the_models_say():
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        "docs/config.md is stale: run `pdata-sync config-reference > docs/config.md`"
    )


def test_every_setting_of_every_section_is_in_the_reference():
    text = render_reference()

    def settings(model, prefix=""):
        for name, info in model.model_fields.items():
            key = info.alias or name
            yield prefix, key
            sub = next(
                (a for a in (info.annotation, *getattr(info.annotation, "__args__", ()))
                 if isinstance(a, type) and issubclass(a, BaseModel)),
                None,
            )  # fmt: skip
            if sub is not None:
                yield from settings(sub, f"{prefix}.{key}" if prefix else key)

    missing = []
    for prefix, key in settings(ClinicConfig):
        section = text.split(f"## `{prefix}`")[1] if prefix else text.split("## Top level")[1]
        if f"| `{key}` |" not in section.split("\n## ")[0]:
            missing.append(f"{prefix}.{key}" if prefix else key)
    assert missing == []
