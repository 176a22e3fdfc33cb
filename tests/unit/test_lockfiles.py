"""The lockfiles: every dependency pinned with its hashes, and what installs
the project (make, the Dockerfile) installing from them. A dependency added
to pyproject.toml without `make lock` fails here, not on a user's machine."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.conftest import PROJECT_DIR

PYPROJECT = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    """A requirement's project name, normalized (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"not a requirement: {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _pinned(lockfile: str) -> dict[str, list[str]]:
    """name -> the hashes of its pinned version."""
    text = (PROJECT_DIR / "requirements" / lockfile).read_text()
    pins: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        pin = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==\S+", block)
        if pin:
            pins[_name(pin.group(1))] = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
    return pins


@pytest.mark.parametrize(("lockfile", "groups"), [("base.txt", ()), ("test.txt", ("test",))])
def test_every_dependency_is_pinned_with_hashes(lockfile: str, groups: tuple[str, ...]) -> None:
    wanted = [*PYPROJECT["project"]["dependencies"]]
    for group in groups:
        wanted += PYPROJECT["project"]["optional-dependencies"][group]
    pins = _pinned(lockfile)
    missing = sorted({_name(r) for r in wanted} - set(pins))
    assert not missing, f"not in requirements/{lockfile}: {missing}; run `make lock`"
    unhashed = sorted(name for name, hashes in pins.items() if not hashes)
    assert not unhashed, f"pinned without a hash in requirements/{lockfile}: {unhashed}"


def test_the_makefile_and_the_dockerfile_install_the_locked_versions() -> None:
    makefile = (PROJECT_DIR / "Makefile").read_text()
    assert "--require-hashes -r requirements/test.txt" in makefile
    assert "--no-deps -e ." in makefile
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/base.txt" in dockerfile
    assert re.search(r"pip install [^\n]*--no-deps \.", dockerfile)
