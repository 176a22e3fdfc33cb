"""What the Dockerfile installs (`pip install --no-deps .`): every package of
the project, with the templates and static files its apps ship. Checked from
pyproject.toml and the tree, with no build (a build would fetch setuptools)."""

from __future__ import annotations

import fnmatch
import tomllib

from tests.conftest import PROJECT_DIR

PYPROJECT = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
NOT_SHIPPED = {"tests", "bench"}


def test_every_package_of_the_project_is_installed() -> None:
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(
        path.parent.name
        for path in PROJECT_DIR.glob("*/__init__.py")
        if path.parent.name not in NOT_SHIPPED and not path.parent.name.startswith(".")
    )
    assert {"core", "tenancy", "operations", "banks", "opsproject", "opsctl"} <= set(packages)
    missing = [name for name in packages if not any(fnmatch.fnmatch(name, pattern) for pattern in include)]
    assert not missing, f"not installed by `pip install .`: {missing}; add them to [tool.setuptools.packages.find]"


def test_every_app_ships_its_templates_and_static_files() -> None:
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for folder in ("templates", "static"):
        for found in PROJECT_DIR.glob(f"*/{folder}"):
            if found.parent.name in NOT_SHIPPED or not any(p.is_file() for p in found.rglob("*")):
                continue
            assert f"{folder}/**/*" in data.get(found.parent.name, []), (
                f"{found.parent.name}/{folder} is not package data"
            )
