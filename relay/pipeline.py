"""From one accepted transaction to one reply: tenant, identity, rewrite, sign, deliver, and its log line."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from relay.directory import Directory
from relay.fairness import TenantGate, gate_wait_budget
from relay.message import field_name, field_value, normalise_data, split_header_body
from relay.models import Client
from relay.policy import decide_identity, decide_tenant, tenant_header_values
from relay.replies import AUTH_REQUIRED, INTERNAL_ERROR, UPSTREAM_AMBIGUOUS, Reply, ReplyError
from relay.rewrite import rewrite_headers
from relay.settings import Settings
from relay.signer import DkimSigner, SigningKeyError
from relay.transaction import Transaction, received_field
from relay.upstream import Envelope, Upstream

log = logging.getLogger("relay.transaction")


@dataclass
class _Facts:
    """What the transaction's log line says beyond the reply; filled in as decisions are made."""

    tenant: str = "-"
    size: int = 0
    handed: bytes | None = None  # the signed bytes, once their delivery to upstream has started


def outcome(reply: Reply) -> str:
    return "delivered" if reply.code < 300 else "deferred" if reply.transient else "refused"


def message_id(message: bytes) -> str:
    """The Message-ID of a CRLF message (our rewrite guarantees one), for logs only."""
    try:
        fields, _ = split_header_body(message)
    except ReplyError:
        return "-"
    for field in fields:
        if field_name(field) == b"message-id":
            return field_value(field).decode("ascii", errors="replace").strip()
    return "-"


def handed_over(signed: bytes) -> str:
    """R6: enough to find a duplicate of a message upstream may have, and nothing of its content."""
    return f"message-id={message_id(signed)} sha256={hashlib.sha256(signed).hexdigest()}"


class Pipeline:
    def __init__(self, *, settings: Settings, directory: Directory, upstream: Upstream) -> None:
        self._settings = settings
        self._directory = directory
        self._upstream = upstream
        self.gate = TenantGate(settings.max_inflight_per_tenant)
        # Signing has threads of its own: nothing else queued on the loop's default executor (a slow
        # resolver call, a file write) can hold every tenant's signature behind it.
        self._signing = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="relay-sign")

    def close(self) -> None:
        """Stop the signing threads (a signature under way finishes; nothing new is taken)."""
        self._signing.shutdown(wait=False, cancel_futures=True)

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
            self._log_abandoned(tx, facts)
            raise
        log.info(
            "tx=%s client=%s ip=%s tenant=%s rcpts=%d size=%d outcome=%s reply=%r",
            tx.id, tx.client, tx.peer.ip, facts.tenant, len(tx.recipients), facts.size,
            outcome(reply), str(reply),
        )
        return reply

    def _log_abandoned(self, tx: Transaction, facts: _Facts) -> None:
        extra = "" if facts.handed is None else " " + handed_over(facts.handed)
        (log.info if facts.handed is None else log.warning)(
            "tx=%s client=%s ip=%s tenant=%s rcpts=%d size=%d outcome=abandoned reply='-'%s",
            tx.id, tx.client, tx.peer.ip, facts.tenant, len(tx.recipients), facts.size, extra,
        )

    async def _relay(self, tx: Transaction, facts: _Facts, client: Client | None) -> Reply:
        snapshot = self._directory.current
        data = normalise_data(tx.data)
        if client is None:
            client = snapshot.clients.get(tx.client)
        elif client.name != tx.client:  # the log line names tx.client: it must be the deciding client
            raise ValueError(f"client {client.name!r} handed in for a transaction of {tx.client!r}")
        if client is None:  # removed from the store since the session began
            raise ReplyError(AUTH_REQUIRED)
        tenant = decide_tenant(client, tenant_header_values(data, self._settings.tenant_header), snapshot.tenants)
        facts.tenant = tenant.id
        send_as = decide_identity(tenant, snapshot.tenants, platform_sender=self._settings.platform_sender)
        # The key follows the decided tenant only, never anything the message claims.
        signer = snapshot.signer(send_as.signer_tenant)
        message = rewrite_headers(
            data,
            identity=send_as.identity,
            tenant_header=self._settings.tenant_header,
            received=received_field(tx, hostname=self._settings.hostname),
            message_id_domain=send_as.sender.domain,
            now=tx.received_at,
        )
        envelope = Envelope(sender=send_as.sender.bounce_address, recipients=tx.recipients)
        # After the (cheap) tenant decision, before the costly stages: one tenant's flood waits its
        # turn here instead of filling the worker's signing threads and upstream connections.
        async with self.gate.turn(tenant.id, wait=gate_wait_budget(self._settings)):
            signed = await self._sign(tx, send_as.signer_tenant, signer, message)
            facts.size = len(signed)
            return await self._deliver(tx, facts, envelope, signed)

    async def _sign(self, tx: Transaction, signer_tenant: str, signer: DkimSigner, message: bytes) -> bytes:
        # Off the event loop: hashing a large message would stall every other session.
        try:
            return await asyncio.get_running_loop().run_in_executor(self._signing, signer.sign, message)
        except SigningKeyError as exc:
            log.error("tx=%s dkim signing failed: tenant=%s selector=%s: %s",
                      tx.id, signer_tenant, signer.selector, exc.detail)
            raise

    async def _deliver(self, tx: Transaction, facts: _Facts, envelope: Envelope, signed: bytes) -> Reply:
        facts.handed = signed
        try:
            return await self._upstream.deliver(envelope, signed)
        except ReplyError as exc:
            if exc.reply == UPSTREAM_AMBIGUOUS:
                # R6: upstream may or may not have the message; the client will retry.
                log.warning("tx=%s ambiguous upstream outcome after the final dot: %s", tx.id, handed_over(signed))
            raise
