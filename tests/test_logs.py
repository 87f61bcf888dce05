"""Logs (relay.core.logs): RELAY_LOG_FORMAT=json makes every line the relay and the admin server write one JSON
object, with one line per transaction; no secret and no message content in any line of a busy run; in
text, nothing a client sends can start a log line of its own."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import smtplib
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.core.logs import (
    CONTINUATION,
    JsonFormatter,
    TextFormatter,
    configure,
    escape_controls,
    fields,
)
from relay.core.models import TenantStatus
from relay.core.store import SqliteStore
from tests.factories import make_tenant
from tests.relay_harness import (
    RCPT,
    RELAY_SCRIPT,
    RelayProcess,
    Script,
    ScriptedUpstream,
    add_client,
    make_settings,
    process_env,
)
from tests.web_server import PASSWORD, AdminServer
from tests.web_server import Site as WebSite

UPSTREAM_USER, UPSTREAM_PASSWORD = "relayuser", "Upstream-Passw0rd-7f3a"
WRONG_PASSWORD = "Wrong-Passw0rd-91c2"
BODY_TEXT = "Confidential-invoice-body-5d8e"
BASE_KEYS = {"time", "level", "logger", "process", "message"}


def record(message: str, *args: Any, exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("relay.test", logging.WARNING, __file__, 1, message, args,
                             (type(exc), exc, exc.__traceback__) if exc else None)
    made.__dict__.update(extra)
    return made


# ------------------------------------------------------------------ the formatters


def test_text_escapes_control_characters_a_client_chose() -> None:
    line = TextFormatter().format(record("unrecognised: %s from %r", "X\rFORGED\nINFO relay: ok\x00\x1b[2J\u2028",
                                         "ip"))
    assert "\r" not in line and "\n" not in line and "\x00" not in line and "\x1b" not in line
    assert line.endswith(r"unrecognised: X\rFORGED\nINFO relay: ok\x00\x1b[2J\u2028 from 'ip'")
    assert escape_controls("tab\there, DEL\x7f, NEL\x85, plain ünïcode") == r"tab\there, DEL\x7f, NEL\x85, plain ünïcode"


def test_text_keeps_a_traceback_as_continuation_lines() -> None:
    try:
        raise ValueError("bad\nWARNING forged line")
    except ValueError as exc:
        text = TextFormatter().format(record("failed", exc=exc))
    first, *rest = text.split("\n")
    assert first.endswith("WARNING relay.test: failed")
    assert rest and all(line.startswith(CONTINUATION) for line in rest)
    # A newline inside the exception's text only makes one more continuation line.
    assert rest[-2:] == [CONTINUATION + "ValueError: bad", CONTINUATION + "WARNING forged line"]


def test_json_is_one_object_per_record_with_its_fields() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        line = JsonFormatter().format(record("tx=%s %s", "A1", "X\r\nY\u2028", exc=exc,
                                             **fields(id="A1", recipients=2, ms={"total": 1.5}, level="bogus")))
    assert "\n" not in line and "\u2028" not in line
    entry = json.loads(line)
    assert entry["message"] == "tx=A1 X\r\nY\u2028"
    assert (entry["id"], entry["recipients"], entry["ms"]) == ("A1", 2, {"total": 1.5})
    assert entry["level"] == "WARNING", "a field never overwrites a base key"
    assert entry["logger"] == "relay.test" and entry["time"].endswith("Z")
    assert "RuntimeError: boom" in entry["exc"]


def test_configure_switches_the_format_of_the_one_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure("text", stream=stream)
        logging.getLogger("relay.test").info("first %s", "line\r")
        configure("json")  # the same handler, now JSON
        logging.getLogger("relay.test").info("second", extra=fields(n=2))
    finally:
        for handler in root.handlers[:]:
            if handler not in before[0]:
                root.removeHandler(handler)
        root.setLevel(before[1])
        logging.captureWarnings(False)
    first, second = stream.getvalue().splitlines()
    assert first.endswith(r"INFO relay.test: first line\r")
    assert json.loads(second)["n"] == 2


# ------------------------------------------------------------------ a busy relay in JSON


@dataclass
class Site:
    tmp: Path
    secrets: dict[str, str]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """`acme` verified (client `billing`), `beta` pending without a platform sender (client `reports`)."""
    settings = make_settings(tmp_path)
    store = SqliteStore(settings.database_path)
    make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    make_tenant(store, settings, "beta", domain="beta.test")
    secrets = {"billing": add_client(store, "billing", tenants=("acme",)),
               "reports": add_client(store, "reports", tenants=("beta",))}
    store.close()
    yield Site(tmp_path, secrets)


def _message(number: int) -> bytes:
    return (f"From: app@platform.test\r\nTo: {RCPT}\r\nSubject: Invoice {number}\r\n\r\n"
            f"{BODY_TEXT} number {number}.\r\n").encode()


def _attempt(port: int, user: str, secret: str, mechanism: str, rcpts: list[str], number: int) -> int:
    """One session: AUTH (PLAIN or LOGIN) and, if it passed, one message; the last reply code."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = user, secret
        authobject = smtp.auth_login if mechanism == "LOGIN" else smtp.auth_plain
        try:
            smtp.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code
        try:
            smtp.sendmail("app@platform.test", rcpts, _message(number))
        except smtplib.SMTPRecipientsRefused as exc:
            return min(code for code, _ in exc.recipients.values())
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code
        return 250


