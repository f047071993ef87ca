"""Reproducible random numbers per tensor: the same bytes whatever the blocking, order or threads.

The flattened tensor is cut into fixed chunks of CHUNK elements; chunk c of input i of tensor `name`
gets its own generator seeded from blake2b(seed, name, i, c). A block of rows draws the chunks it
covers and keeps its span, so DARE's and DELLA's masks never depend on the global random state.
"""

from __future__ import annotations

import hashlib

import torch

from surgery.io.format import row_numel

CHUNK = 1 << 16


def chunk_seed(seed: int, name: str, model: int, chunk: int) -> int:
    key = f"{seed}\x00{name}\x00{model}\x00{chunk}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


class Draws:
    def __init__(self, seed: int, name: str, shape: tuple[int, ...], models: int):
        self.seed, self.name, self.shape, self.models = seed, name, shape, models
        self.row = row_numel(shape)

    def uniform(self, model: int, rows: tuple[int, int]) -> torch.Tensor:
        """Flat U[0, 1) float32 numbers for elements [r0 * row, r1 * row) of input `model`."""
        start, stop = rows[0] * self.row, rows[1] * self.row
        if stop <= start:  # an empty tensor (or span) draws nothing
            return torch.empty(0)
        out = torch.empty(stop - start)
        for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
            g = torch.Generator().manual_seed(chunk_seed(self.seed, self.name, model, c))
            lo, hi = max(start - c * CHUNK, 0), min(stop - c * CHUNK, CHUNK)
            dest = out[c * CHUNK + lo - start: c * CHUNK + hi - start]
            if lo == 0 and hi == CHUNK:
                torch.rand(CHUNK, generator=g, out=dest)  # a whole chunk: draw in place
            else:
                dest.copy_(torch.rand(CHUNK, generator=g)[lo:hi])
        return out
