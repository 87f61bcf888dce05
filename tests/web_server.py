"""`relay-admin serve` as a real subprocess on a free port, and the store around it set up by the CLI.

`Site` is a temporary directory with a store, keys and (optionally) an NSD serving the tenants' zones;
`Site.cli` runs `relay-admin` in-process against it. `AdminServer` starts `relay-admin serve` with
RELAY_ADMIN_LISTEN=127.0.0.1:0, reads the bound address from the first line of its stdout, and keeps
everything it writes afterwards (its log) for the tests that check what it never logs.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import CliResult
from tests.nsd import Nsd, zone_text
from tests.peers import require_binary

RELAY_ADMIN = str(Path(sys.executable).with_name("relay-admin"))
PASSWORD = "correct horse battery staple"
TARGET = "bounces.relay.test"
# The platform's return-path target, served beside the tenants' zones (the CNAMEs point at it).
RELAY_ZONE = zone_text("relay.test", 'bounces IN A 192.0.2.10\nbounces IN TXT "v=spf1 ip4:192.0.2.10 -all"')


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly `env` as the process environment for the block (a module-scoped monkeypatch)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Site:
    """A store, keys directory and settings for one web test module."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    nsd: Nsd | None = None
    serial: int = 1

    def __post_init__(self) -> None:
        base = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
        self.env = base | {
            "RELAY_DATABASE": f"sqlite:///{self.root / 'relay.db'}",
            "RELAY_KEYS_DIR": str(self.root / "keys"),
            "RELAY_UPSTREAM": f"outbox:{self.root / 'outbox'}",
            "RELAY_RETURN_PATH_TARGET": TARGET,
            "RELAY_HOSTNAME": "relay.test",
            "RELAY_DNS_TIMEOUT": "2s",
            "RELAY_ADMIN_LISTEN": "127.0.0.1:0",
        } | self.env

    def cli(self, *args: str, stdin: str = "") -> CliResult:
        """`relay-admin ARGS...` in-process, against this site's store."""
        from admin.cli import main

        out, err = io.StringIO(), io.StringIO()
        saved_stdin = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            with environment(self.env), redirect_stdout(out), redirect_stderr(err):
                try:
                    code = main(list(args))
                except SystemExit as exc:
                    code = int(exc.code or 0)
        finally:
            sys.stdin = saved_stdin
        return CliResult(code, out.getvalue(), err.getvalue())

    def ok(self, *args: str, stdin: str = "") -> str:
        result = self.cli(*args, stdin=stdin)
        assert result.code == 0, (args, result.err)
        return result.out

    def user(self, name: str, role: str, *tenants: str, actor: str | None = None) -> str:
        """Add a user with a password and an API token; returns the token (also in `tokens`)."""
        scope = ["--tenant", *tenants] if tenants else []
        as_ = ["--as", actor] if actor else []
        self.ok("user", "add", name, "--role", role, *scope, *as_)
        self.ok("user", "password", name, "--as", name, stdin=PASSWORD + "\n")
        token = json.loads(self.ok("token", "add", "--user", name, "--json", "--as", name))["token"]
        assert isinstance(token, str)
        self.tokens[name] = token
        return token

    def tenant(self, tenant: str, domain: str, *, name: str = "", actor: str = "olivia") -> None:
        self.ok("tenant", "set", tenant, "--name", name or tenant.capitalize(), "--email",
                f"info@{domain}", "--domain", domain, "--as", actor)

    def bind(self, tenant: str) -> str:
        return self.ok("records", tenant, "--format", "bind", "--as", "olivia")

    def serve_dns(self, zones: dict[str, str]) -> Nsd:
        """Start NSD with the relay zone and `zones` ({origin: body}); RELAY_NAMESERVERS points at it."""
        require_binary("nsd", "nsd")
        directory = self.root / "nsd"
        directory.mkdir()
        texts = {"relay.test": RELAY_ZONE} | {o: zone_text(o, body) for o, body in zones.items()}
        self.nsd = Nsd(directory, texts).start()
        self.env["RELAY_NAMESERVERS"] = f"127.0.0.1:{self.nsd.port}"
        return self.nsd

    def publish(self, origin: str, body: str) -> None:
        """Serve a new version of one zone (a higher serial) and wait until NSD answers with it."""
        assert self.nsd is not None
        self.serial += 1
        self.nsd.update({origin: zone_text(origin, body, serial=self.serial)})

    def stop(self) -> None:
        if self.nsd is not None:
            self.nsd.stop()


class AdminServer:
    """`relay-admin serve` in a subprocess; `url` is the address from its first stdout line."""

    def __init__(self, site: Site, **env: str) -> None:
        self.lines: list[str] = []
        self._first: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [RELAY_ADMIN, "serve"], env=site.env | env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True)]
        for reader in self._readers:
            reader.start()
        if not self._ready.wait(30) or not self._first:
            self.stop()
            raise RuntimeError("relay-admin serve did not print its address:\n" + self.log)
        first = self._first[0].strip()  # the address, or with RELAY_LOG_FORMAT=json an object holding it
        self.url = str(json.loads(first)["url"] if first.startswith("{") else first).rstrip("/")

    def _read(self, stream: Any, stdout: bool) -> None:
        for line in stream:
            if stdout and not self._first:
                self._first.append(line)
                self._ready.set()
            else:
                self.lines.append(line)
        if stdout:
            self._ready.set()

    @property
    def log(self) -> str:
        """Everything the server wrote after its address: uvicorn's log and the access log."""
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5)


def owner_site(root: Path, script_name: str, database: str | None = None) -> Site:
    """A site with olivia (owner), tenants acme ("Acme BV") and xss (named `script_name`), and carl
    (accountant); its store is `database` (a URL) if given, else ROOT/relay.db."""
    site = Site(root, env={"RELAY_DATABASE": database} if database else {})
    site.user("olivia", "owner")
    site.tenant("acme", "acme.test", name="Acme BV")
    site.tenant("xss", "xss.test", name=script_name)
    site.user("carl", "accountant", actor="olivia")
    return site


def serving(site: Site) -> Iterator[AdminServer]:
    """Body of a module-scoped `server` fixture: `relay-admin serve` for `site`, stopped afterwards."""
    server = AdminServer(site)
    yield server
    server.stop()
