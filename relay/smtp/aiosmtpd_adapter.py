"""The one place the relay touches aiosmtpd's private names, each behind a public name of our own.

aiosmtpd offers no public hook for what the relay needs here: its own DATA reader (the stream reader),
a 421 before the session timeout closes (RFC 5321 4.5.3.2), paths handed on raw (its `_getaddr`),
AUTH over plaintext on loopback only (decided per connection), and a fresh session timer once DATA
is in. These names are checked against the installed aiosmtpd by tests/test_aiosmtpd_adapter.py, and
pyproject.toml pins the range that test passed on (`aiosmtpd>=1.4.6,<1.5`): a new aiosmtpd is taken
only after that test runs green on it.

`PRIVATE_METHODS` and `PRIVATE_ATTRIBUTES` list everything used below, for that test.

One speed-up rides on aiosmtpd's construction: `SMTP.__init__` lists the instance's `smtp_*` and
`auth_*` names with `dir(self)` and `inspect.getmembers(self)` for every connection, about a sixth of a
worker's CPU per 1 KB message under load (py-spy, bench/README.md). While it builds those tables, the
instance's `dir()` answers from a list made once per class; everywhere else `dir()` is untouched. It
lists the handler's `handle_*` and `auth_*` names the same way each time: `HandlerNames` makes that
list once per handler class. tests/test_aiosmtpd_tables.py checks that the tables come out exactly as
a stock aiosmtpd builds them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope

from relay.mail.smtpdata import RefusedData

# aiosmtpd.smtp.SMTP methods used or overridden here, with the parameters they have in 1.4.6.
PRIVATE_METHODS: dict[str, tuple[str, ...]] = {
    "_timeout_cb": ("self",),  # called by the session timer; we say 421 before closing
    "_reset_timeout": ("self", "duration"),  # (re)arms the session timer
    "_getaddr": ("self", "arg"),  # splits `<path> params` for MAIL and RCPT
    "_create_envelope": ("self",),  # a fresh envelope, as after each transaction: ours, RelayEnvelope
    "_call_handler_hook": ("self", "command", "args"),  # calls handle_<COMMAND> with session and envelope
}
# Instance attributes read or set here, all set by SMTP.__init__ or on the first connection_made.
PRIVATE_ATTRIBUTES = ("_original_transport", "_reader", "_auth_require_tls", "_timeout_handle")


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope, and what the relay's DATA reader found about its content."""

    def __init__(self) -> None:
        super().__init__()
        self.content_crlf_only = False  # relay.mail.smtpdata.DataContent.crlf_only, once DATA is read
        self.refused: RefusedData | None = None  # the reader refused the content (then it is empty)


class AdaptedSMTP(SMTP):
    """aiosmtpd's SMTP protocol with its private hooks and state reached through public names."""

    _building_tables = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._building_tables = True  # SMTP.__init__ lists our commands: from the class's list (below)
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._building_tables = False

    def __dir__(self) -> Iterable[str]:
        if not self._building_tables:
            return super().__dir__()
        return _names_once(type(self), "_command_names", ("smtp_", "auth_"))

    # ---------------------------------------------------------------- what aiosmtpd calls: routed

    def _timeout_cb(self) -> None:
        self.on_session_timeout()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return self.split_path(arg)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def on_session_timeout(self) -> None:
        """The session timer ran out: aiosmtpd closes the connection (override to say why first)."""
        SMTP._timeout_cb(self)  # type: ignore[no-untyped-call]  # untyped in aiosmtpd 1.4

    def split_path(self, arg: str) -> tuple[str | None, str | None]:
        """`(path, parameters)` of a MAIL FROM/RCPT TO argument, or `(None, None)` (aiosmtpd's parser)."""
        result: tuple[str | None, str | None] = SMTP._getaddr(self, arg)
        return result

    # ---------------------------------------------------------------- what we call: wrapped

    @property
    def reader(self) -> asyncio.StreamReader:
        """The client's byte stream (commands and DATA alike)."""
        stream: asyncio.StreamReader = self._reader
        return stream

    @property
    def plain_transport(self) -> asyncio.BaseTransport | None:
        """The TCP transport under TLS once STARTTLS began, else None (then `transport` is the TCP one)."""
        transport: asyncio.BaseTransport | None = self._original_transport
        return transport

    def require_tls_for_auth(self, required: bool) -> None:
        """Whether AUTH is refused (538) before STARTTLS on this connection."""
        self._auth_require_tls = required

    def reset_session_timer(self) -> None:
        """Start the session timeout afresh, as aiosmtpd does when a command arrives."""
        self._reset_timeout()

    def new_envelope(self) -> RelayEnvelope:
        """An empty envelope: what aiosmtpd sets after each transaction (and at EHLO and RSET)."""
        return self._create_envelope()

    async def call_hook(self, command: str, *args: Any) -> Any:
        """The handler's `handle_<command>(server, session, envelope, *args)`, or aiosmtpd's MISSING."""
        return await self._call_handler_hook(command, *args)


class HandlerNames:
    """For an aiosmtpd handler: `dir()` lists only the `handle_*` and `auth_*` names aiosmtpd looks for,
    made once per class (aiosmtpd lists the handler for every connection; nothing else asks)."""

    def __dir__(self) -> Iterable[str]:
        return _names_once(type(self), "_hook_names", ("handle_", "auth_"))


def _names_once(cls: type, cache: str, prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """The names of `cls` starting with `prefixes`, listed once and kept on that very class (in its own
    `__dict__`: a subclass may add names of its own and gets its own list)."""
    names: tuple[str, ...] | None = cls.__dict__.get(cache)
    if names is None:
        names = tuple(name for name in dir(cls) if name.startswith(prefixes))
        type.__setattr__(cls, cache, names)
    return names
