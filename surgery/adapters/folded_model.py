"""A base model with PEFT adapters folded in as it is read: the same interface as `ModelFolder`
(`path`, `tensors`, `config`, `metadata`, `read(name, rows)`, `close()`), so the merge engine
streams a folded model, or merges it with others, without the folded model ever being written or
held whole. Adapters fold in order, each onto the result of the previous ones; each change is folded
by its kind (`surgery.adapters.kinds`), found by the change's kind in a registry.

Every tensor keeps the base's name, shape and dtype entry; `read` returns the base's bytes for a
tensor no adapter touches, and float32 rows for one that is folded. Memory: one block of rows plus
the small factors of the module being read (a few cached), and what a kind keeps per adapter (VeRA's
shared projections, a DoRA column-norm vector).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby

import torch

from surgery.adapters.kinds import fold_of
from surgery.adapters.load import open_adapter
from surgery.adapters.mapping import Adapter, Delta
from surgery.io.format import num_rows

CACHED_PARTS = 16                # adapter tensors kept in memory: the factors of the last few modules


class FoldedModel:
    def __init__(self, base, adapters: Sequence[tuple[str, float]]):
        """`base` is an open ModelFolder; `adapters` are (adapter folder, weight) pairs, folded in order."""
        self.base = base
        self.adapters: list[Adapter] = [open_adapter(path, base, weight) for path, weight in adapters]
        self.path, self.tensors = base.path, base.tensors
        self._lock = threading.Lock()  # the engine reads ahead in a worker thread
        self._parts: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self._kept: dict[tuple[int, str], torch.Tensor] = {}  # shared VeRA projections, DoRA column norms

    @property
    def config(self) -> dict:
        return self.base.config

    @property
    def metadata(self) -> dict[str, str]:
        return self.base.metadata

    @property
    def inputs(self) -> list[str]:
        """Every folder this model is read from: an output may not overlap any of them."""
        return [self.path] + [a.config.path for a in self.adapters]

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows [r0, r1) of tensor `name` with every adapter folded in (float32 where one changes it)."""
        rows = rows if rows is not None else (0, num_rows(self.tensors[name].shape))
        return self._folded(name, rows, len(self.adapters))

    def _folded(self, name: str, rows: tuple[int, int], upto: int) -> torch.Tensor:
        """The rows after folding adapters [0, upto); a replacement (modules_to_save) restarts the chain."""
        start = max((i for i in range(upto) if name in self.adapters[i].replaced), default=None)
        if start is None:
            w = self.base.read(name, rows)
        else:
            w = self.adapters[start].weights.read(self.adapters[start].replaced[name], rows)
        steps = [FoldStep(self, i, name, self.adapters[i].deltas[name]) for i in range(start or 0, upto)
                 if name in self.adapters[i].deltas]
        for (kind, _), run in groupby(steps, key=lambda s: (s.delta.kind, s.delta.transposed)):
            run = list(run)  # consecutive changes of one kind and orientation: LoRA folds them in one call
            w = fold_of(kind, f"{run[0].adapter.file}: module {run[0].delta.module!r}")(w, rows, run)
        return w

    def _part(self, i: int, name: str) -> torch.Tensor:
        """Adapter tensor `name` of adapter `i`, float32, from a small cache."""
        key = (i, name)
        with self._lock:
            if key in self._parts:
                self._parts.move_to_end(key)
                return self._parts[key]
        value = self.adapters[i].weights.read(name).float()
        with self._lock:
            self._parts[key] = value
            while len(self._parts) > CACHED_PARTS:
                self._parts.popitem(last=False)
        return value

    def _keep(self, key: tuple[int, str], make) -> torch.Tensor:
        with self._lock:
            if key in self._kept:
                return self._kept[key]
        value = make()
        with self._lock:
            return self._kept.setdefault(key, value)

    def close(self) -> None:
        self.base.close()
        for adapter in self.adapters:
            adapter.weights.close()

    def __repr__(self) -> str:
        return f"FoldedModel({self.path!r} + {[a.config.path for a in self.adapters]})"


@dataclass(frozen=True)
class FoldStep:
    """Adapter `index`'s change of base tensor `name`, as its kind's fold reads it (`kinds.kind.Step`)."""

    model: FoldedModel
    index: int
    name: str
    delta: Delta

    @property
    def adapter(self) -> Adapter:
        return self.model.adapters[self.index]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.model.tensors[self.name].shape)

    def __getitem__(self, part: str) -> torch.Tensor:
        return self.model._part(self.index, self.delta.parts[part])

    def whole(self, part: str) -> torch.Tensor:
        return self.adapter.weights.read(self.delta.parts[part]).float()

    def kept(self, key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self.model._keep((self.index, key), make)

    def before(self, rows: tuple[int, int]) -> torch.Tensor:
        return self.model._folded(self.name, rows, self.index)
