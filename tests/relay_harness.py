"""Test harness for the relay: the relay in-process on port 0 or as a real process, a recording upstream,
scripted misbehaving upstreams, real SMTP clients (smtplib in a thread, or a raw socket), and DKIM checks
against NSD."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import dns.message
import dns.query
import dns.rdatatype
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.core.credentials import hash_secret
from relay.core.models import DkimKey, Tenant, TenantStatus
from relay.core.settings import HostPort, Settings, Upstream
from relay.core.store import SqliteStore, Store
from relay.domains.records import records_for
from relay.service.relay import RunningRelay, start_relay
from tests.factories import make_client, make_tenant
from tests.nsd import zone_text

RCPT = "someone@example.test"
RELAY_SCRIPT = Path(sys.executable).with_name("relay")
ADMIN_SCRIPT = Path(sys.executable).with_name("relay-admin")


def make_settings(tmp: Path, **fields: Any) -> Settings:
    """Settings for a relay on a free loopback port, storing under `tmp`; the environment is ignored."""
    values: dict[str, Any] = {
        "listen": HostPort("127.0.0.1", 0),
        "upstream": Upstream(scheme="outbox", outbox_dir=tmp / "outbox"),
        "database": f"sqlite:///{tmp / 'relay.db'}",
        "keys_dir": tmp / "keys",
        "hostname": "relay.test",
        "return_path_target": "bounces.relay.test",
        "reload_interval": 0.05,
        "upstream_timeout": 5.0,
        "session_timeout": 15.0,
    }
    values.update(fields)
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("RELAY_")}
    try:
        return Settings(**values)
    finally:
        os.environ.update(saved)


def smtp_upstream(port: int, host: str = "127.0.0.1", **fields: Any) -> Upstream:
    return Upstream(scheme="smtp", host=host, port=port, **fields)


def non_loopback_address() -> str | None:
    """A local address that is not loopback (so a peer looks remote), or None on a loopback-only host."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def add_client(store: Store, name: str, **scope: Any) -> str:
    """A client in the store (scrypt-hashed secret, as `client add` does); returns the secret."""
    secret = f"secret-of-{name}"
    make_client(store, name, hash_secret(secret), **scope)
    return secret


def verified_acme(tmp: Path) -> tuple[SqliteStore, DkimKey, str]:
    """The store of `make_settings(tmp)` with `acme` (acme.test) verified with its key, and its client
    `billing`; returns (the store, open: the caller closes it; acme's key; billing's secret)."""
    settings = make_settings(tmp)
    store = SqliteStore(settings.database_path)
    _, key = make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    return store, key, secret


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): 'upstream unreachable'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def relay_running(settings: Settings, store: Store, **kwargs: Any) -> AsyncIterator[RunningRelay]:
    relay = await start_relay(settings, store, **kwargs)
    try:
        yield relay
    finally:
        await relay.close()


# ---------------------------------------------------------------- recording upstream (aiosmtpd)


@dataclass
class Delivered:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool = False


class _Recorder:
    def __init__(self, upstream: "RecordingUpstream") -> None:
        self._upstream = upstream

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes) and envelope.mail_from is not None
        assert server.transport is not None
        tls = server.transport.get_extra_info("ssl_object") is not None
        self._upstream.messages.append(Delivered(envelope.mail_from, list(envelope.rcpt_tos),
                                                 envelope.original_content, tls))
        self._upstream.arrived.set()
        return "250 2.0.0 Ok: queued as REC1"


