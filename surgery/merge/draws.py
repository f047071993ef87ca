"""Reproducible random numbers per tensor: the same bytes whatever the blocking, order or threads.

The flattened tensor is cut into fixed chunks of CHUNK elements; chunk c of input i of tensor `name`
gets its own generator seeded from blake2b(seed, name, i, c). A block of rows draws the chunks it
covers and keeps its span, so DARE's and DELLA's masks never depend on the global random state.

DELLA compares float32 uniforms (torch's generator) with per-entry probabilities. DARE only needs a
Bernoulli mask with one probability, which it takes from integer draws instead: 16-bit integers cut
from PCG64's 64-bit outputs (numpy), compared with round(density * 2**16). That is about 5x cheaper
per entry than a float32 uniform and a comparison, and random masks are most of DARE's time.

A tensor of several blocks is read twice by DARE with its L1 rescale: once for the masked norms, once
for the merge. The first read's masks wait for the second in the engine's `Kept` store, a bit per entry,
so each mask is drawn once: the draws cost about 15 times more than packing and unpacking them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from surgery.io.format import row_numel
from surgery.merge.kept import Kept, fetch

CHUNK = 1 << 16
FINE_BELOW = 1 / 128  # densities under this draw 32-bit integers, so the rounding stays under 0.1%


def chunk_seed(seed: int, name: str, model: int, chunk: int) -> int:
    key = f"{seed}\x00{name}\x00{model}\x00{chunk}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


class Draws:
    def __init__(self, seed: int, name: str, shape: tuple[int, ...], models: int, kept: Kept | None = None,
                 final: bool = True):
        """`kept`: where masks wait between two reads of a block; `final`: this is the block's last read
        (the merge pass's), which takes its masks from there; an earlier read leaves them for it."""
        self.seed, self.name, self.shape, self.models = seed, name, shape, models
        self.kept, self.final = kept, final
        self.row = row_numel(shape)
        self._bits: np.random.PCG64 | None = None  # reseeded per chunk; a Draws serves one thread

    def uniform(self, model: int, rows: tuple[int, int]) -> torch.Tensor:
        """Flat U[0, 1) float32 numbers for elements [r0 * row, r1 * row) of input `model`."""
        out = torch.empty(self._count(rows))
        for c, (lo, hi), (a, b) in self._pieces(rows):
            g = torch.Generator().manual_seed(chunk_seed(self.seed, self.name, model, c))
            if lo == 0 and hi == CHUNK:
                torch.rand(CHUNK, generator=g, out=out[a:b])  # a whole chunk: draw in place
            else:
                out[a:b].copy_(torch.rand(CHUNK, generator=g)[lo:hi])
        return out

    def keep(self, model: int, rows: tuple[int, int], density: float) -> torch.Tensor:
        """Flat uint8 0/1 mask for elements [r0 * row, r1 * row) of input `model`: 1 with probability
        `density`, rounded to a multiple of 2**-16 (2**-32 below FINE_BELOW)."""
        n = self._count(rows)
        mask = fetch(self.kept, (self.seed, self.name, model, rows, density), self.final,
                     lambda: self._keep(model, rows, density).view(np.uint8),
                     pack=lambda m: np.packbits(m, bitorder="little"),  # kept a bit per entry
                     unpack=lambda bits: np.unpackbits(bits, count=n, bitorder="little"))  # (n,) uint8 0/1
        return torch.from_numpy(mask)  # uint8: a product with it costs less than a float32 copy of it

    def _keep(self, model: int, rows: tuple[int, int], density: float) -> np.ndarray:
        bits = 16 if density >= FINE_BELOW else 32
        threshold = round(density * 2**bits)
        out = np.empty(self._count(rows), np.bool_)
        for c, (lo, hi), (a, b) in self._pieces(rows):
            raw = self._pcg64(model, c).random_raw(CHUNK * bits // 64)
            draws = raw.astype("<u8", copy=False).view(f"<u{bits // 8}")[lo:hi]  # (hi - lo,) little-endian
            np.less(draws, threshold, out=out[a:b])
        return out

    def _count(self, rows: tuple[int, int]) -> int:
        return max(rows[1] - rows[0], 0) * self.row

    def _pieces(self, rows: tuple[int, int]):
        """(chunk c, its part [lo, hi), where that part lands in the span's flat output [a, b)) for each
        chunk the elements [r0 * row, r1 * row) touch; none for an empty span."""
        start, stop = rows[0] * self.row, rows[1] * self.row
        for c in range(start // CHUNK, (stop - 1) // CHUNK + 1) if stop > start else ():
            lo, hi = max(start - c * CHUNK, 0), min(stop - c * CHUNK, CHUNK)
            yield c, (lo, hi), (c * CHUNK + lo - start, c * CHUNK + hi - start)

    def _pcg64(self, model: int, chunk: int) -> np.random.PCG64:
        """The bit generator of one chunk, its 128-bit state and stream set from blake2b(seed, name, i, c)
        directly (numpy's seeding through SeedSequence costs more than drawing a chunk)."""
        key = f"{self.seed}\x00{self.name}\x00{model}\x00{chunk}\x00pcg64".encode()
        digest = hashlib.blake2b(key, digest_size=32).digest()
        if self._bits is None:
            self._bits = np.random.PCG64(0)
        self._bits.state = {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                            "state": {"state": int.from_bytes(digest[:16], "little"),
                                      "inc": int.from_bytes(digest[16:], "little") | 1}}
        return self._bits
