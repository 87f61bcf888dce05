"""The README's walkthrough, run exactly as written: every ```sh block, in order, in one shell.

It runs in a temporary directory with a free NSD port and a relay started there the way `make run`
starts it (embedded defaults: store, keys and outbox relative to that directory). So the README
cannot drift from the product again: a renamed command, a zone for the wrong domain or a client
added twice fails this test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.zone
import pytest

from tests.nsd import free_port
from tests.peers import require_binary

README = Path(__file__).resolve().parent.parent / "README.md"
VENV_BIN = Path(sys.executable).parent
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_sh_blocks() -> list[str]:
    """The walkthrough: the README's ```sh blocks in order (other examples use ```console/```text)."""
    return SH_BLOCK.findall(README.read_text())


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any RELAY_* setting, the venv first on PATH, plus `extra`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}/usr/sbin{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def relay_port(process: subprocess.Popen[str], timeout: float = 30) -> int:
    """The port the relay bound (it was started on port 0), read from its banner's first line.

    Polling a port picked in advance would race: a connect to a port nobody listens on yet can get
    that same port as its source and connect to itself, and then the relay cannot bind it.
    """
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(timeout)
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", lines[0] if lines else "")
    assert match, f"the relay did not start: {lines!r}"
    return int(match.group(1))


@pytest.fixture
def walkthrough_dir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A directory with a relay running in it as `make run` would; NSD and relay stopped afterwards."""
    require_binary("nsd", "nsd")
    require_binary("nsd-checkzone", "nsd")
    env = clean_env(RELAY_LISTEN="127.0.0.1:0", NSD_PORT=str(free_port()))
    relay = subprocess.Popen([str(VENV_BIN / "relay")], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        env["RELAY_LISTEN"] = f"127.0.0.1:{relay_port(relay)}"  # what the walkthrough's client uses
        yield tmp_path, env
    finally:
        pidfile = tmp_path / "dns" / "nsd.pid"
        if pidfile.exists():  # the walkthrough failed before its clean-up step
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        relay.terminate()
        relay.communicate(timeout=30)


def test_readme_has_the_walkthrough_blocks() -> None:
    blocks = readme_sh_blocks()
    joined = "\n".join(blocks)
    assert len(blocks) >= 5
    text = README.read_text()
    start = text.index("## The first hour")
    end = text.index("\n## ", start + 1)
    # Every sh block is a walkthrough step: an example elsewhere must be ```console or ```text.
    assert all(start < match.start() < end for match in SH_BLOCK.finditer(text))
    for step in ("relay-admin user add", "relay-admin tenant set", "relay-admin export",
                 "nsd-checkzone", "relay-admin validate", "relay-admin client add", "smtplib"):
        assert step in joined, step


def test_readme_walkthrough_runs_as_written(walkthrough_dir: tuple[Path, dict[str, str]]) -> None:
    directory, env = walkthrough_dir
    script = "set -euo pipefail\n" + "\n".join(readme_sh_blocks())
    done = subprocess.run(["bash", "-c", script], cwd=directory, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "acme: verified" in done.stdout
    assert "zone acme.nl is ok" in done.stdout
    assert "accepted" in done.stdout
    # Nothing secret lands in a file: the client's secret stayed in a shell variable.
    assert not list(directory.glob("*.json"))
    assert (directory / "acme-dns.xlsx").exists()
    [eml] = list((directory / "var" / "outbox").glob("*.eml"))
    assert_signed_by_published_key(eml.read_bytes(), directory)


def assert_signed_by_published_key(message: bytes, directory: Path) -> None:
    """dkimpy verifies the .eml against the DKIM record in the zone file NSD served to validate."""
    assert re.search(r"^From: \"Acme BV\" <facturen@acme\.nl>\r?$", message.decode(), re.MULTILINE)
    zone = dns.zone.from_text((directory / "dns" / "acme.nl.zone").read_text(), origin="acme.nl",
                              relativize=False)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        try:
            rdataset = zone.find_rdataset(name.decode(), "TXT")
        except KeyError:
            return b""
        return b"".join(b"".join(rdata.strings) for rdata in rdataset)

    assert dkim.verify(message, dnsfunc=dnsfunc), "the relayed .eml does not verify"
