"""SMTP replies as values, and the one exception that carries a reply to the client.

Error tree (turned into the client's reply by the server's command hooks, and for a message by
relay.smtp.pipeline, which also writes its log line):

    ReplyError(reply)          any layer may raise it; `reply.code` 4xx = transient, 5xx = permanent
    ├── UpstreamReplyError     upstream's own reply, class and enhanced code kept (R2)
    ├── RefusedData            the DATA reader refused the message (relay.mail.smtpdata), with its size
    └── SigningKeyError        the tenant's key cannot sign, 451 4.3.5 (relay.mail.signer)

Enhanced status codes: RFC 3463; every reply carries one (RFC 2034).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        # aiosmtpd sends the returned string as the reply line(s); CR/LF never come from our text.
        text = " ".join(self.text.split())
        return f"{self.code} {self.enhanced} {text}"


class ReplyError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class UpstreamReplyError(ReplyError):
    """Upstream refused; `reply` is what the client gets (upstream's class and enhanced code)."""


# Every reply the relay itself gives lives here, grouped by where it is decided.

# Sessions and limits (relay.smtp.server, relay.smtp.limits)
# RFC 5321 3.8: a server that cannot serve a connection now answers 421 instead of the greeting and
# closes; 4.7.0 (RFC 3463, security or policy status) as Postfix's anvil limits say it.
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
# RFC 5321 4.5.3.2: the server may end a session that stays idle; 421 tells the client to retry later.
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
# RFC 4954 6: 454 4.7.0 "Temporary authentication failure"; relay.policy.auththrottle holds back an address after
# repeated failures, and the AUTH threads have a bounded queue. A client that keeps going is told 421 and
# the connection is closed (RFC 5321 3.8).
AUTH_THROTTLED = Reply(454, "4.7.0", "Temporary authentication failure: too many failed attempts, try later")
AUTH_THROTTLED_CLOSE = Reply(421, "4.7.0", "Too many failed authentication attempts, closing connection")
AUTH_BUSY = Reply(454, "4.7.0", "Temporary authentication failure: too many checks under way, try again")
# A name not in the relay's snapshot while the store cannot be read: perhaps a client added meanwhile.
AUTH_STORE_DOWN = Reply(454, "4.7.0", "Temporary authentication failure: client list unavailable, try again")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")

# Addresses and the tenant (relay.policy.senders)
BAD_ADDRESS = Reply(501, "5.1.3", "Bad address syntax: use <local@domain>")
SOURCE_ROUTE = Reply(501, "5.1.3", "Source routes are not accepted (RFC 5321 3.6.1): use <local@domain>")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
TENANT_MISSING = Reply(550, "5.7.1", "This client sends for several tenants: name one in the tenant header")
TENANT_UNKNOWN = Reply(550, "5.7.1", "Unknown tenant named in the tenant header")
TENANT_OUT_OF_SCOPE = Reply(550, "5.7.1", "Tenant not allowed for this client")
TENANT_AMBIGUOUS = Reply(550, "5.7.1", "The tenant header appears more than once with different values")
TENANT_NOT_VERIFIED = Reply(550, "5.7.1", "Sender not verified and no platform sender configured")
# RFC 3463 4.7.0: a transient policy condition; RFC 5321 4.2.1: the client retries later (relay.smtp.fairness).
TENANT_BUSY = Reply(451, "4.7.0", "Too many messages in flight for this tenant; try again later")

# The message itself (relay.mail.smtpdata, relay.mail.message, relay.mail.rewrite)
SMUGGLING = Reply(550, "5.5.2", "Bare CR or LF around a dot: possible SMTP smuggling, message refused")
NUL_BYTES = Reply(550, "5.6.0", "NUL characters are not allowed in messages")
BAD_HEADER = Reply(550, "5.6.0", "Malformed header line")
LINE_TOO_LONG = Reply(550, "5.6.0", "Line too long: at most 998 characters per line (RFC 5322 2.1.1)")
TOO_BIG = Reply(552, "5.3.4", "Message too big")

# Signing and delivery (relay.mail.signer, relay.smtp.upstream, relay.smtp.pipeline)
KEY_UNAVAILABLE = Reply(451, "4.3.5", "Signing key unavailable for this sender; try again later")
UPSTREAM_UNAVAILABLE = Reply(451, "4.4.1", "Upstream unavailable; try again later")
UPSTREAM_AMBIGUOUS = Reply(451, "4.4.2", "Upstream did not confirm delivery; try again later")
TLS_REQUIRED_MISSING = Reply(451, "4.7.5", "Upstream does not offer STARTTLS; try again later")
# RFC 6152 3 / RFC 3463 5.6.3: 8-bit content, and upstream offers no 8BITMIME; we do not convert.
CONVERSION_NOT_SUPPORTED = Reply(
    554, "5.6.3", "Conversion required but not supported: 8-bit content and upstream lacks 8BITMIME"
)
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error; try again later")
