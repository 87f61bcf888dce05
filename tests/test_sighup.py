"""SIGHUP (relay.service.reload): settings that can change live and keys are taken on at once, others are named
as waiting for a restart, and no session drops: one open across the signal completes a message."""

from __future__ import annotations

import json
import logging
import os
import signal
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from relay.core.models import DkimKey
from relay.core.settings import HostPort, SettingsError, Upstream, load_settings
from relay.core.store import open_store
from relay.service import reload
from relay.service.reload import plan
from tests.relay_harness import (
    RCPT,
    RELAY_SCRIPT,
    RawClient,
    RelayProcess,
    make_settings,
    process_env,
    relay_running,
    send,
)
from tests.snapshot import verified_acme
from tests.test_metrics import until

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: Reload\r\n\r\nBody.\r\n"


# ------------------------------------------------------------------ the plan (pure)


def test_live_settings_are_applied_and_the_others_wait_for_a_restart(tmp_path: Path) -> None:
    running = make_settings(tmp_path)
    loaded = running.model_copy(update={
        "max_recipients": 5, "session_timeout": 30.0, "platform_sender": "platform", "log_format": "json",
        "listen": HostPort("0.0.0.0", 25), "workers": 4, "keys_dir": tmp_path / "other-keys",
        "admin_user": "olivia",  # relay-admin's: not worth a word
    })
    change = plan(running, loaded)
    assert change.applied == ("RELAY_PLATFORM_SENDER (unset) -> platform", "RELAY_MAX_RECIPIENTS 100 -> 5",
                              "RELAY_SESSION_TIMEOUT 15s -> 30s", "RELAY_LOG_FORMAT text -> json")
    assert change.restart == ("RELAY_LISTEN", "RELAY_KEYS_DIR", "RELAY_WORKERS")
    effective = change.settings
    assert (effective.max_recipients, effective.platform_sender, effective.log_format) == (5, "platform", "json")
    assert (effective.listen, effective.workers, effective.keys_dir) == (running.listen, 1, running.keys_dir)
    assert change.summary() == ("RELAY_PLATFORM_SENDER (unset) -> platform; RELAY_MAX_RECIPIENTS 100 -> 5; "
                                "RELAY_SESSION_TIMEOUT 15s -> 30s; RELAY_LOG_FORMAT text -> json; changed but taking "
                                "effect only at a restart: RELAY_LISTEN, RELAY_KEYS_DIR, RELAY_WORKERS")


def test_no_secret_is_shown(tmp_path: Path) -> None:
    running = make_settings(tmp_path, upstream=Upstream(scheme="smtp", host="a.example", port=587,
                                                        username="relay", password="old-secret"),
                            notify_url="https://hooks.example/x", notify_secret="old-hmac")
    loaded = running.model_copy(update={
        "upstream": Upstream(scheme="smtp", host="a.example", port=587, username="relay", password="new-secret"),
        "notify_secret": "new-hmac", "database": "postgresql://relay:db-secret@db.example/relay"})
    change = plan(running, loaded)
    words = change.summary()
    assert "RELAY_UPSTREAM smtp://relay:***@a.example:587 -> smtp://relay:***@a.example:587" in words
    assert change.restart == ("RELAY_DATABASE", "RELAY_NOTIFY_SECRET")
    for secret in ("old-secret", "new-secret", "old-hmac", "new-hmac", "db-secret"):
        assert secret not in words
    assert plan(running, running).summary() == "no setting changed"


# ------------------------------------------------------------------ applied in process


@dataclass
class Site:
    tmp: Path
    secret: str
    key: DkimKey
    database: str


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    """`acme` verified with its key, and its client `billing`."""
    store, key, secret = verified_acme(make_settings(tmp_path, database=database_url))
    store.close()
    yield Site(tmp_path, secret, key, database_url)


def env_file(path: Path, **values: str) -> Path:
    path.write_text("".join(f"RELAY_{name.upper()}={value}\n" for name, value in values.items()))
    return path


