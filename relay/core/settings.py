"""The one settings object: every `RELAY_*` variable, parsed and checked once, then passed in."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

ENV_PREFIX = "RELAY_"
# A file of RELAY_* lines (dotenv syntax) read at start and again on SIGHUP, so that a running relay can
# pick up a changed setting (relay.service.reload); a variable also set in the environment wins over the file.
ENV_FILE_VARIABLE = "RELAY_ENV_FILE"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")  # RELAY_DATABASE URLs for the PostgreSQL backend


EventLoopName = Literal["uvloop", "asyncio"]  # RELAY_EVENT_LOOP (relay.service.eventloop)

class SettingsError(Exception):
    """A setting is wrong; the message is one line naming the variable and the problem."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Upstream:
    """Where accepted mail goes. `scheme` is `smtp` (STARTTLS when offered), `smtps` or `outbox`."""

    scheme: Literal["smtp", "smtps", "outbox"]
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = None
    tls_required: bool = False
    outbox_dir: Path | None = None

    def __str__(self) -> str:
        # Never shows the password: this is what logs and `make run` print.
        if self.scheme == "outbox":
            return f"outbox:{self.outbox_dir}"
        user = f"{self.username}:***@" if self.username else ""
        query = "?tls=required" if self.tls_required else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}{query}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h`, `7d`, `250ms` or a plain number of seconds -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 1h, 7d)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_host_port(value: str, *, default_port: int | None = None) -> HostPort:
    """`host:port`, `[v6]:port`, or `host` when a default port is given."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not host:port")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:  # a bare IPv6 address
        host, port_text = text, ""
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{value!r} has no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{value!r} has no port (use host:port)")
        return HostPort(host, default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 0 to 65535")
    return HostPort(host, int(port_text))


def parse_upstream(value: str) -> Upstream:
    text = value.strip()
    if text.startswith("outbox:"):
        directory = text[len("outbox:"):]
        if not directory:
            raise ValueError("outbox: needs a directory, e.g. outbox:var/outbox")
        return Upstream(scheme="outbox", outbox_dir=Path(directory))
    parts = urlsplit(text)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"{redact_url(text)!r}: use smtp://host:port, smtps://host:port or outbox:DIR")
    if not parts.hostname:
        raise ValueError(f"{redact_url(text)!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{redact_url(text)!r} has an invalid port") from None
    query = parse_qs(parts.query)
    unknown = set(query) - {"tls"}
    if unknown:
        raise ValueError(f"unknown upstream option {sorted(unknown)[0]!r} (only tls=required)")
    tls = query.get("tls", [""])[-1]
    if tls not in ("", "required"):
        raise ValueError(f"tls={tls!r}: only tls=required is known")
    return Upstream(
        scheme=parts.scheme,  # type: ignore[arg-type]
        host=parts.hostname,
        port=port or (465 if parts.scheme == "smtps" else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls_required=tls == "required" or parts.scheme == "smtps",
    )


def _greeting_name_problem(name: str) -> str | None:
    """Why `name` cannot greet an SMTP server, or None (RFC 5321 4.1.1.1: EHLO gives the client's FQDN).

    A container's hostname (no FQDN known) makes socket.getfqdn() answer `localhost` or a bare name.
    """
    if name in ("localhost", "localhost.localdomain") or name.endswith((".localhost", ".localdomain")):
        return "names this machine only"  # RFC 6761 6.3
    if name.rpartition(".")[2].isdigit():
        return "is an IP address, not a host name"
    if "." not in name:
        return "is not a fully qualified domain name"
    return None


def redact_url(url: str) -> str:
    """A URL as messages and logs name it: a password, in the user part or as `?password=`, becomes `***`.
    The one redactor for every URL setting (RELAY_DATABASE, RELAY_UPSTREAM, RELAY_NOTIFY_URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL (an unbalanced `[`): hide whatever follows a `user:`
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
    netloc = re.sub(r"^([^:@]*):[^@]*@", r"\1:***@", parts.netloc)
    query = "&".join(
        f"{name}=***" if name == "password" else pair
        for pair in parts.query.split("&") if pair for name in [pair.partition("=")[0]]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _postgres_url(value: str) -> str:
    """A PostgreSQL URL as libpq parses it (several hosts allowed, for failover); never echoes its password."""
    from psycopg import ProgrammingError  # only a PostgreSQL setting loads the driver
    from psycopg.conninfo import conninfo_to_dict

    password = urlsplit(value).password
    try:
        params = conninfo_to_dict(value)
    except ProgrammingError as exc:
        reason = " ".join(str(exc).split())
        if password:
            reason = reason.replace(password, "***")
        raise ValueError(f"{redact_url(value)!r} is not a PostgreSQL URL: {reason}") from None
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) <= 65535):
            raise ValueError(f"{redact_url(value)!r}: port {port!r} must be a number from 1 to 65535")
    return value


class Settings(BaseSettings):
    """Every setting of both the relay and the admin CLI. Environment prefix `RELAY_`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    listen: Annotated[HostPort, NoDecode] = Field(
        default=HostPort("127.0.0.1", 2525), description="SMTP listen address, host:port"
    )
    upstream: Annotated[Upstream, NoDecode] = Field(
        default=Upstream(scheme="outbox", outbox_dir=Path("var/outbox")),
        description="smtp://[user:pass@]host:port[?tls=required], smtps://..., or outbox:DIR",
    )
    database: str = Field(default="sqlite:///var/relay.db",
                          description="the store: sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    keys_dir: Path = Field(default=Path("keys"), description="DKIM private keys (dir 0700, files 0600)")
    nameservers: Annotated[list[HostPort], NoDecode] = Field(
        default_factory=list,
        description="DNS servers for validation, host[:port] comma-separated; empty = the domain's own",
    )
    tenant_header: str = Field(default="X-Relay-Tenant", description="header naming a message's tenant")
    return_path_target: str = Field(
        default="bounces.relay.invalid", description="CNAME target of tenants' return-path hosts"
    )
    platform_sender: str | None = Field(
        default=None, description="tenant id of the platform's own sender, for unverified tenants"
    )
    tls_cert: Path | None = Field(default=None, description="certificate enabling STARTTLS")
    tls_key: Path | None = Field(default=None, description="private key for RELAY_TLS_CERT")
    workers: int = Field(default=1, ge=1, le=64, description="relay processes sharing the port")
    event_loop: EventLoopName = Field(
        default="uvloop", description="each relay process's event loop: uvloop (faster) or Python's asyncio",
    )

    # Beyond SPEC.md: limits and timeouts a production relay needs (RELIABILITY.md R5).
    hostname: str = Field(default_factory=socket.getfqdn, description="name in EHLO/banner/Received")
    dmarc_rua: str | None = Field(default=None, description="mailto: for aggregate DMARC reports we advise")
    max_message_size: int = Field(default=35 * 1024 * 1024, ge=1024, description="bytes, SIZE limit")
    max_recipients: int = Field(default=100, ge=1, description="recipients per message")
    upstream_timeout: float = Field(default=60.0, gt=0, description="budget for one upstream exchange")
    # Per relay process, like the limits below (relay.smtp.upstream.SmtpUpstream).
    upstream_pool_size: int = Field(
        default=8, ge=0, le=1000,
        description="upstream connections kept open between messages per relay process (RSET before reuse); "
                    "0: a new connection for every message",
    )
    session_timeout: float = Field(default=300.0, gt=0, description="idle/DATA timeout of a client session")
    # Counted by each relay process on its own: RELAY_WORKERS processes admit up to N times as many.
    max_connections: int = Field(
        default=1000, ge=1, le=1_000_000, description="concurrent SMTP sessions per relay process"
    )
    max_connections_per_ip: int = Field(
        default=100, ge=1, le=1_000_000,
        description="concurrent SMTP sessions per client IP address per relay process (loopback too)",
    )
    # Per relay process too: RELAY_WORKERS processes let a tenant have up to N times as many in flight.
    max_inflight_per_tenant: int = Field(
        default=4, ge=1, le=10_000,
        description="transactions of one tenant being signed or delivered at once per relay process; "
                    "others wait their turn, beyond RELAY_UPSTREAM_TIMEOUT 451 4.7.0",
    )
    dns_timeout: float = Field(default=5.0, gt=0, description="lifetime of one DNS question")
    reload_interval: float = Field(default=2.0, gt=0, description="how often the relay looks for admin changes")
    shutdown_grace: float = Field(
        default=30.0, ge=0,
        description="on SIGTERM/SIGINT, how long transactions under way may take to finish before 421",
    )
    admin_user: str | None = Field(default=None, description="acting user of relay-admin (or --as)")
    admin_listen: Annotated[HostPort, NoDecode] = Field(
        default=HostPort("127.0.0.1", 8025),
        description="listen address of the admin web server (`relay-admin serve`), host:port",
    )
    admin_tls_cert: Path | None = Field(
        default=None, description="certificate: `relay-admin serve` speaks HTTPS when set"
    )
    admin_tls_key: Path | None = Field(default=None, description="private key for RELAY_ADMIN_TLS_CERT")

    # The lifecycle (SPEC.md "Lifecycle").
    revalidate_interval: float = Field(
        default=3600.0, gt=0,
        description="how often the relay re-checks verified tenants' DNS (pending ones back off up to it)",
    )
    grace: float = Field(
        default=72 * 3600.0, ge=0,
        description="how long a required record may fail definitively before a tenant becomes failed",
    )
    key_overlap: float = Field(
        default=7 * 86400.0, ge=0,
        description="how long a replaced DKIM key stays published (retiring) before it may be removed",
    )
    notify_url: str | None = Field(
        default=None, description="http(s) URL that receives a JSON POST for every status change",
    )
    notify_secret: str | None = Field(
        default=None, description="HMAC-SHA256 key signing each notification (X-Relay-Signature)",
    )
    dkim_ed25519: bool = Field(
        default=False,
        description="also sign with an Ed25519 key (RFC 8463), published under its own selector",
    )

    # Operations (SPEC.md "Operations"; relay.service.metrics, relay.core.logs).
    metrics_listen: Annotated[HostPort | None, NoDecode] = Field(
        default=None, description="host:port of GET /metrics, /healthz and /readyz; unset: no metrics server",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: one line per record; json: one JSON object per line",
    )

    @field_validator("listen", "admin_listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        return parse_host_port(value) if isinstance(value, str) else value

    @field_validator("metrics_listen", mode="before")
    @classmethod
    def _metrics_listen(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_host_port(value) if value.strip() else None
        return value

    @field_validator("log_format", "event_loop", mode="before")
    @classmethod
    def _lower_case_word(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("upstream", mode="before")
    @classmethod
    def _upstream(cls, value: Any) -> Any:
        return parse_upstream(value) if isinstance(value, str) else value

    @field_validator("nameservers", mode="before")
    @classmethod
    def _nameservers(cls, value: Any) -> Any:
        if isinstance(value, str):
            servers = [parse_host_port(item, default_port=53) for item in value.split(",") if item.strip()]
            for server in servers:
                try:
                    ipaddress.ip_address(server.host)
                except ValueError:
                    raise ValueError(f"{server.host!r} is not an IP address") from None
            return servers
        return value

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        if value.startswith(POSTGRES_SCHEMES):  # relay/core/store/postgres.py
            return _postgres_url(value)
        if not (value.startswith("sqlite:///") and len(value) > len("sqlite:///")):
            raise ValueError(f"{redact_url(value)!r}: use sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        return value

    @field_validator("tenant_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        # RFC 5322 3.6.8: printable ASCII except colon.
        if not re.fullmatch(r"[!-9;-~]+", value):
            raise ValueError(f"{value!r} is not a header field name")
        return value

    @field_validator("return_path_target", "hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        name = value.strip().rstrip(".").lower()
        if not re.fullmatch(r"(?=.{1,253}$)([a-z0-9_](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9_](?:[a-z0-9-]{0,61}[a-z0-9])?", name):
            raise ValueError(f"{value!r} is not a host name")
        return name

    @field_validator("platform_sender")
    @classmethod
    def _tenant_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", value):
            raise ValueError(f"{value!r} is not a tenant id")
        return value

    @field_validator("tls_cert", "tls_key", "admin_tls_cert", "admin_tls_key")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_file() and os.access(value, os.R_OK)):
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("upstream_timeout", "session_timeout", "dns_timeout", "reload_interval", "shutdown_grace",
                     "revalidate_interval", "grace", "key_overlap", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("dmarc_rua")
    @classmethod
    def _rua(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"mailto:[^\s;,!]+@[^\s;,!]+", value):
            raise ValueError(f"{value!r}: use mailto:address")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("RELAY_TLS_CERT and RELAY_TLS_KEY go together: set both or neither")
        if (self.admin_tls_cert is None) != (self.admin_tls_key is None):
            raise ValueError("RELAY_ADMIN_TLS_CERT and RELAY_ADMIN_TLS_KEY go together: set both or neither")
        if self.upstream_timeout >= self.session_timeout:
            # R5: the upstream budget must end before the client's session does.
            raise ValueError("RELAY_UPSTREAM_TIMEOUT must be shorter than RELAY_SESSION_TIMEOUT")
        if self.notify_url is not None and not self.notify_secret:
            # A receiver must be able to tell our notifications from anyone's POST.
            raise ValueError("RELAY_NOTIFY_URL needs RELAY_NOTIFY_SECRET to sign its notifications")
        problem = _greeting_name_problem(self.hostname) if self.upstream.scheme != "outbox" else None
        if problem is not None:  # an outbox greets nobody: there the name only shows in the banner
            raise ValueError(
                f"RELAY_HOSTNAME: {self.hostname!r} {problem}; the relay greets its SMTP upstream with it (EHLO) "
                "and writes it into Received, where receivers refuse or score it: set RELAY_HOSTNAME to this "
                "host's public name, e.g. relay.example.com"
            )
        return self

    @field_validator("notify_url")
    @classmethod
    def _notify_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{redact_url(value)!r}: use an http:// or https:// URL")
        return value

    @property
    def database_path(self) -> Path:
        return Path(self.database[len("sqlite:///"):])


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, then RELAY_ENV_FILE if set (plus CLI overrides); any problem becomes one
    `SettingsError` line."""
    env_file = os.environ.get(ENV_FILE_VARIABLE, "").strip() or None
    if env_file is not None and not (os.path.isfile(env_file) and os.access(env_file, os.R_OK)):
        raise SettingsError(f"{ENV_FILE_VARIABLE}: {env_file} is not a readable file")
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    values["_env_file"] = env_file  # pydantic-settings: the file's lines, under the environment's
    try:
        return Settings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if not field:  # a contradiction between settings: the message names them itself
            raise SettingsError(message) from None
        raise SettingsError(f"{ENV_PREFIX}{field.upper()}: {message}") from None
    except _SourceError as exc:  # a value the environment source could not even decode
        raise SettingsError(str(exc).replace('error parsing value for field "', ENV_PREFIX).split('"')[0]
                            + ": cannot be parsed") from None