class RecordingUpstream:
    """A real SMTP server (aiosmtpd) on a free port that keeps every message it accepts.

    With `tls`, it offers STARTTLS; with `implicit_tls` too, it speaks TLS from the start (smtps)."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, implicit_tls: bool = False) -> None:
        self._tls = tls
        self._implicit = implicit_tls
        self.messages: list[Delivered] = []
        self.arrived = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> "RecordingUpstream":
        loop = asyncio.get_running_loop()
        handler = _Recorder(self)
        starttls = None if self._implicit else self._tls
        self._server = await loop.create_server(
            lambda: SMTP(handler, hostname="upstream.test", data_size_limit=None, tls_context=starttls),
            "127.0.0.1", 0, ssl=self._tls if self._implicit else None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def only(self) -> Delivered:
        assert len(self.messages) == 1, f"upstream got {len(self.messages)} messages"
        return self.messages[0]


# ---------------------------------------------------------------- scripted upstream


@dataclass
class Script:
    """What a scripted upstream answers. `after_dot` may also be `drop` or `stall`;
    `stall_at` stalls (no reply) at that command, e.g. `RCPT`."""

    ehlo: tuple[str, ...] = ("8BITMIME", "SIZE 100000000")
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply; others get 250
    after_dot: str = "250 2.0.0 Ok: queued"
    stall_at: str | None = None
    pause_data_after: int | None = None  # stop reading DATA after this many bytes until `resume`
    hold_after_dot: bool = False  # set `dot_arrived`, then answer `after_dot` only once `release` is set
    replies: dict[str, str] = field(default_factory=dict)  # e.g. {"RSET": "drop"}: MAIL, RSET, NOOP...


class ScriptedUpstream:
    """A small asyncio SMTP server that answers per its script and records every line it receives."""

    def __init__(self, script: Script, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.script = script
        self.commands: list[str] = []
        self.data: bytes | None = None  # the complete DATA payload, if the final dot ever arrived
        self.data_started = False
        self.connected = asyncio.Event()
        self.stalled = asyncio.Event()
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()
        self.dot_arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.raw_data = b""  # DATA bytes as received, complete or not
        self.closed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> "ScriptedUpstream":
        sock = socket.socket()
        # A small, fixed receive buffer (no autotuning): when this server stops reading, the relay's
        # unsent data stays in the relay's own buffers, where a polite close would still flush it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.bind((self.host, 0))
        self._server = await asyncio.start_server(self._session, sock=sock)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    def verbs(self) -> list[str]:
        return [line.split(" ", 1)[0].split(":", 1)[0].upper() for line in self.commands]

    async def _stall(self, reader: asyncio.StreamReader) -> None:
        self.stalled.set()
        await reader.read()  # until the relay gives up and drops the connection

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.connected.set()
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 scripted.test ESMTP")
        while True:
            line = (await reader.readline()).decode("latin-1")
            if not line:
                return
            self.commands.append(line.rstrip("\r\n"))
            verb = line.split(" ", 1)[0].split(":", 1)[0].strip().upper()
            if verb == self.script.stall_at:
                await self._stall(reader)
                return
            if verb in ("EHLO", "HELO"):
                lines = ["scripted.test", *self.script.ehlo]
                for index, text in enumerate(lines):
                    say(("250 " if index == len(lines) - 1 else "250-") + text)
            elif verb == "RCPT":
                address = line.split("<", 1)[1].split(">", 1)[0]
                say(self.script.rcpt.get(address, "250 2.1.5 Ok"))
            elif verb == "DATA":
                self.data_started = True
                say("354 End data with <CR><LF>.<CR><LF>")
                if self.script.pause_data_after is not None:
                    await writer.drain()
                    self.raw_data = await reader.readexactly(self.script.pause_data_after)
                    self.paused.set()
                    await self.resume.wait()
                    self.raw_data += await reader.read()  # whatever still comes, until EOF
                    return
                self.data = await reader.readuntil(b"\r\n.\r\n")
                self.dot_arrived.set()
                if self.script.hold_after_dot:
                    await self.release.wait()
                if self.script.after_dot == "drop":
                    writer.transport.abort()
                    return
                if self.script.after_dot == "stall":
                    await self._stall(reader)
                    return
                say(self.script.after_dot)
            elif verb == "AUTH":
                say("235 2.7.0 Authentication successful")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                await writer.drain()
                return
            else:
                reply = self.script.replies.get(verb, "250 2.0.0 Ok")
                if reply == "drop":
                    writer.transport.abort()
                    return
                say(reply)
            await writer.drain()


# ---------------------------------------------------------------- the relay as a process


def process_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a `relay` or `relay-admin` process working under `tmp` (no RELAY_* inherited)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
    env.update({
        "RELAY_DATABASE": f"sqlite:///{tmp / 'relay.db'}",
        "RELAY_KEYS_DIR": str(tmp / "keys"),
        "RELAY_UPSTREAM": f"outbox:{tmp / 'outbox'}",
        "RELAY_LISTEN": "127.0.0.1:0",
        "RELAY_HOSTNAME": "relay.test",
        "RELAY_RETURN_PATH_TARGET": "bounces.relay.test",
    })
    env.update(extra)
    return env


class RelayProcess:
    """The `relay` console script as a child process: its banner, its log lines as they arrive, its exit.

    Output is read by threads into lists; `wait_line` waits on a condition for a matching line (bounded),
    so tests synchronise on what the relay says, never on sleeps."""

    def __init__(self, env: dict[str, str], cwd: Path | None = None) -> None:
        self.process = subprocess.Popen([str(RELAY_SCRIPT)], env=env, cwd=cwd,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._ended: set[str] = set()
        self._changed = threading.Condition()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                         for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self._changed:
                self._lines[name].append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended.add(name)
            self._changed.notify_all()

    def lines(self, name: str = "stderr") -> list[str]:
        with self._changed:
            return list(self._lines[name])

    def wait_line(self, pattern: str, name: str = "stderr", timeout: float = 20.0) -> str:
        """The first line of `name` matching the regex `pattern`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self._lines[name] if re.search(pattern, line)), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or name in self._ended:
                    raise AssertionError(f"the relay wrote no {name} line matching {pattern!r}; stdout: "
                                         f"{self._lines['stdout']}; stderr: {self._lines['stderr']}")
                self._changed.wait(remaining)

    def banner(self) -> list[str]:
        """The start-up banner (stdout), once its next-step line is out."""
        self.wait_line(r"^relay: (next|ready):", name="stdout")
        return self.lines("stdout")

    @property
    def port(self) -> int:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.banner()[0])
        assert match, self.banner()
        return int(match.group(1))

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `signum` and return the exit code once the process has exited."""
        self.process.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def __enter__(self) -> "RelayProcess":
        return self

    def children(self) -> list[int]:
        """The worker processes (Linux /proc), with RELAY_WORKERS > 1."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:  # a failed test: no orphaned worker may keep the port or the pipes
            for pid in self.children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.kill()
        self.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def run_admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `relay-admin` console script (a real process, as an operator would)."""
    return subprocess.run([str(ADMIN_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- clients


@dataclass(frozen=True)
class Outcome:
    """The reply that ended a client's attempt (AUTH, MAIL, RCPT or the end of DATA)."""

    code: int
    text: str
    stage: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.text}"


