"""Session limits of one relay process: concurrent connections in all and per client IP address.

Each relay process counts only its own sessions: with RELAY_WORKERS=N the relay as a whole admits up
to N times RELAY_MAX_CONNECTIONS (and N times the per-IP limit, depending on which process the kernel
hands a connection to). Idle sessions are bounded separately, by RELAY_SESSION_TIMEOUT.
"""

from __future__ import annotations

from collections import Counter



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

    def count(self, ip: str) -> int:
        return self._by_ip[ip]

    def acquire(self, ip: str) -> bool:
        """Count a new session from `ip` if it fits; False (nothing counted) if it does not."""
        if not admits(total=self._total, from_ip=self._by_ip[ip],
                      max_total=self._max_total, max_per_ip=self._max_per_ip):
            return False
        self._by_ip[ip] += 1
        self._total += 1
        return True

    def release(self, ip: str) -> None:
        """Forget one session from `ip`; the caller releases each acquired session exactly once."""
        held = self._by_ip[ip]
        if held == 0:
            return  # never counted: a miscount here would let the limit drift
        if held == 1:
            del self._by_ip[ip]  # a Counter keeps zero entries; drop them so the map stays small
        else:
            self._by_ip[ip] -= 1
        self._total -= 1
