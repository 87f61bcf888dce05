"""`relay`: check settings, store and listener, then serve SMTP in RELAY_WORKERS processes sharing one socket.

The relay never creates the store: on a fresh install it starts, serves no client, and picks the
store up once `relay-admin user add` has created it. Every worker also re-checks the tenants' DNS on
its own (`relay.service.revalidator`, started with the worker's relay); a lease makes one of them check a given
tenant. SIGTERM or SIGINT stops it politely (see `relay.service.relay.RunningRelay.stop`); with several
workers the parent forwards the signal and waits. SIGHUP reloads the settings that can change live and
looks at the keys at once (`relay.service.reload`); the parent forwards it too.

Logging goes to stderr in RELAY_LOG_FORMAT (`relay.core.logs`); the banner goes to stdout, in the same
format. With RELAY_METRICS_LISTEN the metrics server (`relay.service.metrics`) runs as a thread of the parent
(or of the one relay process), started after the workers are forked, and adds up every worker's counts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from relay.core import logs
from relay.core.logs import plural
from relay.core.models import Role
from relay.core.settings import Settings, SettingsError, load_settings
from relay.core.store import Store, StoreError, StoreMissing, open_store, store_location
from relay.policy.directory import Directory, Snapshot
from relay.policy.senders import is_loopback
from relay.service import eventloop, metrics
from relay.service.heap import freeze_long_lived
from relay.service.relay import start_relay
from relay.service.reload import Sighup
from relay.smtp.server import tls_context

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

log = logging.getLogger("relay.main")


class StartupError(Exception):
    """Start-up cannot go on; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class StoreFacts:
    """What the banner says of the store: where it is and what it holds (nothing while it does not exist)."""

    location: str  # absolute path
    exists: bool
    users: int = 0
    actor: str | None = None  # an owner or admin, who may take the next step
    tenants: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()
    clients: int = 0
    # The directory as read for these facts: the relay process serves from it (RELAY_WORKERS=1), or each
    # forked worker inherits it, so the keys are read and parsed once at start, not once more per worker.
    snapshot: Snapshot | None = field(default=None, repr=False, compare=False)


