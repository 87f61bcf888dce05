"""SMTP replies as values, and the one exception that carries a reply to the client.

Error tree (rendered in one place, the server's DATA/command hooks):

    ReplyError(reply)          any layer may raise it; `reply.code` 4xx = transient, 5xx = permanent
    └── UpstreamReplyError     upstream's own reply, class and enhanced code kept (R2)

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


OK_QUEUED = Reply(250, "2.0.0", "OK: accepted by upstream")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
TENANT_UNKNOWN = Reply(550, "5.7.1", "Tenant unknown or not allowed for this client")
TENANT_NOT_VERIFIED = Reply(550, "5.7.1", "Sender not verified and no platform sender configured")
SMUGGLING = Reply(550, "5.5.2", "Bare CR or LF around a dot: possible SMTP smuggling, message refused")
NUL_BYTES = Reply(550, "5.6.0", "NUL characters are not allowed in messages")
BAD_HEADER = Reply(550, "5.6.0", "Malformed header line")
TOO_BIG = Reply(552, "5.3.4", "Message too big")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
KEY_UNAVAILABLE = Reply(451, "4.3.5", "Signing key unavailable for this sender; try again later")
UPSTREAM_UNAVAILABLE = Reply(451, "4.4.1", "Upstream unavailable; try again later")
UPSTREAM_AMBIGUOUS = Reply(451, "4.4.2", "Upstream did not confirm delivery; try again later")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error; try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down")
