"""Failed SMTP AUTH per client address over time: a few failures are free, then each further attempt waits
out a back-off that doubles up to a cap.

aiosmtpd bounds AUTH per session (relay.smtp.server CALL_LIMITS), but a new session is free: without this, 30
wrong passwords from one address take under 3 s, each costing a scrypt. Here, after MAX_FAILURES failures
within WINDOW from one address, AUTH from it is refused without checking anything (no hashing) for
FIRST_BACKOFF seconds, and for twice as long after every further failure, up to MAX_BACKOFF, until the
address has been quiet for WINDOW after its last hold. The refusal is `454 4.7.0` (RFC 4954 6,
temporary authentication failure), and `421 4.7.0` with the connection closed (RFC 5321 3.8) once the
address has had REFUSALS_BEFORE_CLOSE of those in one back-off and keeps going.

Only failures count: a success neither counts nor clears them, so the test suite and the benchmark, which
log in from 127.0.0.1 all the time, are never slowed, and one good login cannot launder guesses. Loopback
is not exempt (tests and many services run there). An IPv6 client counts by its /64 (RFC 4291 2.5.4: one
subnet, usually one host or site), so rotating addresses inside it does not start afresh. Counts are kept
per relay process (each of RELAY_WORKERS its own), for at most MAX_ADDRESSES addresses.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

MAX_FAILURES = 5  # failed AUTHs from one address within WINDOW before it is held back
WINDOW = 60.0  # seconds a failure counts
FIRST_BACKOFF = 1.0  # seconds the first hold lasts; doubled at every failure after it
MAX_BACKOFF = 300.0  # the cap
REFUSALS_BEFORE_CLOSE = 3  # 454s per hold; after them, each attempt gets 421 and its connection closed
MAX_ADDRESSES = 10_000  # addresses remembered; the least recently failed is forgotten first


class Verdict(Enum):
    ALLOW = "allow"  # check the credentials
    REFUSE = "refuse"  # 454 4.7.0, nothing checked
    CLOSE = "close"  # 421 4.7.0 and close: the client keeps going while held back


def address_key(ip: str) -> str:
    """What failures are counted by: the IPv4 address, or the IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 4:
        return ip
    return str(ipaddress.IPv6Network((address, 64), strict=False))


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_FAILURES))  # the latest ones
    level: int = 0  # holds so far; the next lasts FIRST_BACKOFF * 2**level
    until: float = float("-inf")  # end of the current hold
    refused: int = 0  # attempts refused during the current hold


class AuthThrottle:
    """Per-address failure counts and holds; `clock` is monotonic seconds (tests pass their own)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def check(self, ip: str) -> Verdict:
        """May an AUTH from `ip` be checked now? A refusal is counted towards CLOSE."""
        record = self._records.get(address_key(ip))
        if record is None or self._clock() >= record.until:
            return Verdict.ALLOW
        record.refused += 1
        return Verdict.REFUSE if record.refused <= REFUSALS_BEFORE_CLOSE else Verdict.CLOSE

    def failed(self, ip: str) -> float:
        """Count a failed AUTH from `ip`; the hold it starts in seconds, or 0.0 while it is still free."""
        now = self._clock()
        record = self._record(address_key(ip))
        while record.failures and record.failures[0] <= now - WINDOW:
            record.failures.popleft()
        if now >= record.until + WINDOW:
            record.level = 0  # a whole quiet window since the last hold ended: start over
        record.failures.append(now)
        if record.level == 0 and len(record.failures) < MAX_FAILURES:
            return 0.0  # once held, every further failure holds again, twice as long
        hold = min(FIRST_BACKOFF * 2.0**record.level, MAX_BACKOFF)
        record.level = min(record.level + 1, 32)  # 2**32 s is past any cap: no overflow, no growth
        record.until, record.refused = now + hold, 0
        return hold

    def _record(self, key: str) -> _Record:
        """The key's record, now the most recently failed; the oldest is forgotten past MAX_ADDRESSES."""
        record = self._records.pop(key, None) or _Record()
        self._records[key] = record
        if len(self._records) > MAX_ADDRESSES:
            self._records.popitem(last=False)
        return record