def _check_creatable(path: Path) -> None:
    """A missing store must be creatable later: its nearest existing ancestor is a directory."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise StartupError(f"RELAY_DATABASE: no store can be created at {path}: {parent} is not a directory")
            return


def _facts(store: Store, settings: Settings) -> StoreFacts:
    """Build one snapshot (which loads keys and logs any broken one) and count what the store holds."""
    snapshot = Directory(store, keys_dir=settings.keys_dir, reload_interval=settings.reload_interval).load()
    users = store.list_users()
    actors = [user.name for user in users if user.role is Role.OWNER] + [
        user.name for user in users if user.role is Role.ADMIN]
    # A degraded tenant is still verified: its mail leaves as itself (SPEC.md "Lifecycle").
    verified = tuple(tid for tid, tenant in snapshot.tenants.items() if tenant.status.sends_as_itself)
    return StoreFacts(location=store_location(settings), exists=True, users=len(users),
                      actor=actors[0] if actors else None, tenants=tuple(snapshot.tenants),
                      verified=verified, clients=len(snapshot.clients), snapshot=snapshot)


def check_store(settings: Settings) -> StoreFacts:
    """Read the store if it exists; never create it (`relay-admin user add` does)."""
    try:
        store = open_store(settings, create=False)
    except StoreMissing:
        _check_creatable(settings.database_path)
        log.info("no store at %s yet: no client can send until it exists; the relay picks it up within %gs "
                 "of its creation (relay-admin user add NAME --role owner)",
                 store_location(settings), settings.reload_interval)
        return StoreFacts(location=store_location(settings), exists=False)
    except (StoreError, sqlite3.Error, OSError) as exc:
        raise StartupError(f"RELAY_DATABASE: the store is not usable: {exc}") from None
    try:
        return _facts(store, settings)
    except (StoreError, sqlite3.Error, OSError) as exc:
        raise StartupError(f"RELAY_DATABASE: the store is not usable: {exc}") from None
    finally:
        store.close()


def check_tls(settings: Settings) -> None:
    """Load the certificate and key once, so a bad pair stops start-up with one line."""
    try:
        tls_context(settings)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"RELAY_TLS_CERT/RELAY_TLS_KEY: cannot load the certificate and key: {exc}") from None


def listen_socket(settings: Settings) -> socket.socket:
    """Bind once in the parent (SO_REUSEADDR); workers inherit the socket and accept from it."""
    host, port = settings.listen.host, settings.listen.port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
    except OSError as exc:
        raise StartupError(f"RELAY_LISTEN: cannot listen on {settings.listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def metrics_socket(settings: Settings) -> socket.socket | None:
    """Bind RELAY_METRICS_LISTEN once, in the parent, so that a bad address stops start-up (None: unset)."""
    address = settings.metrics_listen
    if address is None:
        return None
    try:
        return metrics.listen((address.host, address.port))
    except OSError as exc:
        raise StartupError(f"RELAY_METRICS_LISTEN: cannot listen on {address}: {exc.strerror or exc}") from None


def _upstream(settings: Settings) -> str:
    """The upstream as the banner names it: never its password, an outbox as an absolute path."""
    upstream = settings.upstream
    if upstream.scheme == "outbox" and upstream.outbox_dir is not None:
        return (f"outbox:{upstream.outbox_dir.resolve()} (each accepted message is written there as a signed "
                ".eml file, not sent on)")
    return str(upstream)  # Upstream.__str__ masks the password


def _store_summary(facts: StoreFacts) -> str:
    """`2 users, 3 tenants (1 verified), 4 clients`, or that the store does not exist yet."""
    if not facts.exists:
        return "does not exist yet"
    tenants = f"{plural(len(facts.tenants), 'tenant')} ({len(facts.verified)} verified)"
    return f"{plural(facts.users, 'user')}, {tenants}, {plural(facts.clients, 'client')}"


def next_step(settings: Settings, facts: StoreFacts, where: str) -> str:
    """The one step that is right in the store's present state, in the README's words."""
    acting = f" --as {facts.actor or 'USER'}"
    if not facts.exists:
        return (f"next: `relay-admin user add NAME --role owner` creates the store; this relay picks it up "
                f"within {settings.reload_interval:g}s")
    if facts.users == 0:
        return "next: `relay-admin user add NAME --role owner`"
    if not facts.tenants:
        return f"next: `relay-admin tenant set TENANT --name NAME --email ADDRESS --domain DOMAIN{acting}`"
    if facts.clients == 0:
        return f"next: `relay-admin client add NAME --tenant {facts.tenants[0]}{acting}` (prints its secret once)"
    if not facts.verified:
        # No verified tenant means no verified platform sender either: every message gets 550 5.7.1.
        tenant = facts.tenants[0]
        return (f"next: publish the records that `relay-admin records {tenant}{acting}` lists, then "
                f"`relay-admin validate {tenant}{acting}`; until a tenant is verified, every message is refused")
    return f"ready: services send to {where} with SMTP AUTH PLAIN or LOGIN, user = the client's name"


def banner(settings: Settings, address: tuple[str, int], facts: StoreFacts, *,
           metrics_address: tuple[str, int] | None = None) -> str:
    """Facts (where it listens and sends, its store and keys) and the next step that is right now."""
    host, port = address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    keys = settings.keys_dir.resolve()
    lines = [
        f"listening on {where} ({plural(settings.workers, 'worker')}, event loop {settings.event_loop})",
        *([f"metrics on {metrics.url(metrics_address)} (and /healthz, /readyz)"] if metrics_address else []),
        f"upstream {_upstream(settings)}",
        f"store {facts.location}: {_store_summary(facts)}",
        f"keys {keys}" + ("" if keys.is_dir() else " (does not exist yet)"),
        next_step(settings, facts, where),
    ]
    if settings.tls_cert is None and not is_loopback(host):
        lines.append("note: without RELAY_TLS_CERT/KEY, AUTH is offered on loopback only; "
                     "other clients need `client add --network`")
    return "\n".join(f"relay: {line}" for line in lines)


async def _serve(settings: Settings, sock: socket.socket, loaded: Snapshot | None) -> int:
    """Serve until SIGTERM or SIGINT, then stop politely."""
    stop = asyncio.Event()
    received: list[str] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    # A worker is forked with these blocked (see `_fork_worker`); now that they are handled, let them in.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS | {signal.SIGCHLD})
    relay = await start_relay(settings, None, sock=sock, loaded=loaded)
    freeze_long_lived()  # this process's directory and keys: never walked by a collection again
    hup = Sighup(relay, settings)
    loop.add_signal_handler(signal.SIGHUP, hup.received)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked since `main` began
    await stop.wait()
    await hup.close()
    await relay.stop(grace=hup.settings.shutdown_grace, reason=received[0])
    return EXIT_OK


def serve(settings: Settings, sock: socket.socket, loaded: Snapshot | None = None) -> int:
    """One relay process: its own event loop and store connection; `loaded`: the directory read at start."""
    return eventloop.run(_serve(settings, sock, loaded), settings.event_loop)


def _fork_worker(settings: Settings, sock: socket.socket, parents: tuple[socket.socket, ...] = (),
                 loaded: Snapshot | None = None) -> int:
    """Fork a worker; it inherits the parent's blocked signals until its event loop handles them.

    `parents` are sockets only the parent serves (the metrics server's): the worker closes its copies."""
    pid = os.fork()
    if pid == 0:
        for other in parents:
            other.close()
        os._exit(_worker(settings, sock, loaded))
    return pid


def _reap(children: set[int]) -> list[tuple[int, int]]:
    """Collect every worker that has exited: (pid, wait status)."""
    exited = []
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        children.discard(pid)
        exited.append((pid, status))
    return exited


def _forward(children: set[int], signum: int) -> None:
    """Send `signum` to every worker still running."""
    for pid in children:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # exited meanwhile; reaped at its SIGCHLD


def _reload_parent(settings: Settings, children: set[int]) -> None:
    """SIGHUP in the parent: its own log format, then every worker (each says what it applied)."""
    try:
        logs.configure(load_settings().log_format)
    except SettingsError:
        pass  # each worker says why in its own line
    log.info("SIGHUP: forwarded to %s", plural(len(children), "worker"))
    _forward(children, signal.SIGHUP)


def supervise(settings: Settings, sock: socket.socket, server: metrics.MetricsServer | None = None,
              metrics_dir: Path | None = None, loaded: Snapshot | None = None) -> int:
    """Fork the workers; forward SIGTERM/SIGINT/SIGHUP to them; exit when they have all exited.

    A worker that dies on its own takes the others down (exit 1): a supervisor such as systemd
    restarts the whole relay rather than run it short-handed without anyone noticing. The metrics
    `server` starts once every worker is forked (no thread is ever forked).
    """
    # Signals are taken synchronously (sigwaitinfo), never by a handler: a stop that arrives while
    # forking waits, blocked, and is forwarded to every worker once all exist.
    waited = STOP_SIGNALS | {signal.SIGCHLD, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    parents = (server.socket,) if server is not None else ()
    freeze_long_lived()  # the workers' collections never touch (and so never copy) the parent's pages
    children = {_fork_worker(settings, sock, parents, loaded) for _ in range(settings.workers)}
    sock.close()  # the workers hold the listener; when they close theirs on stop, it is closed
    if server is not None:
        server.start()
    stopping, code = False, EXIT_OK
    while children:
        signum = signal.sigwaitinfo(waited).si_signo
        if signum == signal.SIGHUP:
            if not stopping:
                _reload_parent(settings, children)
            continue
        if signum != signal.SIGCHLD:
            if not stopping:
                log.info("stopping on %s: forwarded to %s", signal.Signals(signum).name,
                         plural(len(children), "worker"))
            stopping = True
            _forward(children, signum)
            continue
        for pid, status in _reap(children):
            if metrics_dir is not None:
                metrics.worker_exited(metrics_dir, pid)
            if not stopping:
                logs.line(f"worker {pid} exited unexpectedly (status {status}); stopping",
                          log_format=settings.log_format, stream=sys.stderr, level="ERROR", logger=log.name)
                stopping, code = True, EXIT_RUNTIME
                _forward(children, signal.SIGTERM)
            elif os.waitstatus_to_exitcode(status) != EXIT_OK:
                log.error("worker %d exited with code %d while stopping", pid, os.waitstatus_to_exitcode(status))
                code = EXIT_RUNTIME
    if code == EXIT_OK:
        log.info("stopped: every worker exited")
    return code


def _worker(settings: Settings, sock: socket.socket, loaded: Snapshot | None) -> int:
    """A forked worker: its own event loop and store connection; never returns into the parent's code."""
    try:
        return serve(settings, sock, loaded)
    except BaseException as exc:  # os._exit follows: say why in one line instead of a lost traceback
        logs.line(f"worker {os.getpid()} failed: {type(exc).__name__}: {exc}", log_format=settings.log_format,
                  stream=sys.stderr, level="ERROR", logger=log.name)
        return EXIT_RUNTIME


def _format_hint() -> logs.LogFormat:
    """The log format asked for when the settings as a whole did not load (their error is said in it)."""
    return "json" if os.environ.get("RELAY_LOG_FORMAT", "").strip().lower() == "json" else "text"


def main() -> int:
    """Check everything once, print the banner, then serve in one process or supervise workers."""
    # SIGHUP would end the process until a relay handles it (`_serve`, `supervise`): held until then.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        settings = load_settings()
    except SettingsError as exc:
        logs.line(str(exc), log_format=_format_hint(), stream=sys.stderr, level="ERROR", logger=log.name)
        return EXIT_CONFIG
    logs.configure(settings.log_format)
    try:
        check_tls(settings)
        facts = check_store(settings)  # logs one line per unusable key; those tenants get 451 4.3.5
        sock = listen_socket(settings)
        metrics_sock = metrics_socket(settings)
    except StartupError as exc:
        logs.line(str(exc), log_format=settings.log_format, stream=sys.stderr, level="ERROR", logger=log.name)
        return EXIT_CONFIG
    host, port = sock.getsockname()[:2]
    metrics_address = metrics_sock.getsockname()[:2] if metrics_sock is not None else None
    for line in banner(settings, (str(host), int(port)), facts, metrics_address=metrics_address).splitlines():
        logs.line(line.removeprefix("relay: "), log_format=settings.log_format, stream=sys.stdout, logger=log.name)
    if metrics_sock is None:
        if settings.workers == 1:
            return serve(settings, sock, facts.snapshot)
        return supervise(settings, sock, loaded=facts.snapshot)
    # Every worker's counts in one scrape: prometheus-client's multiprocess mode, set up before any
    # worker exists, the directory removed when the relay exits.
    metrics_dir = metrics.enable_multiprocess()
    server = metrics.MetricsServer(metrics_sock, metrics.multiprocess_registry(metrics_dir),
                                   reload_interval=settings.reload_interval)
    try:
        if settings.workers == 1:
            server.start()
            return serve(settings, sock, facts.snapshot)
        return supervise(settings, sock, server, metrics_dir, facts.snapshot)
    finally:
        server.close()
        metrics.disable_multiprocess(metrics_dir)


def run() -> NoReturn:
    sys.exit(main())
