"""The `relay` console script as a process: one-line start-up failures, and RELAY_WORKERS processes serving."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from relay.models import TenantStatus
from relay.store import SqliteStore
from tests.factories import make_tenant
from tests.relay_harness import add_client, make_settings

RELAY = Path(sys.executable).with_name("relay")
MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: W\r\n\r\nBody.\r\n"


def relay_env(tmp: Path, **extra: str) -> dict[str, str]:
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


@pytest.fixture(autouse=True)
def console_script() -> None:
    if not RELAY.exists():
        pytest.skip("the relay console script is not installed in this venv")


@pytest.mark.parametrize("extra, variable", [
    ({"RELAY_WORKERS": "0"}, "RELAY_WORKERS"),
    ({"RELAY_UPSTREAM": "ftp://example.test"}, "RELAY_UPSTREAM"),
    ({"RELAY_UPSTREAM_TIMEOUT": "10m", "RELAY_SESSION_TIMEOUT": "5m"}, "RELAY_UPSTREAM_TIMEOUT"),
    ({"RELAY_TLS_CERT": "/nonexistent.crt", "RELAY_TLS_KEY": "/nonexistent.key"}, "RELAY_TLS_CERT"),
])
def test_bad_setting_stops_start_up_with_one_line(tmp_path: Path, extra: dict[str, str], variable: str) -> None:
    done = subprocess.run([str(RELAY)], env=relay_env(tmp_path, **extra), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("relay: ") and variable in line


def test_unusable_store_stops_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    env = relay_env(tmp_path, RELAY_DATABASE=f"sqlite:///{tmp_path / 'file' / 'relay.db'}")
    done = subprocess.run([str(RELAY)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("relay: RELAY_DATABASE:")


def _first_line(process: subprocess.Popen[str], timeout: float = 20) -> str:
    """The first stdout line, read in a thread so a silent process fails the test instead of hanging it."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(timeout)
    assert result and result[0], f"relay printed nothing; stderr: {process.stderr.read() if process.stderr else ''}"
    return result[0]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_two_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = SqliteStore(settings.database_path)
    make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    store.close()
    process = subprocess.Popen([str(RELAY)], env=relay_env(tmp_path, RELAY_WORKERS="2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = _first_line(process)
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)", banner)
        assert match, banner
        deadline = time.monotonic() + 20
        while len(_children(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the process table, bounded
        assert len(_children(process.pid)) == 2
        for _ in range(4):  # separate connections: the kernel hands them to either worker
            with smtplib.SMTP("127.0.0.1", int(match.group(1)), timeout=20) as smtp:
                smtp.login("billing", secret)
                assert smtp.sendmail("app@platform.test", ["someone@example.test"], MESSAGE) == {}
        assert len(list((tmp_path / "outbox").glob("*.eml"))) == 4
        workers = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