async def test_apply_reads_the_file_and_changes_what_comes_next(
        site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.reload")
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    base = {"database": site.database, "keys_dir": str(site.tmp / "keys"),
            "hostname": "relay.test", "return_path_target": "bounces.relay.test", "listen": "127.0.0.1:0",
            "upstream": f"outbox:{site.tmp / 'outbox'}", "upstream_timeout": "5s", "session_timeout": "15s",
            "reload_interval": "50ms"}
    path = env_file(site.tmp / "relay.env", **base)
    monkeypatch.setenv("RELAY_ENV_FILE", str(path))
    settings = make_settings(site.tmp, database=site.database)
    store = open_store(settings)
    try:
        async with relay_running(settings, store) as relay:
            env_file(path, **(base | {"upstream": f"outbox:{site.tmp / 'elsewhere'}", "max_message_size": "4096",
                                      "max_recipients": "1", "keys_dir": str(site.tmp / "moved")}))
            effective = await reload.apply(relay, settings)
            assert (effective.max_message_size, effective.keys_dir) == (4096, settings.keys_dir)
            client = await RawClient.connect(relay)
            code, ehlo = await client.command("EHLO client.test")
            client.close()
            outcome = await send(relay, MESSAGE, user="billing", secret=site.secret)
            two = await send(relay, MESSAGE, user="billing", secret=site.secret, rcpts=(RCPT, "other@example.test"))
            env_file(path, **(base | {"max_recipients": "many"}))
            assert await reload.apply(relay, effective) is effective, "a bad file changes nothing"
    finally:
        store.close()
    assert code == 250 and "SIZE 4096" in ehlo
    assert outcome.code == 250 and len(list((site.tmp / "elsewhere").glob("*.eml"))) == 1
    assert (two.code, two.stage) == (452, "RCPT")
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.reload"]
    assert lines[0].startswith(f"SIGHUP: RELAY_UPSTREAM outbox:{site.tmp / 'outbox'} -> outbox:")
    assert "RELAY_MAX_RECIPIENTS 100 -> 1" in lines[0]
    assert lines[0].endswith("changed but taking effect only at a restart: RELAY_KEYS_DIR; store and key files "
                             "looked at")
    assert lines[1] == ("SIGHUP: settings not reloaded, the running ones stay: RELAY_MAX_RECIPIENTS: "
                        "Input should be a valid integer, unable to parse string as an integer")


# ------------------------------------------------------------------ the relay as a process


def _dns(key: DkimKey) -> object:
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return f"v=DKIM1; k=rsa; p={key.public_key_b64}".encode()
    return lookup


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_keeps_an_open_session_and_takes_on_settings_and_a_replaced_key(site: Site, workers: int) -> None:
    if not RELAY_SCRIPT.exists():
        pytest.skip("the relay console script is not installed in this venv")
    key_file = site.tmp / "keys" / site.key.key_file
    aside = key_file.with_name("aside")
    key_file.rename(aside)  # the key is missing at start: acme's mail is deferred (451 4.3.5)
    path = env_file(site.tmp / "relay.env", listen="127.0.0.1:0", workers=str(workers), max_recipients="100")
    env = process_env(site.tmp, RELAY_DATABASE=site.database, RELAY_ENV_FILE=str(path),
                      RELAY_RELOAD_INTERVAL="1h")  # only SIGHUP looks
    del env["RELAY_LISTEN"]  # in the file, where a change can be seen (the environment would win)
    with RelayProcess(env) as relay:
        smtp = smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=30)
        try:
            smtp.login("billing", site.secret)
            with pytest.raises(smtplib.SMTPDataError) as deferred:
                smtp.sendmail("app@platform.test", [RCPT], MESSAGE)
            aside.rename(key_file)  # the key file is back
            env_file(path, listen="127.0.0.1:9", workers=str(workers + 1), max_recipients="1", log_format="json")
            relay.process.send_signal(signal.SIGHUP)

            def reloaded() -> list[str]:
                return [line for line in relay.lines() if "SIGHUP: RELAY_" in line]

            until(lambda: len(reloaded()) == workers)  # each worker says what it applied
            reloads = [json.loads(line) for line in reloaded()]
            refused = smtp.sendmail("app@platform.test", [RCPT], MESSAGE)  # the same session
            smtp.mail("app@platform.test")
            assert smtp.rcpt(RCPT)[0] == 250
            second = smtp.rcpt("other@example.test")
            smtp.rset()
            smtp.quit()
        finally:
            smtp.close()
        assert relay.stop() == 0
    assert (deferred.value.smtp_code, deferred.value.smtp_error[:5]) == (451, b"4.3.5")
    assert refused == {}, "the message in the open session was accepted"
    assert second[0] == 452, second
    assert len(reloads) == workers and len({entry["process"] for entry in reloads}) == workers
    for entry in reloads:
        assert entry["applied"] == ["RELAY_MAX_RECIPIENTS 100 -> 1", "RELAY_LOG_FORMAT text -> json"]
        assert entry["restart"] == ["RELAY_LISTEN", "RELAY_WORKERS"]
        assert entry["message"].endswith("changed but taking effect only at a restart: RELAY_LISTEN, RELAY_WORKERS; "
                                         "store and key files looked at")
    after = relay.lines()[relay.lines().index(next(line for line in relay.lines() if "SIGHUP" in line)):]
    assert all(json.loads(line) for line in after), "the log is JSON from the reload on"
    if workers == 2:
        assert any(json.loads(line)["message"] == "SIGHUP: forwarded to 2 workers" for line in after)
    [eml] = (site.tmp / "outbox").glob("*.eml")
    signed = eml.read_bytes().split(b"\r\n", 2)[2]  # after Return-Path and the one X-Envelope-To
    assert dkim.verify(signed, dnsfunc=_dns(site.key)), "signed with the key put back"


def test_an_env_file_that_cannot_be_read_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RELAY_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(SettingsError, match=r"^RELAY_ENV_FILE: .*missing.env is not a readable file$"):
        load_settings()