def _send_sync(host: str, port: int, message: bytes, user: str | None, secret: str | None, mechanism: str,
               mail_from: str, rcpts: tuple[str, ...], starttls: bool) -> Outcome:
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        if starttls:
            smtp.starttls(context=ssl._create_unverified_context())  # a self-signed test certificate
            smtp.ehlo()
        try:
            if user is not None:
                smtp.user, smtp.password = user, secret or ""
                authobject = smtp.auth_login if mechanism == "LOGIN" else smtp.auth_plain
                code, text = smtp.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
                if code != 235:
                    return Outcome(code, text.decode(), "AUTH")
            code, text = smtp.mail(mail_from)
            if code != 250:
                return Outcome(code, text.decode(), "MAIL")
            for rcpt in rcpts:
                code, text = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    return Outcome(code, text.decode(), "RCPT")
            code, text = smtp.data(message)
            return Outcome(code, text.decode(), "DATA")
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error.decode() if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            return Outcome(exc.smtp_code, error, "AUTH" if isinstance(exc, smtplib.SMTPAuthenticationError) else "DATA")


async def send(relay: RunningRelay, message: bytes, *, user: str | None, secret: str | None = None,
               mechanism: str = "PLAIN", mail_from: str = "app@platform.test",
               rcpts: tuple[str, ...] = (RCPT,), starttls: bool = False) -> Outcome:
    """Send one message with Python's smtplib (a real client) in a thread."""
    host, port = relay.address
    return await asyncio.to_thread(_send_sync, host, port, message, user, secret, mechanism,
                                   mail_from, rcpts, starttls)


class RawClient:
    """A raw socket SMTP client, for what smtplib will not do (smuggling, dropping mid-DATA)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, relay: RunningRelay) -> "RawClient":
        reader, writer = await asyncio.open_connection(*relay.address, limit=1 << 20)
        client = cls(reader, writer)
        await client.reply()
        return client

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode()
            if not line:
                raise ConnectionError("relay closed the connection")
            lines.append(line[4:].rstrip("\r\n"))
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    async def command(self, text: str) -> tuple[int, str]:
        self.writer.write(text.encode() + b"\r\n")
        return await self.reply()

    async def start_mail(self, user: str, secret: str, rcpt: str = RCPT) -> None:
        """EHLO, AUTH PLAIN, MAIL, RCPT, DATA: up to the 354."""
        import base64

        token = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
        for text, expected in (("EHLO raw.test", 250), (f"AUTH PLAIN {token}", 235),
                               ("MAIL FROM:<app@platform.test>", 250), (f"RCPT TO:<{rcpt}>", 250),
                               ("DATA", 354)):
            code, reply = await self.command(text)
            assert code == expected, f"{text}: {code} {reply}"

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------- TLS


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost / relay.test (EC: fast to make), and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = x509.SubjectAlternativeName([x509.DNSName("relay.test"), x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).add_extension(alt, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


# ---------------------------------------------------------------- DNS and DKIM


def dkim_zone(tenants: list[tuple[Tenant, DkimKey]], settings: Settings) -> dict[str, str]:
    """Zones with the records the admin side issues; DKIM TXT split into two strings as in the field."""
    zones: dict[str, str] = {}
    for tenant, key in tenants:
        lines = []
        for record in records_for(tenant.sender, [key], return_path_target=settings.return_path_target):
            if record.purpose == "dkim":
                half = len(record.value) // 2
                lines.append(f'{record.name}. 300 IN TXT "{record.value[:half]}" "{record.value[half:]}"')
            elif record.purpose == "return-path":
                lines.append(f"{record.name}. 300 IN CNAME {record.value}.")
        zones[tenant.sender.domain] = zone_text(tenant.sender.domain, "\n".join(lines))
    return zones


def nsd_txt(port: int) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` that asks NSD (with dnspython) and joins the TXT strings (RFC 6376 3.6.2.2)."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
        for rrset in answer.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(rrset[0].strings)
        return None

    return lookup


def header_fields(message: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) for each raw header line of a CRLF message."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", errors="replace")
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        else:
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), value.strip()))
    return fields


def values(message: bytes, name: str) -> list[str]:
    return [value for field_name, value in header_fields(message) if field_name == name.lower()]


async def eventually(check: Callable[[], Any], *, timeout: float = 10.0) -> Any:
    """Await `check()` (sync or async) until it returns something truthy; a bounded poll, not a sleep."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
