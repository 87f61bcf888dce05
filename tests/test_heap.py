"""relay.service.heap: what exists when a relay process starts serving is frozen, out of every collection."""

from __future__ import annotations

import gc

from relay.service.heap import freeze_long_lived


def test_freeze_long_lived_takes_what_exists_out_of_every_generation() -> None:
    loaded = {"directory": ["a", "snapshot"]}  # stands for what start-up built
    try:
        frozen = freeze_long_lived()
        assert frozen == gc.get_freeze_count() > 1000  # the modules, at least
        assert not any(item is loaded for item in gc.get_objects())
        made_later = [["a session"]]
        assert any(item is made_later for item in gc.get_objects()), "what comes later is collected as usual"
    finally:
        gc.unfreeze()
    assert any(item is loaded for item in gc.get_objects())
