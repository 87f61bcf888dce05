"""The `relay` console script as a process: one-line start-up failures, the banner in every state of the store,
a store that does not exist yet, and RELAY_WORKERS processes serving."""

from __future__ import annotations

import json
import re
import shlex
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import relay.service.main as main_module
from relay.core.models import TenantStatus
from relay.core.settings import Upstream, load_settings
from relay.core.store import SqliteStore, open_store
from relay.mail.signer import DkimSigner
from relay.policy.directory import Snapshot
from relay.service.main import banner, check_store
from tests.conftest import CliResult
from tests.factories import make_tenant
from tests.relay_harness import (
    RELAY_SCRIPT,
    RelayProcess,
    add_client,
    make_settings,
    process_env,
    run_admin,
)

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: W\r\n\r\nBody.\r\n"


@pytest.fixture(autouse=True)
def console_script() -> None:
    if not RELAY_SCRIPT.exists():
        pytest.skip("the relay console script is not installed in this venv")


@pytest.mark.parametrize("extra, variable", [
    ({"RELAY_WORKERS": "0"}, "RELAY_WORKERS"),
    ({"RELAY_UPSTREAM": "ftp://example.test"}, "RELAY_UPSTREAM"),
    ({"RELAY_UPSTREAM_TIMEOUT": "10m", "RELAY_SESSION_TIMEOUT": "5m"}, "RELAY_UPSTREAM_TIMEOUT"),
    ({"RELAY_TLS_CERT": "/nonexistent.crt", "RELAY_TLS_KEY": "/nonexistent.key"}, "RELAY_TLS_CERT"),
    ({"RELAY_SHUTDOWN_GRACE": "soon"}, "RELAY_SHUTDOWN_GRACE"),
])
def test_bad_setting_stops_start_up_with_one_line(tmp_path: Path, extra: dict[str, str], variable: str) -> None:
    done = subprocess.run([str(RELAY_SCRIPT)], env=process_env(tmp_path, **extra), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("relay: ") and variable in line


def test_a_store_that_can_never_be_created_stops_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    env = process_env(tmp_path, RELAY_DATABASE=f"sqlite:///{tmp_path / 'file' / 'relay.db'}")
    done = subprocess.run([str(RELAY_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("relay: RELAY_DATABASE:") and "is not a directory" in line


def test_two_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = SqliteStore(settings.database_path)
    make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    store.close()
    with RelayProcess(process_env(tmp_path, RELAY_WORKERS="2")) as relay:
        assert "(2 workers, event loop uvloop)" in relay.banner()[0]
        deadline = time.monotonic() + 20
        while len(relay.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the process table, bounded
        assert len(relay.children()) == 2
        for _ in range(4):  # separate connections: the kernel hands them to either worker
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as smtp:
                smtp.login("billing", secret)
                assert smtp.sendmail("app@platform.test", ["someone@example.test"], MESSAGE) == {}
        assert len(list((tmp_path / "outbox").glob("*.eml"))) == 4
        workers = relay.children()
        assert relay.stop(signal.SIGTERM) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


# ------------------------------------------------------------------ the banner


def _fill(command: str, values: dict[str, str]) -> list[str]:
    """The banner's command as argv for the CLI, its placeholders (NAME, TENANT, ...) filled in."""
    words = shlex.split(command)
    assert words[0] == "relay-admin", command
    return [values.get(word, word) for word in words[1:]]


def test_banner_states_facts_and_a_next_step_that_works_in_every_state(
        relay_env: Path, cli: Callable[..., CliResult]) -> None:
    settings = make_settings(relay_env)
    steps = [  # what the store line says, whether `tenant set` made the keys directory yet, placeholders
        ("does not exist yet", False, {"NAME": "alice"}),
        ("1 user, 0 tenants (0 verified), 0 clients", False,
         {"TENANT": "acme", "NAME": "Acme BV", "ADDRESS": "billing@acme.test", "DOMAIN": "acme.test"}),
        ("1 user, 1 tenant (0 verified), 0 clients", True, {"NAME": "billing"}),
        ("1 user, 1 tenant (0 verified), 1 client", True, {}),
    ]
    hints = []
    for summary, keys, values in steps:
        text = banner(settings, ("127.0.0.1", 2525), check_store(settings))
        lines = text.splitlines()
        assert lines[:4] == [
            "relay: listening on 127.0.0.1:2525 (1 worker, event loop uvloop)",
            f"relay: upstream outbox:{relay_env.resolve() / 'outbox'} (each accepted message is written there "
            "as a signed .eml file, not sent on)",
            f"relay: store {relay_env.resolve() / 'relay.db'}: {summary}",
            f"relay: keys {relay_env.resolve() / 'keys'}" + ("" if keys else " (does not exist yet)"),
        ]
        assert "swaks" not in text and len(lines) == 5
        hints.append(lines[4])
        for command in re.findall(r"`(relay-admin [^`]+)`", lines[4]):
            if " validate " not in command:  # validate asks DNS: the e2e tests run it against NSD
                done = cli(*_fill(command, values))
                assert done.code == 0, (command, done.err)
    assert hints == [
        "relay: next: `relay-admin user add NAME --role owner` creates the store; this relay picks it up "
        "within 0.05s",
        "relay: next: `relay-admin tenant set TENANT --name NAME --email ADDRESS --domain DOMAIN --as alice`",
        "relay: next: `relay-admin client add NAME --tenant acme --as alice` (prints its secret once)",
        "relay: next: publish the records that `relay-admin records acme --as alice` lists, then "
        "`relay-admin validate acme --as alice`; until a tenant is verified, every message is refused",
    ]


def test_banner_masks_the_upstream_password_and_counts_workers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=2, upstream=Upstream(
        scheme="smtp", host="smtp.provider.test", port=587, username="relay", password="hunter2",
        tls_required=True))
    store = SqliteStore(settings.database_path)
    make_tenant(store, settings, "acme", status=TenantStatus.VERIFIED)
    add_client(store, "billing", tenants=("acme",))
    store.close()
    lines = banner(settings, ("127.0.0.1", 2600), check_store(settings)).splitlines()
    assert lines == [
        "relay: listening on 127.0.0.1:2600 (2 workers, event loop uvloop)",
        "relay: upstream smtp://relay:***@smtp.provider.test:587?tls=required",
        f"relay: store {tmp_path.resolve() / 'relay.db'}: 0 users, 1 tenant (1 verified), 1 client",
        f"relay: keys {tmp_path.resolve() / 'keys'}",
        "relay: next: `relay-admin user add NAME --role owner`",  # a store made by something else
    ]


@pytest.mark.parametrize("status", [TenantStatus.VERIFIED, TenantStatus.DEGRADED])  # degraded still sends
def test_banner_ready_says_how_to_send(relay_env: Path, cli: Callable[..., CliResult], status: TenantStatus) -> None:
    assert cli("user", "add", "alice", "--role", "owner").code == 0
    settings = make_settings(relay_env)
    store = SqliteStore(settings.database_path)
    make_tenant(store, settings, "acme", status=status)
    add_client(store, "billing", tenants=("acme",))
    store.close()
    facts = check_store(settings)
    last = banner(settings, ("::1", 2525), facts).splitlines()[-1]
    assert last == "relay: ready: services send to [::1]:2525 with SMTP AUTH PLAIN or LOGIN, user = the client's name"


# ------------------------------------------------------------------ no store yet


def _auth_accepted(port: int, secret: str) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.login("billing", secret)
    except smtplib.SMTPAuthenticationError:
        return False
    return True


def test_relay_without_a_store_creates_none_and_picks_it_up_once_created(tmp_path: Path) -> None:
    database = tmp_path / "var" / "relay.db"
    env = process_env(tmp_path, RELAY_DATABASE=f"sqlite:///{database}", RELAY_RELOAD_INTERVAL="100ms")
    with RelayProcess(env) as relay:
        assert f"relay: store {database}: does not exist yet" in relay.banner()
        line = relay.wait_line("no store at")
        assert f"no store at {database} yet" in line
        assert not database.exists() and not database.parent.exists(), "the relay created nothing"
        assert not _auth_accepted(relay.port, "anything")  # 535: no credentials exist
        admin = dict(env, RELAY_ADMIN_USER="alice")
        for args in (["user", "add", "alice", "--role", "owner"],
                     ["tenant", "set", "acme", "--name", "Acme", "--email", "billing@acme.test",
                      "--domain", "acme.test"]):
            assert run_admin(admin, *args).returncode == 0
        added = run_admin(admin, "client", "add", "billing", "--tenant", "acme", "--json")
        secret = json.loads(added.stdout)["secret"]
        deadline = time.monotonic() + 20  # the reload interval is 100ms: bounded, polled
        while not _auth_accepted(relay.port, secret):
            assert time.monotonic() < deadline, relay.lines()
        relay.wait_line("directory reloaded: store opened")
        assert relay.stop() == 0
    assert len([line for line in relay.lines() if "no store at" in line]) == 1


# ------------------------------------------------------------------ the directory read once at start


class _Handed(Exception):
    """Raised by a stand-in for start_relay once it has seen what it was handed."""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_directory_read_for_the_banner_is_what_the_relay_serves_from(
        relay_env: Path, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch, workers: str) -> None:
    """The parent reads the store and keys once (check_store) and hands that snapshot to serve() (one
    process) or supervise() (which forks every worker with it, `_fork_worker`); serve() hands it on to
    start_relay (relay.policy.directory.Directory.load: unchanged key files are not read again)."""
    assert cli("user", "add", "alice", "--role", "owner").code == 0
    settings = load_settings()  # what main() reads: the environment relay_env set
    store = open_store(settings)
    make_tenant(store, settings, "acme", status=TenantStatus.VERIFIED)
    store.close()
    monkeypatch.setenv("RELAY_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("RELAY_WORKERS", workers)
    handed: list[object] = []
    serve = main_module.serve

    def serving(settings: object, sock: socket.socket, loaded: object = None) -> int:
        sock.close()
        handed.append(loaded)
        return 0

    def supervising(settings: object, sock: socket.socket, server: object = None, metrics_dir: object = None,
                    loaded: object = None) -> int:
        return serving(settings, sock, loaded)

    monkeypatch.setattr(main_module, "serve", serving)
    monkeypatch.setattr(main_module, "supervise", supervising)

    async def starting(*args: object, **kwargs: object) -> None:
        handed.append(kwargs.get("loaded"))
        raise _Handed

    # main() blocks SIGHUP (and serve() unblocks the stop signals) for the whole process: put the mask
    # back, or every process this test run starts later inherits a blocked SIGHUP (NSD's reload signal).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        assert main_module.main() == 0
        [loaded] = handed
        assert isinstance(loaded, Snapshot) and isinstance(loaded.signers["acme"], DkimSigner)
        # ... and a relay process hands it on to start_relay.
        monkeypatch.setattr(main_module, "start_relay", starting)
        with socket.socket() as sock, pytest.raises(_Handed):
            serve(load_settings(), sock, loaded)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    assert handed[-1] is loaded
