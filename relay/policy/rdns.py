"""PTR names for the Received field: one lookup per address at a time, on threads of its own, cached."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from relay.policy.senders import plain_ip

RDNS_TIMEOUT = 0.5  # the longest a message waits for its client's PTR name
RDNS_THREADS = 2
CACHE_SECONDS = 300.0
CACHE_ENTRIES = 1024


def ptr_name(ip: str) -> str | None:
    """The system resolver's PTR name for `ip`, or None (blocking: run it on a thread)."""
    try:
        name, _ = socket.getnameinfo((ip, 0), socket.NI_NAMEREQD)
    except (OSError, UnicodeError):
        return None
    return name


class ReverseDns:
    """Single-flight per address: concurrent lookups of one IP share one resolver call.

    The resolver runs on a small executor of its own, never the loop's default one (which signing and
    other work share): a resolver that drops a burst of PTR queries then holds these threads only.
    A waiter gives up after `timeout`; the call itself may linger and still fills the cache."""

    def __init__(self, *, resolve: Callable[[str], str | None] = ptr_name, timeout: float = RDNS_TIMEOUT,
                 threads: int = RDNS_THREADS) -> None:
        self._resolve = resolve
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="relay-rdns")
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._inflight: dict[str, asyncio.Future[str | None]] = {}

    async def lookup(self, ip: str) -> str | None:
        ip = plain_ip(ip)  # ::ffff:a.b.c.d is a.b.c.d: one cache entry, and its in-addr.arpa PTR
        cached = self._cache.get(ip)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        future = self._inflight.get(ip)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._resolve, ip)
            self._inflight[ip] = future
            future.add_done_callback(partial(self._done, ip))
        try:
            # shield: a waiter that gives up must not cancel the lookup the others share.
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            return None

    def _done(self, ip: str, future: asyncio.Future[str | None]) -> None:
        self._inflight.pop(ip, None)
        if future.cancelled() or future.exception() is not None:  # exception() also marks it retrieved
            return
        if len(self._cache) >= CACHE_ENTRIES:  # bounded: a crude reset is enough for a 5-minute cache
            self._cache.clear()
        self._cache[ip] = (future.result(), time.monotonic() + CACHE_SECONDS)

    def close(self) -> None:
        """Stop taking lookups; a call still in the resolver is left to finish on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
