"""A required peer that is missing fails the run under `make test`, instead of hiding behind a skip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.peers import require_binary

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"
MISSING = "accounton-no-such-binary"


def test_missing_peer_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNTON_REQUIRE_PEERS", "1")
    with pytest.raises(pytest.fail.Exception, match="required peer missing: accounton-no-such-binary"):
        require_binary(MISSING, "no-such-package")


def test_missing_peer_skips_under_a_bare_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCOUNTON_REQUIRE_PEERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian package no-such-package"):
        require_binary(MISSING, "no-such-package")


def test_present_peer_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNTON_REQUIRE_PEERS", "1")
    assert Path(require_binary("sh", "dash")).exists()


def test_make_test_installs_and_requires_every_peer() -> None:
    """`make test` installs the Debian peers the tests use and runs pytest with peers required."""
    text = MAKEFILE.read_text()
    packages = re.search(r"^DEBIAN_PACKAGES := (.*)$", text, re.MULTILINE)
    assert packages is not None
    assert {"nsd", "libreoffice-calc-nogui", "poppler-utils"} <= set(packages.group(1).split())
    test_recipe = text.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "deps-debian" in test_recipe.splitlines()[0]
    assert "ACCOUNTON_REQUIRE_PEERS=1" in test_recipe


def test_the_requirement_survives_the_settings_fixture() -> None:
    """`relay_env` clears every RELAY_* variable: the requirement must not be one, or it would vanish."""
    import inspect

    from tests import peers

    [name] = set(re.findall(r'"([A-Z_]+_REQUIRE_PEERS)"', inspect.getsource(peers)))
    assert not name.startswith("RELAY_")
    assert f"{name}=1" in MAKEFILE.read_text()
