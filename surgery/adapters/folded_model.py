"""A base model with PEFT adapters folded in as it is read: the same interface as `ModelFolder`
(`path`, `tensors`, `config`, `metadata`, `read(name, rows)`, `close()`), so the merge engine
streams a folded model, or merges it with others, without the folded model ever being written or
held whole. Adapters fold in order, each onto the result of the previous ones.

Every tensor keeps the base's name, shape and dtype entry; `read` returns the base's bytes for a
tensor no adapter touches, and float32 rows for one that is folded. Memory: one block of rows plus
the small factors of the module being read (a few cached), and a DoRA column-norm vector.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from surgery.adapters.kinds import dora, ia3, lora, vera
from surgery.adapters.mapping import Adapter, Delta, open_adapter
from surgery.io.format import num_rows, row_numel

CACHED_PARTS = 16                # adapter tensors kept in memory: the factors of the last few modules
NORM_BLOCK = 16 * 1024**2        # float32 bytes per block of the DoRA column-norm pass


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
    def side_folder(self) -> str:
        return self.base.side_folder

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
        pending: list[lora.Factor] = []  # consecutive plain LoRA adapters fold in one call
        transposed = False
        for i in range(start or 0, upto):
            delta = self.adapters[i].deltas.get(name)
            if delta is None:
                continue
            if pending and (delta.kind != "lora" or delta.transposed != transposed):
                w, pending = lora.fold(w, rows, pending, transposed), []
            if delta.kind == "lora":
                pending.append((self._part(i, delta.parts["A"]), self._part(i, delta.parts["B"]), delta.scale))
                transposed = delta.transposed
            else:
                w = self._apply(i, name, delta, w, rows)
        return lora.fold(w, rows, pending, transposed) if pending else w

    def _apply(self, i: int, name: str, delta: Delta, w: torch.Tensor, rows: tuple[int, int]) -> torch.Tensor:
        def part(key: str) -> torch.Tensor:
            return self._part(i, delta.parts[key])

        if delta.kind == "dora":
            norm = self._column_norm(i, name, delta) if delta.transposed else None
            return dora.fold(w, rows, part("A"), part("B"), delta.scale, part("magnitude"), delta.transposed, norm)
        if delta.kind == "lora_bias":
            return lora.fold_bias(w, part("bias"), delta.scale)
        if delta.kind in ("ia3", "ia3_ff"):
            return ia3.fold(w, rows, part("l"), delta.kind == "ia3_ff", delta.transposed)
        if delta.kind == "ia3_bias":
            return ia3.fold_bias(w, part("l"))
        A, B = self._projections(i)
        return vera.fold(w, rows, A, B, part("lambda_b"), part("lambda_d"), delta.transposed, delta.scale)

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

    def _projections(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """VeRA's shared A (r, in_max) and B (out_max, r): stored in the file, or regenerated from the key."""
        adapter = self.adapters[i]
        if adapter.config.save_projection:
            first = next(iter(adapter.deltas.values()))
            return (self._keep((i, "vera_A"), lambda: adapter.weights.read(first.parts["vera_A"]).float()),
                    self._keep((i, "vera_B"), lambda: adapter.weights.read(first.parts["vera_B"]).float()))
        config, (out_max, in_max) = adapter.config, adapter.projection
        pair = self._keep((i, "vera_AB"), lambda: torch.cat(
            [t.reshape(-1) for t in vera.projections(config.projection_prng_key, config.r, out_max, in_max)]))
        n = config.r * in_max
        return pair[:n].reshape(config.r, in_max), pair[n:].reshape(out_max, config.r)

    def _column_norm(self, i: int, name: str, delta: Delta) -> torch.Tensor:
        """||V|| per column of a DoRA weight stored (in, out), V being the weight adapter `i` sees plus its
        delta; one pass over the weight in blocks, kept as an (out,) vector."""
        def make() -> torch.Tensor:
            shape = self.tensors[name].shape
            step = max(1, NORM_BLOCK // (4 * max(row_numel(shape), 1)))
            A, B = self._part(i, delta.parts["A"]), self._part(i, delta.parts["B"])
            total = torch.zeros(shape[1])
            for r0 in range(0, shape[0], step):
                rows = (r0, min(r0 + step, shape[0]))
                total += dora.column_sumsq(self._folded(name, rows, i), rows, A, B, delta.scale)
            return total.sqrt()
        return self._keep((i, f"norm:{name}"), make)

    def close(self) -> None:
        self.base.close()
        for adapter in self.adapters:
            adapter.weights.close()

    def __repr__(self) -> str:
        return f"FoldedModel({self.path!r} + {[a.config.path for a in self.adapters]})"
