"""Prometheus metrics of the relay and its health: what each worker counts, and GET /metrics, /healthz
and /readyz at RELAY_METRICS_LISTEN (off by default).

Every relay process counts for itself in a `Metrics` (prometheus-client). With RELAY_METRICS_LISTEN set,
`relay.service.main` turns on prometheus-client's multiprocess mode before any worker starts
(`enable_multiprocess`): each worker writes its values to files in a fresh temporary directory, the
metrics server (a thread of the parent, or of the one relay process) adds them up at every scrape, a
worker that exits is marked dead (its gauges leave the sum; its counts stay), and the directory is
removed at exit. So one scrape holds every worker's counts.

The metrics (all `relay_`; tenant ids are bounded by the store; nothing is labelled by client address):

    relay_messages_total{tenant,outcome}        one per transaction: delivered|deferred|refused|abandoned;
                                                tenant `-` when none was decided
    relay_replies_total{class}                  replies to SMTP clients by class: 2xx|3xx|4xx|5xx
    relay_upstream_seconds                      histogram: one upstream exchange (or outbox write)
    relay_sign_seconds                          histogram: one DKIM signature
    relay_signing_failures_total{tenant}        a message that could not be signed (451 4.3.5)
    relay_sessions_open                         gauge, summed over live workers
    relay_tenant_gate_waits_total               transactions that waited for their tenant's turn
    relay_tenants{status}                       gauge by lifecycle status, as of the latest reload
    relay_revalidations_total{result}           the relay's own re-checks: verified|not_verified|
                                                could_not_check|discarded|skipped|error
    relay_store_last_read_timestamp_seconds     when a worker last read the store (oldest live worker)
    relay_signing_key_unusable{tenant}          1 while a tenant that sends as itself has no usable key
    relay_upstream_last_ok_timestamp_seconds    the last upstream exchange that got an answer (any worker)
    relay_upstream_last_unavailable_timestamp_seconds   the last one that failed to connect or was cut off

/readyz answers 200 only when all of these hold (`readiness`), else 503 with a JSON body naming each
that does not:

- store: every live worker read the store within max(3 x RELAY_RELOAD_INTERVAL, 10 s); a store not yet
  created, or not read since start, is not ready;
- keys: every tenant that sends as itself (verified, degraded) has a usable signing key;
- upstream: no upstream exchange failed for want of a connection (4.4.x: unreachable, timed out, lost)
  in the last 60 s, unless a later one got an answer; none at all yet is ready.

/healthz answers 200 whenever the process serving it runs (its supervisor takes every worker down
when one dies, so a running relay is whole).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    multiprocess,
    values,
)

from relay.core.metrics import Metrics
from relay.core.models import TenantStatus
from relay.mail.signer import DkimSigner
from relay.policy.directory import Directory, Snapshot

log = logging.getLogger("relay.metrics")

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own
UPSTREAM_DOWN_WINDOW = 60.0  # seconds: a connection failure this recent makes the relay not ready
MIN_STORE_WINDOW = 10.0  # seconds: the least time allowed since the last store read


# ---------------------------------------------------------------- the directory, observed


class MeteredDirectory(Directory):
    """The relay's directory, telling `metrics` after each load what it found: when the store was read,
    tenants by status, and which sending tenants have no usable key."""

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics
        self._seen: object = None  # the snapshot last observed
        self._unusable: dict[str, float] = {}

    def load(self, previous: Snapshot | None = None) -> Snapshot:
        snapshot = super().load(previous)
        self.observe()
        return snapshot

    async def reload(self) -> list[str]:
        changed = await super().reload()  # raises when the store could not be read: nothing to note
        self.observe()
        return changed

    def observe(self) -> None:
        snapshot = self.current
        if snapshot.generation < 0:
            return  # no store yet: nothing was read
        self._metrics.store_read.set(time.time())
        if snapshot is self._seen:
            return
        self._seen = snapshot
        counts = {status: 0 for status in TenantStatus}
        for tenant in snapshot.tenants.values():
            counts[tenant.status] += 1
        for status, count in counts.items():
            self._metrics.tenants.labels(str(status)).set(count)
        unusable = {tid: 1.0 if tenant.status.sends_as_itself and not isinstance(snapshot.signers.get(tid),
                                                                                DkimSigner) else 0.0
                    for tid, tenant in snapshot.tenants.items()}
        for tid in self._unusable.keys() - unusable.keys():
            unusable[tid] = 0.0  # removed from the store: no longer a problem
        for tid, value in unusable.items():
            if self._unusable.get(tid) != value:
                self._metrics.key_unusable.labels(tid).set(value)
        self._unusable = {tid: value for tid, value in unusable.items() if tid in snapshot.tenants}


# ---------------------------------------------------------------- several workers


def enable_multiprocess() -> Path:
    """Turn on prometheus-client's multiprocess mode in a fresh directory; call before any `Metrics`
    exists and before the workers fork (they inherit it). `disable_multiprocess` removes it."""
    path = Path(tempfile.mkdtemp(prefix="relay-metrics-"))
    os.environ[MULTIPROC_VARIABLE] = str(path)
    # prometheus-client picks its value class (in memory, or in per-process files) once, when it is
    # imported, from this variable; it was imported with this module, so it picks again now.
    # tests/test_metrics.py checks that this still turns file-backed values on.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def disable_multiprocess(path: Path) -> None:
    """Back to in-memory values; the directory and its files are removed."""
    if os.environ.get(MULTIPROC_VARIABLE) == str(path):
        del os.environ[MULTIPROC_VARIABLE]
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    shutil.rmtree(path, ignore_errors=True)


def worker_exited(path: Path, pid: int) -> None:
    """A worker is gone: its live gauges leave the sums (its counters stay, as Prometheus expects)."""
    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def multiprocess_registry(path: Path) -> CollectorRegistry:
    """A registry whose every scrape adds up the files of all workers in `path`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry


