"""What a block's read computed, kept for the next read of the same rows by a later pass.

A tensor of several blocks is read once per statistics pass and once more for the merge, and some of
what each read derives from the block depends on the block alone: DARE's random masks, SCE's variance
across the models. The engine keeps such values between the reads of a tensor, within a budget of bytes
(a few blocks' worth, so memory stays bounded by blocks): a value that would pass it is computed again
instead. The merge pass's read takes what it finds; earlier reads leave it for the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Kept:
    """Values (anything with `nbytes`: numpy arrays, tensors) by key, at most `budget` bytes at a time."""

    def __init__(self, budget: int):
        self.budget, self.used, self.values, self.lock = budget, 0, {}, threading.Lock()

    def put(self, key: tuple, value) -> None:
        with self.lock:
            if key not in self.values and self.used + value.nbytes <= self.budget:
                self.values[key], self.used = value, self.used + value.nbytes

    def get(self, key: tuple):
        """The value, left for a later read; None if it was not kept."""
        with self.lock:
            return self.values.get(key)

    def take(self, key: tuple):
        """The value, removed; None if it was not kept."""
        with self.lock:
            value = self.values.pop(key, None)
            self.used -= 0 if value is None else value.nbytes
            return value


def fetch(kept: Kept | None, key: tuple, final: bool, make: Callable[[], object],
          pack: Callable = lambda value: value, unpack: Callable = lambda stored: stored):
    """The value under `key` for a read of a block: what an earlier read kept (the merge pass's read,
    `final`, takes it; a statistics read leaves it for the next), else `make()`, kept for the next read
    where this one is not final. `pack` and `unpack` convert to and from the stored form."""
    if kept is None:
        return make()
    stored = kept.take(key) if final else kept.get(key)
    if stored is not None:
        return unpack(stored)
    value = make()
    if not final:
        kept.put(key, pack(value))
    return value
