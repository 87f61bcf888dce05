"""What one relay process counts (prometheus-client): the metrics the SMTP side, the pipeline and the
revalidator update on their hot paths. Serving them (/metrics, /healthz, /readyz, several workers in
one scrape) is relay/service/metrics.py, which also lists every metric's meaning."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIGN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def reply_class(code: int) -> str:
    """`250` -> `2xx`; anything outside 2xx-5xx -> `other`."""
    return f"{code // 100}xx" if 200 <= code < 600 else "other"


class Metrics:
    """One process's metrics, in `registry` (a fresh one by default, so that relays in one process,
    as in tests, never share counts)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.messages = Counter("relay_messages", "Transactions by tenant and outcome.",
                                ["tenant", "outcome"], registry=r)
        self.replies = Counter("relay_replies", "Replies to SMTP clients by class.", ["class"], registry=r)
        self.upstream_seconds = Histogram("relay_upstream_seconds", "Duration of one upstream exchange.",
                                          buckets=UPSTREAM_BUCKETS, registry=r)
        self.sign_seconds = Histogram("relay_sign_seconds", "Duration of one DKIM signature.",
                                      buckets=SIGN_BUCKETS, registry=r)
        self.signing_failures = Counter("relay_signing_failures", "Messages that could not be signed.",
                                        ["tenant"], registry=r)
        self.sessions_open = Gauge("relay_sessions_open", "SMTP sessions open.", registry=r,
                                   multiprocess_mode="livesum")
        self.gate_waits = Counter("relay_tenant_gate_waits", "Transactions that waited for their tenant's turn.",
                                  registry=r)
        self.tenants = Gauge("relay_tenants", "Tenants by lifecycle status, as of the latest reload.",
                             ["status"], registry=r, multiprocess_mode="livemostrecent")
        self.revalidations = Counter("relay_revalidations", "The relay's own re-checks of tenants' DNS.",
                                     ["result"], registry=r)
        self.store_read = Gauge("relay_store_last_read_timestamp_seconds",
                                "When the store was last read (the oldest of the live workers).",
                                registry=r, multiprocess_mode="livemin")
        self.key_unusable = Gauge("relay_signing_key_unusable",
                                  "1 while a tenant that sends as itself has no usable signing key.",
                                  ["tenant"], registry=r, multiprocess_mode="livemax")
        self.upstream_ok = Gauge("relay_upstream_last_ok_timestamp_seconds",
                                 "When an upstream exchange last got an answer.",
                                 registry=r, multiprocess_mode="livemax")
        self.upstream_down = Gauge("relay_upstream_last_unavailable_timestamp_seconds",
                                   "When an upstream exchange last failed to connect or was cut off.",
                                   registry=r, multiprocess_mode="livemax")

        # Each class's child made once: the hot path only increments, and every class shows from 0.
        self._reply_classes = {hundred: self.replies.labels(f"{hundred}xx") for hundred in (2, 3, 4, 5)}
        self._messages: dict[tuple[str, str], Any] = {}  # (tenant, outcome) -> its child, as met

    def message(self, tenant: str, outcome: str) -> None:
        """Count one transaction (relay_messages_total)."""
        child = self._messages.get((tenant, outcome))
        if child is None:
            child = self._messages[(tenant, outcome)] = self.messages.labels(tenant, outcome)
        child.inc()

    def reply(self, code: int) -> None:
        """Count one reply to an SMTP client (the last line of it)."""
        child = self._reply_classes.get(code // 100)
        (child if child is not None else self.replies.labels(reply_class(code))).inc()

    def upstream_answered(self, *, connected: bool) -> None:
        """Note an upstream exchange for /readyz: it got an answer, or it could not connect or was cut off."""
        (self.upstream_ok if connected else self.upstream_down).set(time.time())
