"""The sessions of one relay process: how many may be open (in all and per client IP address), and how
they end when the relay stops.

Each relay process counts only its own sessions: with RELAY_WORKERS=N the relay as a whole admits up
to N times RELAY_MAX_CONNECTIONS (and N times the per-IP limit, depending on which process the kernel
hands a connection to). Idle sessions are bounded separately, by RELAY_SESSION_TIMEOUT.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Protocol

from relay.core.replies import Reply
from relay.policy.senders import plain_ip


def admits(*, total: int, from_ip: int, max_total: int, max_per_ip: int) -> bool:
    """Whether one more session fits, given the sessions open in all and from its IP address."""
    return total < max_total and from_ip < max_per_ip


class ConnectionCounter:
    """Open sessions of this process by client IP address; `acquire` admits or refuses a new one."""

    def __init__(self, *, max_total: int, max_per_ip: int) -> None:
        self._max_total = max_total
        self._max_per_ip = max_per_ip
        self._by_ip: Counter[str] = Counter()
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    def set_limits(self, *, max_total: int, max_per_ip: int) -> None:
        """New limits (SIGHUP): they decide the next admission; sessions already open stay open."""
        self._max_total = max_total
        self._max_per_ip = max_per_ip

    def count(self, ip: str) -> int:
        return self._by_ip[plain_ip(ip)]

    def acquire(self, ip: str) -> bool:
        """Count a new session from `ip` if it fits; False (nothing counted) if it does not."""
        ip = plain_ip(ip)  # one client, one count, whether it came in over IPv4 or IPv4-mapped IPv6
        if not admits(total=self._total, from_ip=self._by_ip[ip],
                      max_total=self._max_total, max_per_ip=self._max_per_ip):
            return False
        self._by_ip[ip] += 1
        self._total += 1
        return True

    def release(self, ip: str) -> None:
        """Forget one session from `ip`; the caller releases each acquired session exactly once."""
        ip = plain_ip(ip)
        held = self._by_ip[ip]
        if held == 0:
            return  # never counted: a miscount here would let the limit drift
        if held == 1:
            del self._by_ip[ip]  # a Counter keeps zero entries; drop them so the map stays small
        else:
            self._by_ip[ip] -= 1
        self._total -= 1


def shutting_down(hostname: str) -> Reply:
    """The reply that ends every session when the relay stops.

    RFC 5321 3.8: a server shut down from outside tries to send 421 before closing; the client reads it
    at its next command and retries later. RFC 3463 4.3.2: "system not accepting network messages".
    """
    return Reply(421, "4.3.2", f"{hostname} shutting down")


class Ending(Protocol):
    """A session as a stop sees it (relay.smtp.server.RelaySMTP)."""

    def end(self, reply: Reply) -> None: ...


class Drain:
    """This process's open sessions as a stop sees them: which are in a transaction, and when none is left.

    A session is *busy* from DATA's 354 to its reply: the client's message is being read, signed or
    delivered upstream. Any other session is between commands, and a stop can end it at once.
    """

    def __init__(self) -> None:
        self.reply: Reply | None = None  # set by `begin`: sessions opened or ending from then on get it
        self._open: set[Ending] = set()
        self._busy: set[Ending] = set()
        self._settled = asyncio.Event()
        self._settled.set()

    @property
    def open(self) -> int:
        """Sessions open now."""
        return len(self._open)

    @property
    def busy(self) -> int:
        """Sessions in a transaction now."""
        return len(self._busy)

    def opened(self, session: Ending) -> None:
        """Count a session admitted by the connection limits."""
        self._open.add(session)
        self._settled.clear()

    def closed(self, session: Ending) -> None:
        """Forget a session whose connection is gone (may be called twice)."""
        self._open.discard(session)
        self._update()

    def set_busy(self, session: Ending, busy: bool) -> None:
        """Mark `session` as in (or out of) a transaction."""
        if busy:
            self._busy.add(session)
            self._settled.clear()
        else:
            self._busy.discard(session)
            self._update()

    def _update(self) -> None:
        """Wake `wait` once no session is open and no transaction is unwinding."""
        if not self._open and not self._busy:
            self._settled.set()

    def begin(self, reply: Reply) -> None:
        """From now on every session ends with `reply`: idle ones at once, busy ones after their transaction."""
        self.reply = reply
        for session in list(self._open - self._busy):
            session.end(reply)

    def cut(self) -> int:
        """End the sessions still in a transaction (the grace is over); returns how many."""
        assert self.reply is not None, "cut() follows begin()"
        busy = list(self._busy)
        for session in busy:
            session.end(self.reply)
        return len(busy)

    async def wait(self, timeout: float) -> bool:
        """Whether every session ended (and every transaction unwound) within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._settled.wait()
        except TimeoutError:
            return False
        return True
