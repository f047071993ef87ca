"""A model folder seen through a vocabulary map: its vocabulary tensors (embeddings, output head) have
the output vocabulary's rows, gathered by token from the model's own rows or filled from other
models' rows (see `surgery.vocab.align`); every other tensor passes through unchanged.

It has the reader's interface (`path`, `tensors`, `config`, `metadata`, `read`, `close`), so the engine
reads it block by block like any folder, and it wraps any object with that interface. A block of rows
is read as contiguous runs of the model's rows plus one small read per filled row: memory stays
bounded by the block, never the whole matrix.
"""

from __future__ import annotations

import dataclasses

import torch

from surgery.io.format import TensorInfo, nbytes
from surgery.vocab.align import RowMap, runs

MEAN_CHUNK = 4096  # rows read at a time for a padding row's mean


class GatheredFolder:
    def __init__(self, inner, row_map: RowMap, names: dict[str, dict[str, str]], sources: dict, config: dict):
        """`names[tensor][model]`: that tensor's name in each model a fill row may read from;
        `sources[model]`: those models' unwrapped folders; `config`: the config to show."""
        self.inner, self.row_map, self.names, self.sources = inner, row_map, names, sources
        self.path, self.metadata, self.config = inner.path, inner.metadata, config
        self.side_folder = inner.side_folder
        self.inputs = getattr(inner, "inputs", [inner.path])  # every folder read, for the output-overlap check
        self.tensors = {n: (_resized(i, row_map.rows) if n in names else i) for n, i in inner.tensors.items()}

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        if name not in self.names:
            return self.inner.read(name, rows)
        info = self.tensors[name]
        r0, r1 = rows if rows is not None else (0, info.rows)
        if not 0 <= r0 <= r1 <= info.rows:
            raise IndexError(f"rows [{r0}, {r1}) outside tensor {name!r} of {info.rows} rows")  # caller bug
        own = self.row_map.own[r0:r1]
        out = torch.empty((r1 - r0, *info.shape[1:]), dtype=info.dtype)  # (rows, hidden)
        for a, b, src in runs(own):
            out[a:b] = self.inner.read(name, (src, src + b - a))
        for i in (k for k, src in enumerate(own) if src < 0):
            row = r0 + i
            pad = self.row_map.mean_from is not None and row >= self.row_map.mean_from and row not in self.row_map.fill
            out[i] = self._mean(name, info) if pad else self._fill(name, row, info)
        return out

    def _mean(self, name: str, info: TensorInfo) -> torch.Tensor:
        """The mean of this model's output rows before `mean_from` (its token rows), read in chunks,
        summed in float64, once per tensor."""
        means = self.__dict__.setdefault("_means", {})
        if name not in means:
            n = self.row_map.mean_from
            total = torch.zeros(info.shape[1:], dtype=torch.float64)
            for a in range(0, n, MEAN_CHUNK):
                total += self.read(name, (a, min(a + MEAN_CHUNK, n))).double().sum(0)
            means[name] = (total / max(n, 1)).to(info.dtype)
        return means[name]

    def _fill(self, name: str, row: int, info: TensorInfo) -> torch.Tensor:
        """The mean of the fill sources' rows, in float32, cast to the stored dtype; zeros if none."""
        pairs = self.row_map.fill.get(row, ())
        if not pairs:
            return torch.zeros(info.shape[1:], dtype=info.dtype)
        total = sum(self.sources[m].read(self.names[name][m], (r, r + 1))[0].float() for m, r in pairs)
        return (total / len(pairs)).to(info.dtype)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"GatheredFolder({self.inner!r}, {self.row_map.rows} rows)"


def _resized(info: TensorInfo, rows: int) -> TensorInfo:
    shape = (rows, *info.shape[1:])
    return dataclasses.replace(info, shape=shape, nbytes=nbytes(info.dtype, shape))
