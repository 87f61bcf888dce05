"""A running relay in one event loop: `start_relay` puts the directory, the pipeline, the revalidator and
the SMTP server (relay/smtp/server.py) together; `RunningRelay` applies live settings (SIGHUP) and stops
politely (SIGTERM: RFC 5321 3.8)."""


from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import weakref
from dataclasses import dataclass, field

from relay.core.logs import plural
from relay.core.metrics import Metrics
from relay.core.settings import Settings
from relay.core.store import Store, open_store
from relay.policy.directory import Directory, Snapshot
from relay.policy.rdns import ReverseDns
from relay.service.metrics import MeteredDirectory
from relay.service.revalidator import Revalidator
from relay.smtp.limits import ConnectionCounter, Drain, shutting_down
from relay.smtp.pipeline import Pipeline
from relay.smtp.server import (
    CALL_LIMITS,
    Hooks,
    RelaySMTP,
    quiet_aiosmtpd_log,
    tls_context,
)
from relay.smtp.upstream import (
    Upstream,
    close_upstream,
    make_upstream,
    upstream_settings,
)

log = logging.getLogger("relay.server")  # the name operators filter on, as before the split

# After the grace, how long sessions cut short get to unwind (their abandoned-transaction lines, R6).
UNWIND_TIMEOUT = 5.0


@dataclass
class NewSessions:
    """What the next sessions are made with; replaced by `RunningRelay.configure` (SIGHUP)."""

    settings: Settings
    tls: ssl.SSLContext | None


@dataclass
class RunningRelay:
    """A relay serving in this event loop; `stop()` ends it politely, `close()` at once."""

    server: asyncio.Server
    directory: Directory
    reloader: asyncio.Task[None]
    revalidator: Revalidator  # its own task: re-checks tenants' DNS every RELAY_REVALIDATE_INTERVAL
    sessions: weakref.WeakSet[RelaySMTP]
    connections: ConnectionCounter  # this process's open sessions, for the limits and for tests
    pipeline: Pipeline  # its tenant gate and signing threads
    rdns: ReverseDns
    drain: Drain
    hostname: str
    hooks: Hooks | None = None
    new_sessions: NewSessions | None = None
    metrics: Metrics = field(default_factory=Metrics)  # this process's (relay.core.metrics)
    # The upstream made from the settings (None when one was handed in): made again when they change,
    # its pooled connections QUIT on close.
    upstream: Upstream | None = None
    upstream_made_from: tuple[object, ...] = ()  # relay.smtp.upstream.upstream_settings of that one
    retiring: set[asyncio.Task[None]] = field(default_factory=set)  # replaced upstreams QUITting their pools

    def configure(self, settings: Settings) -> None:
        """Apply settings that can change live (relay.service.reload decides which): new sessions (timeout, size,
        TLS certificate), connection limits, AUTH/MAIL/RCPT checks, and the pipeline (upstream, tenant
        gate, platform sender). Sessions and transactions under way keep what they started with."""
        tls = tls_context(settings)  # first: a certificate that does not load raises and changes nothing
        self.hostname = settings.hostname
        if self.new_sessions is not None:
            self.new_sessions.settings, self.new_sessions.tls = settings, tls
        if self.hooks is not None:
            self.hooks.configure(settings)
        self.connections.set_limits(max_total=settings.max_connections, max_per_ip=settings.max_connections_per_ip)
        self.pipeline.configure(settings, upstream=self._renewed_upstream(settings))

    def _renewed_upstream(self, settings: Settings) -> Upstream | None:
        """A new upstream when a setting it is made from changed, else None (the pool stays warm). The old
        one's idle connections are QUIT in the background; its messages under way finish on their own."""
        if self.upstream is None or upstream_settings(settings) == self.upstream_made_from:
            return None
        old, self.upstream = self.upstream, make_upstream(settings, pooled=True)
        self.upstream_made_from = upstream_settings(settings)
        if old is not None:
            task = asyncio.get_running_loop().create_task(close_upstream(old))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)
        return self.upstream

    @property
    def address(self) -> tuple[str, int]:
        name = self.server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def stop(self, *, grace: float, reason: str) -> None:
        """Stop listening at once; transactions under way get `grace` seconds; then 421 to all (RFC 5321 3.8)."""
        self.server.close()  # the listening socket closes: new connections are refused by the kernel
        self.reloader.cancel()
        self.revalidator.cancel()  # a check under way unwinds meanwhile; close() waits for it
        busy = self.drain.busy
        under_way = f", {busy} with a transaction under way (up to {grace:g}s to finish)" if busy else ""
        log.info("stopping on %s: no longer accepting; %s open%s",
                 reason, plural(self.drain.open, "session"), under_way)
        self.drain.begin(shutting_down(self.hostname))
        if not await self.drain.wait(grace):
            cut = self.drain.cut()
            if cut:
                log.warning("shutdown grace of %gs is over: %s cut short with 421 (the client retries)",
                            grace, plural(cut, "transaction"))
            await self.drain.wait(UNWIND_TIMEOUT)
        await self.close()
        log.info("stopped")

    async def close(self) -> None:
        """End everything now: no 421, transactions under way are abandoned (R6 logs them)."""
        self.reloader.cancel()
        self.revalidator.cancel()
        self.server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        await self.server.wait_closed()
        self.pipeline.close()
        if self.upstream is not None:
            await close_upstream(self.upstream)  # QUIT, after the sessions whose messages used it
        await asyncio.gather(*self.retiring, return_exceptions=True)
        self.rdns.close()
        if self.hooks is not None:
            self.hooks.close()
        await self.revalidator.stop()
        self.directory.close()


