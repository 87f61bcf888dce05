"""Settings: every bad `RELAY_*` value stops with one line naming the variable; good values parse."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.core.settings import HostPort, SettingsError, load_settings, parse_duration
from tests.conftest import CliResult

BAD_VALUES: list[tuple[str, str]] = [
    ("RELAY_EVENT_LOOP", "trio"),
    ("RELAY_LISTEN", "nonsense"),
    ("RELAY_LISTEN", "127.0.0.1:99999"),
    ("RELAY_LISTEN", "[::1"),
    ("RELAY_LISTEN", ":2525"),
    ("RELAY_UPSTREAM", "ftp://mail.test"),
    ("RELAY_UPSTREAM", "smtp://"),
    ("RELAY_UPSTREAM", "smtp://mail.test?tls=maybe"),
    ("RELAY_UPSTREAM", "smtp://mail.test?starttls=1"),
    ("RELAY_UPSTREAM", "smtp://mail.test:99999"),
    ("RELAY_UPSTREAM", "outbox:"),
    ("RELAY_DATABASE", "postgresql://relay:secret@db.test:99999/relay"),
    ("RELAY_DATABASE", "sqlite:///"),
    ("RELAY_DATABASE", "relay.db"),
    ("RELAY_NAMESERVERS", "dns.example"),
    ("RELAY_NAMESERVERS", "127.0.0.1:port"),
    ("RELAY_TENANT_HEADER", "X Relay Tenant"),
    ("RELAY_TENANT_HEADER", "X-Relay:Tenant"),
    ("RELAY_TENANT_HEADER", ""),
    ("RELAY_RETURN_PATH_TARGET", "bad host!"),
    ("RELAY_RETURN_PATH_TARGET", "-bounces.test"),
    ("RELAY_HOSTNAME", "relay host"),
    ("RELAY_WORKERS", "0"),
    ("RELAY_WORKERS", "65"),
    ("RELAY_WORKERS", "many"),
    ("RELAY_DMARC_RUA", "reports@acme.test"),
    ("RELAY_MAX_MESSAGE_SIZE", "10"),
    ("RELAY_MAX_MESSAGE_SIZE", "big"),
    ("RELAY_MAX_RECIPIENTS", "0"),
    ("RELAY_UPSTREAM_TIMEOUT", "soon"),
    ("RELAY_UPSTREAM_TIMEOUT", "-5s"),
    ("RELAY_UPSTREAM_TIMEOUT", "0"),
    ("RELAY_UPSTREAM_POOL_SIZE", "-1"),
    ("RELAY_UPSTREAM_POOL_SIZE", "some"),
    ("RELAY_SESSION_TIMEOUT", "forever"),
    ("RELAY_DNS_TIMEOUT", "0s"),
    ("RELAY_RELOAD_INTERVAL", "2 weeks"),
    ("RELAY_PLATFORM_SENDER", "Platform Sender"),
    ("RELAY_TLS_CERT", "/nonexistent/cert.pem"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_bad_value_is_one_line_naming_the_variable(
    relay_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: ") and "\n" not in message
    assert "Traceback" not in message


@pytest.mark.parametrize(("variables", "named"), [
    ({"RELAY_TLS_CERT": "{dir}/cert.pem"}, ("RELAY_TLS_CERT", "RELAY_TLS_KEY")),
    ({"RELAY_TLS_KEY": "{dir}/key.pem"}, ("RELAY_TLS_CERT", "RELAY_TLS_KEY")),
    ({"RELAY_UPSTREAM_TIMEOUT": "5m", "RELAY_SESSION_TIMEOUT": "1m"},
     ("RELAY_UPSTREAM_TIMEOUT", "RELAY_SESSION_TIMEOUT")),
])
def test_contradiction_names_both_variables(
    relay_env: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str],
    named: tuple[str, ...],
) -> None:
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value.format(dir=relay_env))
    (relay_env / "cert.pem").write_text("cert")
    (relay_env / "key.pem").write_text("key")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert all(name in str(caught.value) for name in named) and "\n" not in str(caught.value)


def test_cli_stops_with_exit_2_and_one_line(
    cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_WORKERS", "0")
    result = cli("tenant", "list", "--as", "alice")
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("relay-admin: RELAY_WORKERS: ") and result.err.count("\n") == 1


def test_defaults(relay_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAY_DATABASE", "RELAY_KEYS_DIR", "RELAY_UPSTREAM", "RELAY_RETURN_PATH_TARGET"):
        monkeypatch.delenv(name)
    settings = load_settings()
    assert settings.listen == HostPort("127.0.0.1", 2525)
    assert str(settings.upstream) == "outbox:var/outbox"
    assert settings.database_path == Path("var/relay.db")
    assert settings.keys_dir == Path("keys")
    assert settings.nameservers == []
    assert settings.tenant_header == "X-Relay-Tenant"
    assert settings.return_path_target == "bounces.relay.invalid"
    assert settings.platform_sender is None and settings.tls_cert is None
    assert settings.workers == 1


def test_good_values_parse(relay_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "RELAY_LISTEN": "[::1]:2526",
        "RELAY_UPSTREAM": "smtp://relay%40acme:p%40ss%3Aword@mail.test:587?tls=required",
        "RELAY_NAMESERVERS": "127.0.0.1:5353, ::1",
        "RELAY_TENANT_HEADER": "X-Tenant",
        "RELAY_RETURN_PATH_TARGET": "Bounces.Relay.Test.",
        "RELAY_PLATFORM_SENDER": "platform",
        "RELAY_TLS_CERT": str(relay_env / "cert.pem"),
        "RELAY_TLS_KEY": str(relay_env / "key.pem"),
        "RELAY_WORKERS": "4",
        "RELAY_DMARC_RUA": "mailto:dmarc@relay.test",
        "RELAY_UPSTREAM_TIMEOUT": "250ms",
        "RELAY_SESSION_TIMEOUT": "5m",
        "RELAY_DNS_TIMEOUT": "2.5",
        "RELAY_RELOAD_INTERVAL": "1h",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    (relay_env / "cert.pem").write_text("cert")  # only readability is checked at load
    (relay_env / "key.pem").write_text("key")
    s = load_settings()
    assert s.listen == HostPort("::1", 2526) and str(s.listen) == "[::1]:2526"
    up = s.upstream
    assert (up.scheme, up.host, up.port, up.tls_required) == ("smtp", "mail.test", 587, True)
    assert (up.username, up.password) == ("relay@acme", "p@ss:word")
    assert "p@ss" not in str(up) and "word" not in str(up)  # logs never show the password
    assert s.nameservers == [HostPort("127.0.0.1", 5353), HostPort("::1", 53)]
    assert s.tenant_header == "X-Tenant"
    assert s.return_path_target == "bounces.relay.test"
    assert s.platform_sender == "platform" and s.workers == 4
    assert s.tls_cert == relay_env / "cert.pem" and s.tls_key == relay_env / "key.pem"
    assert (s.upstream_timeout, s.session_timeout, s.dns_timeout, s.reload_interval) == (
        0.25, 300.0, 2.5, 3600.0)


@pytest.mark.parametrize(("url", "scheme", "port", "tls"), [
    ("smtps://mail.test", "smtps", 465, True),
    ("smtp://mail.test", "smtp", 25, False),
])
def test_upstream_default_ports(relay_env: Path, monkeypatch: pytest.MonkeyPatch, url: str,
                                scheme: str, port: int, tls: bool) -> None:
    monkeypatch.setenv("RELAY_UPSTREAM", url)
    up = load_settings().upstream
    assert (up.scheme, up.port, up.tls_required) == (scheme, port, tls)


def test_cli_overrides_win_over_environment(relay_env: Path) -> None:
    settings = load_settings(database="sqlite:///elsewhere.db", keys_dir="/srv/keys")
    assert settings.database_path == Path("elsewhere.db")
    assert settings.keys_dir == Path("/srv/keys")


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604800),
                                               ("250ms", 0.25), ("12", 12), (3, 3)])
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("hostname", ["localhost", "localhost.localdomain", "relay.localdomain", "app.localhost",
                                      "3f2a9c1b7d4e", "127.0.0.1", "10.0.0.7."])
@pytest.mark.parametrize("upstream", ["smtp://smtp.provider.test:587", "smtps://smtp.provider.test"])
def test_an_smtp_upstream_needs_a_hostname_receivers_accept(
    relay_env: Path, monkeypatch: pytest.MonkeyPatch, hostname: str, upstream: str,
) -> None:
    """RFC 5321 4.1.1.1: EHLO gives the FQDN; a container's `localhost` is refused or scored by receivers."""
    monkeypatch.setenv("RELAY_UPSTREAM", upstream)
    monkeypatch.setenv("RELAY_HOSTNAME", hostname)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("RELAY_HOSTNAME: ") and "\n" not in message
    assert "set RELAY_HOSTNAME to this host's public name" in message


