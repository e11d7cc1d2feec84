"""requirements.lock is what every machine installs (.ci/bootstrap): it must pin every
dependency pyproject.toml declares, within pyproject's ranges, and this environment must be
exactly that set (a dependency changed without `make lock` fails here)."""

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, pinned = line.split(" ")[0].split("==")
            pins[canonicalize_name(name.split("[")[0])] = pinned
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = locked()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside {req.specifier}: "
            "run `make lock`"
        )


def test_the_installed_set_is_the_locked_one():
    for name, pinned in locked().items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, locked {pinned}"


def test_sqlalchemy_stays_below_2_1():
    # Prefect 3.8.8's scheduler creates no run with SQLAlchemy 2.1 (test_schedules_fire)
    assert locked()["sqlalchemy"].startswith("2.0.")