async def start_relay(
    settings: Settings, store: Store | None, *, sock: socket.socket | None = None, upstream: Upstream | None = None,
    revalidate_tick: float | None = None, metrics: Metrics | None = None, loaded: Snapshot | None = None,
) -> RunningRelay:
    """Load the directory, then listen on `sock` (inherited from a parent) or on `settings.listen`.

    With `store=None` the relay opens RELAY_DATABASE itself, never creating it: while it does not exist
    the relay serves no client and its reloader keeps looking for it. The revalidator always opens its
    own connection to RELAY_DATABASE; `revalidate_tick` overrides its tick (tests). Everything counts
    into `metrics` (a fresh `Metrics` by default). `loaded`: the directory as the parent process read it
    before forking this worker (relay.service.main): its keys are not read again unless changed on disk.
    """
    quiet_aiosmtpd_log()
    metrics = metrics if metrics is not None else Metrics()
    directory = MeteredDirectory(store, keys_dir=settings.keys_dir, reload_interval=settings.reload_interval,
                                 opener=lambda: open_store(settings, create=False), metrics=metrics)
    await asyncio.to_thread(directory.load, loaded)
    own: Upstream | None = None  # made here from the settings (not handed in): pooled, closed on close()
    if upstream is None:
        upstream = own = make_upstream(settings, pooled=True)
    pipeline = Pipeline(settings=settings, directory=directory, upstream=upstream, metrics=metrics)
    rdns = ReverseDns()
    hooks = Hooks(settings=settings, directory=directory, pipeline=pipeline, rdns=rdns)
    new = NewSessions(settings=settings, tls=tls_context(settings))
    sessions: weakref.WeakSet[RelaySMTP] = weakref.WeakSet()
    connections = ConnectionCounter(max_total=settings.max_connections, max_per_ip=settings.max_connections_per_ip)
    drain = Drain()

    loop = asyncio.get_running_loop()

    def factory() -> RelaySMTP:
        protocol = RelaySMTP(
            hooks,
            max_size=new.settings.max_message_size,
            connections=connections,
            drain=drain,
            metrics=metrics,
            hostname=new.settings.hostname,
            ident="ESMTP accounton-relay",
            tls_context=new.tls,
            timeout=new.settings.session_timeout,
            auth_require_tls=True,  # relaxed per connection for loopback in connection_made
            command_call_limit=CALL_LIMITS,
            loop=loop,  # else aiosmtpd looks it up per connection, changing the process's warning filters to do so
        )
        sessions.add(protocol)
        return protocol

    if sock is not None:
        server = await loop.create_server(factory, sock=sock)
    else:
        server = await loop.create_server(factory, settings.listen.host, settings.listen.port, reuse_address=True)
    reloader = asyncio.create_task(directory.reload_forever())
    # Its own store connection: the directory's reads never wait behind a check's writes.
    revalidator = Revalidator(settings, opener=lambda: open_store(settings, create=False),
                              tick=revalidate_tick, changed=directory.poll, metrics=metrics)
    revalidator.start()
    return RunningRelay(server=server, directory=directory, reloader=reloader, revalidator=revalidator,
                        sessions=sessions, connections=connections, pipeline=pipeline, rdns=rdns, drain=drain,
                        hostname=settings.hostname, hooks=hooks, new_sessions=new, metrics=metrics,
                        upstream=own,
                        upstream_made_from=upstream_settings(settings) if own is not None else ())
