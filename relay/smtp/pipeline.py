"""From one accepted transaction to one reply: tenant, identity, rewrite, sign, deliver, and its log line.

The log line (logger `relay.transaction`) names the transaction by the id in its Received field, with
client, address, tenant, recipient count, size, outcome, the reply and timings; with RELAY_LOG_FORMAT=json
the same as keys (relay.core.logs). Never a secret, never any of the message's content.

The message is normalised and its header parsed once (relay.mail.message.parse_message); every stage
after that takes the parsed `Message` (the tenant header, rewriting, signing) and the body stays the one
DATA buffer until upstream takes it: a 25 MB message is not copied per stage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from relay.core.logs import fields
from relay.core.metrics import Metrics
from relay.core.models import Client
from relay.core.replies import (
    AUTH_REQUIRED,
    INTERNAL_ERROR,
    UPSTREAM_AMBIGUOUS,
    Reply,
    ReplyError,
)
from relay.core.settings import Settings
from relay.core.transaction import Transaction, received_field
from relay.mail.message import Message, normalise_data, parse_message
from relay.mail.rewrite import rewrite_message
from relay.mail.signer import DkimSigner, SigningKeyError
from relay.policy.directory import Directory
from relay.policy.senders import decide_identity, decide_tenant, tenant_header_values
from relay.smtp.fairness import TenantGate, gate_wait_budget
from relay.smtp.upstream import Envelope, Upstream

log = logging.getLogger("relay.transaction")


@dataclass
class _Facts:
    """What the transaction's log line says beyond the reply; filled in as decisions are made."""

    tenant: str = "-"
    size: int = 0
    handed: Message | None = None  # the signed message, once its delivery to upstream has started
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)  # gate, sign, upstream: each once it happened

    def timings(self) -> dict[str, float]:
        """Milliseconds: `total` so far, and each stage that happened."""
        stages = {name: round(value * 1000, 1) for name, value in self.seconds.items()}
        return {"total": round((time.perf_counter() - self.started) * 1000, 1), **stages}


def outcome(reply: Reply) -> str:
    return "delivered" if reply.code < 300 else "deferred" if reply.transient else "refused"


def message_id(message: Message) -> str:
    """The Message-ID of a message (our rewrite guarantees one), for logs only."""
    values = message.values(b"message-id")
    return values[0].decode("ascii", errors="replace").strip() if values else "-"


def handed_over(signed: Message) -> str:
    """R6: enough to find a duplicate of a message upstream may have, and nothing of its content."""
    return f"message-id={message_id(signed)} sha256={signed.sha256()}"


@runtime_checkable
class MessageUpstream(Protocol):
    """An upstream that takes the signed message as header bytes and the body in place (`Message.chunks`).

    relay.smtp.upstream's `deliver(envelope, bytes)` needs the message joined: one more copy of it, and
    asyncio copies what the socket did not take at once twice more. An upstream that also has this
    method gets the message instead: SIZE is `message.size`, BODY=8BITMIME when not `message.isascii()`,
    and after the 354 it writes each of `message.stuffed_chunks()` and lets the transport drain between them.
    """

    async def deliver_message(self, envelope: Envelope, message: Message) -> Reply: ...


def _timed(function: Callable[[Message], Message], message: Message) -> tuple[Message, float]:
    """`function(message)` and the seconds it took (run on a signing thread: the wait for one is not counted)."""
    start = time.perf_counter()
    return function(message), time.perf_counter() - start


def _ms(timings: dict[str, float]) -> str:
    """`ms=12.5 sign_ms=3.1 upstream_ms=8.9` for the text line."""
    return " ".join(f"{'ms' if name == 'total' else name + '_ms'}={value:g}" for name, value in timings.items())


def _line_fields(tx: Transaction, facts: _Facts, outcome: str, reply: str, timings: dict[str, float],
                 **more: Any) -> dict[str, Any]:
    """The transaction line as keys (JSON); the text line says the same."""
    return fields(event="transaction", id=tx.id, client=tx.client, ip=tx.peer.ip, tenant=facts.tenant,
                  recipients=len(tx.recipients), size=facts.size, outcome=outcome, reply=reply,
                  ms=timings, **more)


# Messages up to this size are signed on the event loop (see Pipeline._sign).
INLINE_SIGN_BYTES = 64 * 1024


