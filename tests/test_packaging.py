"""pyproject.toml declares its license the PEP 639 way, so building the package prints no license warning."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_with_its_file() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    # A TOML table (`{ text = "MIT" }`) makes setuptools >= 77 warn on every build, three times per install.
    assert project["license"] == "MIT"
    for pattern in project["license-files"]:
        assert list(ROOT.glob(pattern)), f"license-files pattern {pattern!r} matches no file"


def test_build_requires_a_setuptools_that_knows_spdx_licenses() -> None:
    build = _pyproject()["build-system"]
    assert isinstance(build, dict)
    [setuptools] = [req for req in build["requires"] if req.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", setuptools)
    assert match and int(match.group(1)) >= 77, setuptools  # 77.0: PEP 639 `license` and `license-files`


def test_the_test_extra_is_still_there() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    assert any(req.startswith("pytest") for req in extras["test"])
