"""Garbage collection for a long-running relay: what start-up built is never scanned again.

CPython's cycle collector walks every tracked object in a full (generation 2) collection. A worker
starts with some 50,000 long-lived ones (modules, settings, aiosmtpd's tables, the directory and its
keys), and a full collection over them held the event loop for ~25 ms: at half the maximum rate,
a dozen messages in flight were each 10-20 ms late (bench/extras.py's latency figure, where this
showed as the p99). The first full collection comes soon after start, once enough objects have
piled up since the last one; later ones are rare, but each walks everything again.

`gc.freeze()` (Python 3.7+) moves every object that exists now to a permanent generation that no
collection visits. The relay calls `freeze_long_lived` twice, the way the `gc` documentation
recommends for a process that forks workers: in the parent right before forking (the workers'
collections then never write into the parent's pages, which stay shared copy-on-write), and in each
worker (or the one relay process) once its relay is serving, so that the directory it loaded is
frozen too. Frozen objects are still freed by reference counting when dropped, as a replaced
directory snapshot is (tests/test_heap.py checks that one holds no reference cycle).
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> int:
    """Collect what start-up left behind, then freeze every object that survived; how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
