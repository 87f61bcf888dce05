"""Real peers the tests talk to (NSD, LibreOffice, pdftotext), and what to do when one is missing.

`make test` installs every peer and sets ACCOUNTON_REQUIRE_PEERS=1: there a missing peer is a broken
install and must fail the run, not hide behind a skip. A developer running plain `pytest` without
the Debian packages gets a skip with the reason instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Binaries outside PATH for a non-root user on Debian live in /usr/sbin.
_EXTRA_DIRS = ("/usr/sbin", "/sbin")


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return None


def peers_required() -> bool:
    return os.environ.get("ACCOUNTON_REQUIRE_PEERS", "") not in ("", "0")


def require_binary(name: str, package: str) -> str:
    """The path of `name`; fail (under `make test`) or skip (plain pytest) when it is missing."""
    path = find_binary(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package {package}; `make test` installs it as root)"
    if peers_required():
        pytest.fail(f"required peer missing: {reason}", pytrace=False)
    pytest.skip(reason)