# ---------------------------------------------------------------- readiness


@dataclass(frozen=True)
class Readiness:
    problems: dict[str, str] = field(default_factory=dict)  # check -> what is wrong

    @property
    def ready(self) -> bool:
        return not self.problems

    def body(self) -> dict[str, Any]:
        return {"ready": self.ready, "not_ready": self.problems}


def _samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s ago" if seconds >= 1 else "just now"


def readiness(registry: CollectorRegistry, *, now: float, reload_interval: float) -> Readiness:
    """The /readyz rule (module docstring) over what the workers reported."""
    samples = _samples(registry)
    problems: dict[str, str] = {}
    # A worker whose gauge exists but was never set (0) has not read the store yet.
    reads = [value for _, value in samples.get("relay_store_last_read_timestamp_seconds", [])]
    window = max(3 * reload_interval, MIN_STORE_WINDOW)
    if not reads or min(reads) <= 0:
        problems["store"] = "not read yet (the store does not exist, or cannot be read)"
    elif now - min(reads) > window:
        problems["store"] = f"last read {_ago(now - min(reads))} (more than {window:g}s)"
    unusable = sorted(labels.get("tenant", "?") for labels, value in samples.get("relay_signing_key_unusable", [])
                      if value > 0)
    if unusable:
        problems["keys"] = "no usable signing key for tenant " + ", ".join(unusable)
    ok = max((value for _, value in samples.get("relay_upstream_last_ok_timestamp_seconds", [])), default=0.0)
    down = max((value for _, value in samples.get("relay_upstream_last_unavailable_timestamp_seconds", [])),
               default=0.0)
    if down > ok and now - down < UPSTREAM_DOWN_WINDOW:
        problems["upstream"] = f"unreachable {_ago(now - down)} (no answer from it since)"
    return Readiness(problems)


# ---------------------------------------------------------------- the HTTP server


def listen(address: tuple[str, int]) -> socket.socket:
    """A listening socket for the metrics server (raises OSError)."""
    host, port = address
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    server_version = "accounton-relay"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"alive": True})
        elif path == "/readyz":
            state = readiness(self.server.registry, now=time.time(), reload_interval=self.server.reload_interval)
            self._json(200 if state.ready else 503, state.body())
        else:
            self._json(404, {"error": "not found: GET /metrics, /healthz or /readyz"})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._answer(status, (json.dumps(body) + "\n").encode(), "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """A scrape is not news (http.server would write each request to stderr)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Errors (a bad request, a timeout) go to the relay's log, in its format, not straight to stderr."""
        log.warning("metrics server: %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, registry: CollectorRegistry, reload_interval: float) -> None:
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.registry = registry
        self.reload_interval = reload_interval

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("metrics server: a request from %s failed", client_address[0] if client_address else "?")


class MetricsServer:
    """GET /metrics, /healthz and /readyz on `sock`, served by a thread (`start`, `close`)."""

    def __init__(self, sock: socket.socket, registry: CollectorRegistry, *, reload_interval: float) -> None:
        self._server = _Server(sock, registry, reload_interval)
        self._thread: threading.Thread | None = None

    @property
    def socket(self) -> socket.socket:
        """The listening socket (a forked worker closes its copy)."""
        return self._server.socket

    @property
    def address(self) -> tuple[str, int]:
        name = self._server.socket.getsockname()
        return str(name[0]), int(name[1])

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="relay-metrics", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


def url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"