class Pipeline:
    def __init__(self, *, settings: Settings, directory: Directory, upstream: Upstream,
                 metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._directory = directory
        self._set_upstream(upstream)
        self.metrics = metrics if metrics is not None else Metrics()
        self.gate = TenantGate(settings.max_inflight_per_tenant)
        # Signing has threads of its own: nothing else queued on the loop's default executor (a slow
        # resolver call, a file write) can hold every tenant's signature behind it.
        self._signing = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="relay-sign")

    def close(self) -> None:
        """Stop the signing threads (a signature under way finishes; nothing new is taken)."""
        self._signing.shutdown(wait=False, cancel_futures=True)

    def configure(self, settings: Settings, *, upstream: Upstream | None = None) -> None:
        """Settings changed live (SIGHUP, relay.service.reload): transactions from now on use them, and `upstream`
        when given; one under way keeps what it started with."""
        self._settings = settings
        self.gate.limit = settings.max_inflight_per_tenant
        if upstream is not None:
            self._set_upstream(upstream)

    def _set_upstream(self, upstream: Upstream) -> None:
        # Whether it takes the parsed message is decided here, once: a runtime protocol check costs
        # ~9 us, per message a tenth of the pipeline's own work on a 1 KB message.
        self._upstream = upstream
        self._message_upstream = upstream if isinstance(upstream, MessageUpstream) else None

    async def handle(self, tx: Transaction, *, client: Client | None = None) -> Reply:
        """Always a reply: decisions raise `ReplyError`s; anything unexpected is 451 (R7), logged.

        `client` is the transaction's client when the caller has already resolved it (send-test's
        synthetic one); by default it is looked up in the current snapshot by `tx.client`.
        """
        facts = _Facts(size=len(tx.data))
        try:
            reply = await self._relay(tx, facts, client)
        except ReplyError as exc:
            reply = exc.reply
        except Exception:
            log.exception("tx=%s internal error", tx.id)
            reply = INTERNAL_ERROR
        except asyncio.CancelledError:
            # aiosmtpd cancels the handler when the client goes (R5): there is no reply to give, but
            # the line is still written, and upstream may already have the message (R6).
            self.metrics.message(facts.tenant, "abandoned")
            self._log_abandoned(tx, facts)
            raise
        return self._answered(tx, facts, reply)

    def refuse(self, tx: Transaction, reply: Reply, *, size: int) -> Reply:
        """A message the DATA reader refused (relay.mail.smtpdata.RefusedData: a look-alike, too big, a
        line too long) before anything was decided: counted and logged as any refused transaction, so
        that a smuggling attempt or a client over the size limit leaves its line. `tx.data` is empty."""
        return self._answered(tx, _Facts(size=size), reply)

    def _answered(self, tx: Transaction, facts: _Facts, reply: Reply) -> Reply:
        """Count the outcome and write the transaction's line; `reply` is what the client gets."""
        result = outcome(reply)
        self.metrics.message(facts.tenant, result)
        if log.isEnabledFor(logging.INFO):  # the line's timings, text and fields only when it is written
            timings, said = facts.timings(), str(reply)
            log.info(
                "tx=%s client=%s ip=%s tenant=%s rcpts=%d size=%d outcome=%s reply=%r %s",
                tx.id, tx.client, tx.peer.ip, facts.tenant, len(tx.recipients), facts.size,
                result, said, _ms(timings), extra=_line_fields(tx, facts, result, said, timings),
            )
        return reply

    def _log_abandoned(self, tx: Transaction, facts: _Facts) -> None:
        handed = {} if facts.handed is None else {"message_id": message_id(facts.handed),
                                                  "sha256": facts.handed.sha256()}
        words = "".join(f" {key.replace('_', '-')}={value}" for key, value in handed.items())  # handed_over's words
        timings = facts.timings()
        (log.info if facts.handed is None else log.warning)(
            "tx=%s client=%s ip=%s tenant=%s rcpts=%d size=%d outcome=abandoned reply='-'%s %s",
            tx.id, tx.client, tx.peer.ip, facts.tenant, len(tx.recipients), facts.size, words, _ms(timings),
            extra=_line_fields(tx, facts, "abandoned", "-", timings, **handed),
        )

    async def _relay(self, tx: Transaction, facts: _Facts, client: Client | None) -> Reply:
        snapshot = self._directory.current
        # NUL and look-alikes first (550), as relay.mail.lines rules
        data = normalise_data(tx.data, crlf_only_known=tx.crlf_only)
        if client is None:
            client = snapshot.clients.get(tx.client)
        elif client.name != tx.client:  # the log line names tx.client: it must be the deciding client
            raise ValueError(f"client {client.name!r} handed in for a transaction of {tx.client!r}")
        if client is None:  # removed from the store since the session began
            raise ReplyError(AUTH_REQUIRED)
        message = parse_message(data)  # the one split of the header block (550 5.6.0 when malformed)
        tenant = decide_tenant(client, tenant_header_values(message, self._settings.tenant_header),
                               snapshot.tenants)
        facts.tenant = tenant.id
        send_as = decide_identity(tenant, snapshot.tenants, platform_sender=self._settings.platform_sender)
        # The key follows the decided tenant only, never anything the message claims.
        try:
            signer = snapshot.signer(send_as.signer_tenant)
        except ReplyError:
            self.metrics.signing_failures.labels(send_as.signer_tenant).inc()
            raise
        rewritten = rewrite_message(
            message,
            identity=send_as.identity,
            tenant_header=self._settings.tenant_header,
            received=received_field(tx, hostname=self._settings.hostname),
            message_id_domain=send_as.sender.domain,
            now=tx.received_at,
        )
        envelope = Envelope(sender=send_as.sender.bounce_address, recipients=tx.recipients)
        # After the (cheap) tenant decision, before the costly stages: one tenant's flood waits its
        # turn here instead of filling the worker's signing threads and upstream connections.
        if self.gate.users(tenant.id) >= self.gate.limit:
            self.metrics.gate_waits.inc()  # every turn is taken: this one waits
        waiting = time.perf_counter()
        async with self.gate.turn(tenant.id, wait=gate_wait_budget(self._settings)):
            facts.seconds["gate"] = time.perf_counter() - waiting
            signed = await self._sign(tx, send_as.signer_tenant, signer, rewritten, facts)
            facts.size = signed.size
            return await self._deliver(tx, facts, envelope, signed)

    async def _sign(self, tx: Transaction, signer_tenant: str, signer: DkimSigner, message: Message,
                    facts: _Facts) -> Message:
        # A large message is hashed off the event loop, or it would stall every other session; a small
        # one is signed in place: one RSA signature (~0.5 ms) costs less than the hand-off to a thread.
        try:
            if message.size <= INLINE_SIGN_BYTES:
                signed, seconds = _timed(signer.sign_message, message)
            else:
                signed, seconds = await asyncio.get_running_loop().run_in_executor(
                    self._signing, _timed, signer.sign_message, message)
        except SigningKeyError as exc:
            self.metrics.signing_failures.labels(signer_tenant).inc()
            log.error("tx=%s dkim signing failed: tenant=%s selector=%s: %s",
                      tx.id, signer_tenant, signer.selector, exc.detail)
            raise
        facts.seconds["sign"] = seconds
        self.metrics.sign_seconds.observe(seconds)
        return signed

    async def _deliver(self, tx: Transaction, facts: _Facts, envelope: Envelope, signed: Message) -> Reply:
        facts.handed = signed
        start = time.perf_counter()
        try:
            reply = await self._hand_over(envelope, signed)
        except ReplyError as exc:
            self._delivered(facts, start, connected=not exc.reply.enhanced.startswith("4.4."))
            if exc.reply == UPSTREAM_AMBIGUOUS:
                # R6: upstream may or may not have the message; the client will retry.
                log.warning("tx=%s ambiguous upstream outcome after the final dot: %s", tx.id, handed_over(signed))
            raise
        self._delivered(facts, start, connected=True)
        return reply

    async def _hand_over(self, envelope: Envelope, signed: Message) -> Reply:
        upstream, message_upstream = self._upstream, self._message_upstream
        if message_upstream is not None:
            return await message_upstream.deliver_message(envelope, signed)
        # The one copy of the whole message, for an upstream that takes bytes (nothing holds it once
        # upstream is done with it).
        return await upstream.deliver(envelope, signed.tobytes())

    def _delivered(self, facts: _Facts, start: float, *, connected: bool) -> None:
        """Time an upstream exchange that ended with an answer or an error (not a cancelled one).

        4.4.x (unreachable, timed out, lost: relay.smtp.upstream) is a connection failure for /readyz."""
        facts.seconds["upstream"] = seconds = time.perf_counter() - start
        self.metrics.upstream_seconds.observe(seconds)
        self.metrics.upstream_answered(connected=connected)