def _forged_commands(port: int) -> None:
    """Commands with a bare CR: aiosmtpd logs an unrecognised one as it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for command in (b"EHLO client.test", b"X\rFORGED-INFO relay.transaction: outcome=delivered", b"QUIT"):
            sock.sendall(command + b"\r\n")
            while (line := reader.readline())[3:4] == b"-":
                pass


def _secrets(site: Site) -> list[str]:
    """Every secret of the run, and the base64 forms AUTH carries them in."""
    plain = [site.secrets["billing"], site.secrets["reports"], WRONG_PASSWORD, UPSTREAM_PASSWORD]
    blobs = [base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
             for user, secret in (("billing", site.secrets["billing"]), ("reports", site.secrets["reports"]),
                                  ("billing", WRONG_PASSWORD), (UPSTREAM_USER, UPSTREAM_PASSWORD))]
    blobs += [base64.b64encode(secret.encode()).decode() for secret in plain]
    return plain + blobs + [BODY_TEXT]


async def test_a_busy_json_run_writes_only_json_and_no_secret(site: Site) -> None:
    if not RELAY_SCRIPT.exists():
        pytest.skip("the relay console script is not installed in this venv")
    script = Script(ehlo=("8BITMIME", "SIZE 100000000", "AUTH PLAIN LOGIN"),
                    rcpt={"refused@example.test": "550 5.1.1 No such user", "busy@example.test": "450 4.2.1 Busy"})
    async with ScriptedUpstream(script) as upstream:
        env = process_env(site.tmp, RELAY_LOG_FORMAT="json", RELAY_WORKERS="2",
                          RELAY_UPSTREAM=f"smtp://{UPSTREAM_USER}:{UPSTREAM_PASSWORD}@127.0.0.1:{upstream.port}")
        with RelayProcess(env) as relay:
            ready = await asyncio.to_thread(relay.wait_line, r'"message": "(next|ready): ', "stdout")
            port = int(json.loads((await asyncio.to_thread(relay.wait_line, r"listening on", "stdout")))["message"]
                       .split(":")[1].split(" ")[0])
            plan: list[tuple[str, str, str, list[str]]] = []
            for number in range(50):  # 50 transactions: delivered, refused and deferred ones
                user, rcpts = "billing", [RCPT]
                if number % 10 == 3:
                    rcpts = [RCPT, "refused@example.test"]  # upstream refuses one: nothing delivered (R3)
                elif number % 10 == 5:
                    rcpts = ["busy@example.test"]  # upstream 450
                elif number % 10 == 7:
                    user = "reports"  # a pending tenant, no platform sender: 550 5.7.1
                plan.append((user, site.secrets[user], "LOGIN" if number % 2 else "PLAIN", rcpts))
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(8) as pool:
                codes = await asyncio.gather(*(loop.run_in_executor(pool, _attempt, port, *attempt, number)
                                               for number, attempt in enumerate(plan)))
                # Then wrong passwords, fewer than relay.policy.auththrottle lets pass before it holds an address back.
                for number in range(4):
                    mechanism = "LOGIN" if number % 2 else "PLAIN"
                    codes.append(await loop.run_in_executor(pool, _attempt, port, "billing", WRONG_PASSWORD,
                                                            mechanism, [RCPT], 100 + number))
                await loop.run_in_executor(pool, _forged_commands, port)
            code = await asyncio.to_thread(relay.stop)
    assert code == 0
    assert codes.count(250) == 35 and codes.count(535) == 4, codes
    assert sorted(set(codes)) == [250, 450, 535, 550], codes
    out, err = relay.lines("stdout"), relay.lines("stderr")
    assert ready in out and len(out) >= 5 and len(err) > 60
    entries = []
    for line in out + err:
        entry = json.loads(line)  # every line, banner included, is one JSON object
        assert isinstance(entry, dict) and BASE_KEYS <= entry.keys(), line
        entries.append(entry)
    everything = "\n".join(out + err)
    for secret in _secrets(site):
        assert secret not in everything, f"{secret!r} is in the log"
    transactions = [e for e in entries if e.get("event") == "transaction"]
    assert len(transactions) == 50
    for entry in transactions:
        assert {"id", "client", "ip", "tenant", "recipients", "size", "outcome", "reply", "ms"} <= entry.keys()
        assert entry["ms"]["total"] >= 0
    outcomes = {o: sum(e["outcome"] == o for e in transactions) for o in ("delivered", "refused", "deferred")}
    assert outcomes == {"delivered": 35, "refused": 10, "deferred": 5}, outcomes
    delivered = [e for e in transactions if e["outcome"] == "delivered"]
    assert all(e["reply"].startswith("250 2.0.0 OK: accepted by upstream") and "upstream" in e["ms"]
               and "sign" in e["ms"] for e in delivered)
    assert {e["tenant"] for e in transactions} == {"acme", "beta"}
    # The id is the one in the Received field of what upstream got.
    assert upstream.data is not None
    received_id = upstream.data.split(b" id ", 1)[1].split(b";", 1)[0].decode()
    assert received_id in {e["id"] for e in delivered}
    failed_auth = [e for e in entries if e["message"].startswith("auth failed")]
    assert len(failed_auth) == 4 and all("billing" in e["message"] for e in failed_auth)
    forged = [e for e in entries if "FORGED" in e["message"]]
    assert forged and forged[0]["message"].endswith("X\rFORGED-INFO"), forged
    assert not any(e["message"].startswith("FORGED") for e in entries)


def test_text_log_escapes_a_command_with_a_bare_cr(site: Site) -> None:
    if not RELAY_SCRIPT.exists():
        pytest.skip("the relay console script is not installed in this venv")
    with RelayProcess(process_env(site.tmp)) as relay:
        _forged_commands(relay.port)
        assert relay.stop() == 0
    err = relay.lines()
    assert not any("\r" in line for line in err), "a bare CR reached the log"
    [line] = [line for line in err if "FORGED" in line]
    assert line.endswith(r"unrecognised: X\rFORGED-INFO"), line


# ------------------------------------------------------------------ the admin server in JSON


def test_the_admin_server_logs_json(tmp_path: Path) -> None:
    web = WebSite(tmp_path)
    token = web.user("olivia", "owner")
    server = AdminServer(web, RELAY_LOG_FORMAT="json")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/api/v1/tenants", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            assert client.get(f"/api/v1/tenants?token={token}").status_code == 401
            assert client.get("/no%0D%0Asuch").status_code == 404
            client.post("/login", data={"username": "olivia", "password": PASSWORD, "csrf": "x"})
    finally:
        server.stop()
    lines = server.lines
    assert lines
    entries = [json.loads(line) for line in lines]
    assert all(BASE_KEYS <= entry.keys() for entry in entries)
    access = [e for e in entries if e.get("event") == "http"]
    assert {(e["method"], e["path"], e["status"]) for e in access} >= {
        ("GET", "/api/v1/tenants", 200), ("GET", "/api/v1/tenants", 401), ("GET", "/no%0D%0Asuch", 404)}
    assert token not in "".join(lines) and PASSWORD not in "".join(lines)
    assert any(e["logger"].startswith("uvicorn") and "Uvicorn running" in e["message"] for e in entries) or any(
        e["logger"].startswith("uvicorn") for e in entries if e.get("event") != "http")


def test_the_admin_server_escapes_a_path_in_text(tmp_path: Path) -> None:
    web = WebSite(tmp_path)
    web.user("olivia", "owner")
    server = AdminServer(web)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/no%0D%0AINFO:%20forged").status_code == 404
    finally:
        server.stop()
    # uvicorn writes the path quoted; the escaping filter would catch a raw one.
    assert not any(line.startswith("INFO: forged") or "\r" in line for line in server.lines)
    assert any("/no%0D%0AINFO%3A%20forged" in line for line in server.lines), server.log


def test_nothing_bypasses_the_formatter() -> None:
    """The relay's own modules write through logging (or relay.core.logs.line), never print to stderr."""
    root = Path(__file__).resolve().parent.parent / "relay"
    offenders = [path.name for path in root.glob("*.py") if "file=sys.stderr" in path.read_text()]
    assert offenders == [], offenders
