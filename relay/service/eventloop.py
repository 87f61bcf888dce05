"""The relay processes' event loop (RELAY_EVENT_LOOP): uvloop by default, Python's own on request.

uvloop runs asyncio's API on libuv: the same protocols, streams and timers, with the socket I/O and
the loop itself in C. Every relay process (each of RELAY_WORKERS, or the one process) runs on it; the
metrics server and the DNS re-checker keep their own threads and loops as before. Side by side on
this project's bench (2 cores, RELAY_WORKERS=2): about 5% more messages per second at 1 KB, 6% at
50 KB, and a lower p50 and p99 latency (README, Performance). `asyncio` is the fallback should a
platform lack uvloop's wheels or a future uvloop misbehave; both are tested (tests/test_event_loop.py).

uvloop's transports are not subclasses of asyncio's transport classes: relay.smtp.transports says
what that changed. uvloop's `loop.time()` advances once per loop iteration, in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from relay.core.settings import EventLoopName

_Result = TypeVar("_Result")


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop of kind `name`."""
    return uvloop.new_event_loop if name == "uvloop" else asyncio.new_event_loop


def run(main: Coroutine[Any, Any, _Result], name: EventLoopName) -> _Result:
    """`asyncio.run(main)` on a loop of kind `name` (asyncio.Runner's loop_factory, Python 3.11+)."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