def test_without_relay_hostname_this_hosts_fqdn_must_do(
    relay_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default is socket.getfqdn(): in a container it answers `localhost` (as on the machine this was
    written on), and then a relay with an SMTP upstream must not start."""
    monkeypatch.delenv("RELAY_HOSTNAME")
    monkeypatch.setenv("RELAY_UPSTREAM", "smtp://smtp.provider.test:587")
    fqdn = socket.getfqdn().rstrip(".").lower()
    usable = "." in fqdn and fqdn.rpartition(".")[2].isalpha() and not fqdn.endswith(("localhost", "localdomain"))
    if usable:
        assert load_settings().hostname == fqdn
    else:
        with pytest.raises(SettingsError, match=f"^RELAY_HOSTNAME: {re.escape(repr(fqdn))} "):
            load_settings()


def test_an_outbox_upstream_greets_nobody_so_any_hostname_does(
    relay_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_HOSTNAME", "localhost")
    assert load_settings().hostname == "localhost"
    monkeypatch.setenv("RELAY_UPSTREAM", "smtp://smtp.provider.test:587")
    monkeypatch.setenv("RELAY_HOSTNAME", "Relay.Example.COM.")
    assert load_settings().hostname == "relay.example.com"


@pytest.mark.parametrize(("value", "size"), [(None, 8), ("0", 0), ("32", 32)])
def test_upstream_pool_size_is_per_process_and_live(
    relay_env: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, size: int,
) -> None:
    from relay.service.reload import plan

    if value is not None:
        monkeypatch.setenv("RELAY_UPSTREAM_POOL_SIZE", value)
    settings = load_settings()
    assert settings.upstream_pool_size == size  # 0: one connection per message, as before the pool
    change = plan(settings, settings.model_copy(update={"upstream_pool_size": size + 1}))
    assert change.applied == (f"RELAY_UPSTREAM_POOL_SIZE {size} -> {size + 1}",) and change.restart == ()
