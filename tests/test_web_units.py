"""The web server's pure parts: its three languages, the sign-in throttle's rule, redirects, error fields."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from admin.context import UsageError
from admin.web import security
from admin.web.errors import split_field
from admin.web.i18n import LANGUAGES, negotiate, texts
from tests.conftest import CliResult

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_the_three_languages_have_the_same_texts_with_the_same_fields() -> None:
    keys = [set(texts(lang)) for lang in LANGUAGES]
    assert keys[0] == keys[1] == keys[2]
    for key in keys[0]:
        fields = {lang: set(re.findall(r"{(\w+)}", texts(lang)[key])) for lang in LANGUAGES}
        assert fields["nl"] == fields["en"] == fields["fr"], key


def test_every_text_a_template_asks_for_exists() -> None:
    folder = resources.files("admin.web").joinpath("templates")
    asked: set[str] = set()
    for template in folder.iterdir():
        asked |= set(re.findall(r"""\bt\(\s*["']([\w.-]+)["']""", template.read_text(encoding="utf-8")))
    assert asked, "no texts found in the templates"
    known = set(texts("nl"))
    prefixes = {key for key in asked if key.endswith(".")}  # t("status." ~ status): one of a family
    assert asked - prefixes - known == set()
    assert all(any(k.startswith(prefix) for k in known) for prefix in prefixes)
    for status in ("new", "pending", "verified", "degraded", "failed"):
        assert {f"status.{status}", f"status.{status}.text"} <= known
    assert {f"check.{s}" for s in ("ok", "missing", "mismatch", "warning", "error")} <= known


@pytest.mark.parametrize(("asked", "header", "expected"), [
    (None, None, ("nl", False)),
    (None, "de-DE,de;q=0.9", ("nl", False)),
    (None, "de;q=1, fr-BE;q=0.8, en;q=0.5", ("fr", False)),
    (None, "en-GB", ("en", False)),
    (None, "en;q=0, nl;q=0.1", ("nl", False)),
    (None, "fr;q=0.2, en;q=0.9", ("en", False)),
    ("en", "fr", ("en", True)),
    ("de", "fr", ("fr", False)),
    (None, "garbage;;q=x,", ("nl", False)),
])
def test_language_negotiation(asked: str | None, header: str | None, expected: tuple[str, bool]) -> None:
    assert negotiate(asked, header) == expected


def test_the_throttle_waits_after_the_limit_and_doubles() -> None:
    def failures(n: int) -> list[datetime]:
        return [NOW - timedelta(seconds=n - 1 - i) for i in range(n)]  # the last one now

    assert security.wait_for(failures(4), 5, NOW).seconds == 0
    assert security.wait_for(failures(5), 5, NOW).seconds == 30
    assert security.wait_for(failures(6), 5, NOW).seconds == 60
    assert security.wait_for(failures(7), 5, NOW + timedelta(seconds=100)).seconds == 20
    assert security.wait_for(failures(40), 5, NOW).seconds == 15 * 60  # capped
    assert security.wait_for(failures(5), 5, NOW + timedelta(seconds=31)).seconds == 0


@pytest.mark.parametrize(("target", "expected"), [
    ("/tenants/acme/settings?lang=en", "/tenants/acme/settings?lang=en"),
    ("//evil.example", "/tenants"), ("/\\evil.example", "/tenants"), ("https://evil.example/", "/tenants"),
    ("javascript:alert(1)", "/tenants"), ("", "/tenants"), (None, "/tenants"), ("/a b", "/tenants"),
])
def test_after_sign_in_only_a_local_path(target: str | None, expected: str) -> None:
    assert security.safe_next(target) == expected


def test_tokens_compare_only_when_equal_and_present() -> None:
    token = security.new_token()
    assert security.same_token(token, token)
    assert not security.same_token(token, token[:-1] + "x")
    assert not security.same_token("", "") and not security.same_token(None, token)


@pytest.mark.parametrize(("message", "field"), [
    ("--email: 'x' is not an e-mail address (local@domain)", "email"),
    ("--return-path: '_dmarc' is reserved", "return_path"),
    ("TENANT: 'Bad' is not a valid tenant id", "tenant"),
    ("--lang: invalid choice: 'de'", "lang"),
    ("permission denied for carl (accountant): only owners", None),
    ("--network: not a field of this form", None),
])
def test_the_cli_message_names_the_field(message: str, field: str | None) -> None:
    assert split_field(str(UsageError(message)))[0] == field


def test_the_admin_server_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from relay.core.settings import HostPort, SettingsError, load_settings

    for name in ("RELAY_ADMIN_LISTEN", "RELAY_ADMIN_TLS_CERT", "RELAY_ADMIN_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().admin_listen == HostPort("127.0.0.1", 8025)
    assert load_settings().admin_tls_cert is None
    monkeypatch.setenv("RELAY_ADMIN_LISTEN", "[::1]:0")
    assert load_settings().admin_listen == HostPort("::1", 0)
    monkeypatch.setenv("RELAY_ADMIN_LISTEN", "127.0.0.1")
    with pytest.raises(SettingsError, match=r"^RELAY_ADMIN_LISTEN: '127.0.0.1' has no port"):
        load_settings()
    monkeypatch.delenv("RELAY_ADMIN_LISTEN")
    cert = tmp_path / "cert.pem"
    cert.write_text("not checked here")
    monkeypatch.setenv("RELAY_ADMIN_TLS_CERT", str(cert))
    with pytest.raises(SettingsError, match="RELAY_ADMIN_TLS_CERT and RELAY_ADMIN_TLS_KEY go together"):
        load_settings()
    monkeypatch.setenv("RELAY_ADMIN_TLS_KEY", str(tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match=r"^RELAY_ADMIN_TLS_KEY: .*missing.pem is not a readable file"):
        load_settings()


def test_serve_refuses_an_address_it_cannot_listen_on(cli: Callable[..., CliResult]) -> None:
    assert cli("user", "add", "olivia", "--role", "owner").code == 0
    bad = cli("serve", "--listen", "127.0.0.1")
    assert (bad.code, bad.out) == (2, "")
    assert bad.err == "relay-admin: --listen: '127.0.0.1' has no port (use host:port)\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli("serve", "--listen", f"127.0.0.1:{port}")
        assert busy.code == 2 and busy.out == ""
        assert busy.err.startswith(f"relay-admin: --listen: cannot listen on 127.0.0.1:{port}: ")
