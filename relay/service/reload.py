"""SIGHUP: which settings a running relay takes on at once, and which wait for a restart.

The environment of a running process cannot change from outside, so a changed setting reaches the
relay through RELAY_ENV_FILE (relay.core.settings), read again on SIGHUP; a variable also set in the
environment wins over the file. On SIGHUP each relay process reads the settings again and:

- applies the live ones (`LIVE`) to what comes next: new sessions, the next command, the next
  transaction; a session or transaction under way keeps what it started with, so no connection drops;
- keeps the rest as they were and names each that changed in its log line, to take effect at a restart
  (the listening socket, the workers, the store, the keys directory, the metrics server, ...);
- looks at the store and the key files at once (a replaced key file signs the next message), as the
  directory otherwise does every RELAY_RELOAD_INTERVAL;
- if the settings no longer load (a typo in the file), changes nothing and says why.

The decision is a pure function of the old and new settings (`plan`), tested without a process.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from relay.core import logs
from relay.core.settings import (
    ENV_PREFIX,
    Settings,
    SettingsError,
    Upstream,
    load_settings,
    redact_url,
)
from relay.service.relay import RunningRelay

log = logging.getLogger("relay.reload")

# What a running relay takes on at SIGHUP.
LIVE = frozenset({
    "log_format",
    "upstream", "upstream_timeout", "upstream_pool_size",  # a new pool; the old one's idle connections QUIT
    "session_timeout", "shutdown_grace",
    "max_message_size", "max_recipients",
    "max_connections", "max_connections_per_ip", "max_inflight_per_tenant",
    "platform_sender", "tenant_header", "hostname",
    "tls_cert", "tls_key",
})
# relay-admin's own settings: the relay does not use them, so a change is not worth a word.
NOT_THE_RELAYS = frozenset({"admin_user", "admin_listen", "admin_tls_cert", "admin_tls_key"})
SECRET = frozenset({"notify_secret"})  # never shown, only said to have changed


@dataclass(frozen=True)
class Plan:
    settings: Settings  # what runs from now on: the new live settings, the old others
    applied: tuple[str, ...]  # `RELAY_MAX_RECIPIENTS 100 -> 5`, one per live setting that changed
    restart: tuple[str, ...]  # `RELAY_LISTEN`, one per other setting that changed

    def summary(self) -> str:
        """The SIGHUP log line's words."""
        applied = "; ".join(self.applied) if self.applied else "no setting changed"
        if not self.restart:
            return applied
        return f"{applied}; changed but taking effect only at a restart: {', '.join(self.restart)}"


def shown(name: str, value: Any) -> str:
    """A setting's value for a log line: never a password or secret."""
    if name in SECRET:
        return "(secret)"
    if value is None:
        return "(unset)"
    if isinstance(value, Upstream):
        return str(value)  # masks the password
    if name == "database":
        return redact_url(str(value))
    if isinstance(value, float):
        return f"{value:g}s"
    return str(value)


def plan(running: Settings, loaded: Settings) -> Plan:
    """What SIGHUP does with `loaded` while `running` is in effect."""
    applied: list[str] = []
    restart: list[str] = []
    keep: dict[str, Any] = {}
    for name in type(running).model_fields:
        old, new = getattr(running, name), getattr(loaded, name)
        if old == new or name in NOT_THE_RELAYS:
            continue
        variable = ENV_PREFIX + name.upper()
        if name in LIVE:
            applied.append(f"{variable} {shown(name, old)} -> {shown(name, new)}")
        else:
            restart.append(variable)
            keep[name] = old
    return Plan(settings=loaded.model_copy(update=keep), applied=tuple(applied), restart=tuple(restart))


async def apply(relay: RunningRelay, running: Settings) -> Settings:
    """Read the settings again and apply `plan`'s live part to `relay`; the settings in effect afterwards."""
    try:
        loaded = load_settings()
    except SettingsError as exc:
        log.error("SIGHUP: settings not reloaded, the running ones stay: %s", exc,
                  extra=logs.fields(event="reload", error=str(exc)))
        await relay.directory.poll()
        return running
    change = plan(running, loaded)
    try:
        relay.configure(change.settings)
    except (OSError, ssl.SSLError) as exc:
        log.error("SIGHUP: settings not reloaded, the running ones stay: RELAY_TLS_CERT/RELAY_TLS_KEY: cannot load "
                  "the certificate and key: %s", exc, extra=logs.fields(event="reload", error=str(exc)))
        await relay.directory.poll()
        return running
    logs.configure(change.settings.log_format)
    await relay.directory.poll()  # keys and store now, not at the next poll
    log.info("SIGHUP: %s; store and key files looked at", change.summary(),
             extra=logs.fields(event="reload", applied=list(change.applied), restart=list(change.restart)))
    return change.settings


class Sighup:
    """A relay process's SIGHUP handling: reloads one at a time, in the order the signals came."""

    def __init__(self, relay: RunningRelay, settings: Settings) -> None:
        self.settings = settings  # in effect now
        self._relay = relay
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def received(self) -> None:
        """The event loop's signal handler: start a reload (it waits for one under way); none once stopping."""
        if self._closed:
            return
        task = asyncio.create_task(self._reload(), name="sighup")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self) -> None:
        async with self._lock:
            self.settings = await apply(self._relay, self.settings)

    async def close(self) -> None:
        """Cancel reloads not yet done and take no more (the relay is stopping; the handler stays installed,
        since removing it would let a SIGHUP end the process mid-stop)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
