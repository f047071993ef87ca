"""Reservoir sampling (Vitter 1985, "Random sampling with a reservoir", Algorithm R): a buffer of at most
`size` items that is, after any number n of items seen, a uniform sample of them: each item is in it
with probability size / n. Items stream in one at a time, so earlier stages' rows need not be held.

    buffer = Reservoir(size=200, seed=0)
    for row in rows_of_stage_1: buffer.add(row)
    replay = buffer.items                    # a uniform sample of stage 1's rows
    for row in rows_of_stage_2: buffer.add(row)   # now uniform over stages 1 and 2 together
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Reservoir(Generic[T]):
    def __init__(self, size: int, seed: int | str = 0):
        if size < 1:
            raise ValueError(f"a reservoir holds at least one item (size {size})")
        self.size, self.seen, self.items = size, 0, []
        self.rng = random.Random(seed)

    def add(self, item: T) -> None:
        """Item n (counted from 1) enters with probability size / n, replacing a uniformly chosen one."""
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        j = self.rng.randrange(self.seen)  # uniform in [0, n)
        if j < self.size:
            self.items[j] = item

    def extend(self, items: Iterable[T]) -> Reservoir[T]:
        for item in items:
            self.add(item)
        return self
