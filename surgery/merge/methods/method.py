"""What a merge method is: typed parameters, a few tensor-wide statistics, and a pure `merge`.

The engine hands a method one block of rows at a time (the whole tensor when it is small), in
float32 (converted from the checkpoint's dtype on first use). A method that needs tensor-wide
numbers (a magnitude cut-off, a norm, a dot product) declares `stages`: each `Stage` maps a block
to partial statistics, which the engine sums over all blocks before the next stage, then `merge`
sees the totals; a stage's `when` says which parameters need it (each stage costs a pass over the
tensor). Within one pass the blocks arrive in row order and share one copy of the statistics, where
a method may keep running counts under keys that start with "~" (TIES ranks entries tied at its
cut-off this way). Memory is bounded by the block, never by the tensor, and the result does not
depend on where the blocks fall. A method that needs no
statistics is best written as a typed function (`elementwise.py`).

A parameter kept only so that mergekit configs run unchanged is declared with `compat`: it is
validated, has no effect, is left out of the TUI's forms and warns when a spec sets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from surgery.io.format import num_rows
from surgery.merge.draws import Draws
from surgery.merge.kept import Kept, fetch

Stats = dict[str, torch.Tensor]


class Params(BaseModel):
    """Base of every method's parameter models: typed, bounded, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NoParams(Params):
    pass


COMPAT = "accepted for mergekit compatibility; no effect here"


def compat(default: Any, what: str) -> Any:
    """A field kept for mergekit compatibility only: `what` says what it does in mergekit."""
    return Field(default, description=f"{COMPAT} (in mergekit: {what})", json_schema_extra={"compat": True})


def is_compat(field: FieldInfo) -> bool:
    return isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("compat") is True


@dataclass(frozen=True)
class Block:
    """Rows [r0, r1) of one output tensor, from every input: as stored, and in float32 (`base`, `models`,
    converted on first use, so that a compiled kernel reading the stored rows skips the conversion)."""

    name: str                              # output tensor name
    shape: tuple[int, ...]                 # the whole tensor's shape
    rows: tuple[int, int]
    stored_base: torch.Tensor | None       # (r, ...) the base model's rows as stored, when the method uses a base
    stored_models: tuple[torch.Tensor, ...]  # (r, ...) each other input's rows as stored
    per_model: tuple[BaseModel, ...]       # each other input's resolved parameters
    shared: BaseModel                      # the resolved global parameters
    draws: Draws | None = None             # uniform random numbers, reproducible per tensor
    kept: Kept | None = None               # values kept between this tensor's reads (`carried`)
    final: bool = True                     # the merge pass reads this block (else a statistics pass only)

    @property
    def base(self) -> torch.Tensor | None:
        """(r, ...) float32: the base model's rows."""
        stored = self.stored_base
        return None if stored is None else self.cached("base", lambda: stored.to(torch.float32))

    @property
    def models(self) -> tuple[torch.Tensor, ...]:
        """(r, ...) float32: each other input's rows."""
        return self.cached("models", lambda: tuple(m.to(torch.float32) for m in self.stored_models))

    @property
    def numel(self) -> int:
        """Elements of the whole tensor (not of the block)."""
        return math.prod(self.shape)

    def uniform(self, i: int) -> torch.Tensor:
        """U[0, 1) numbers for input `i`, shaped like this block, the same whatever the blocking."""
        assert self.draws is not None
        return self.cached(f"uniform{i}", lambda: self.draws.uniform(i, self.rows)
                           .reshape(self.stored_models[i].shape).to(self.stored_models[i].device))

    def keep(self, i: int, density: float) -> torch.Tensor:
        """Input `i`'s uint8 0/1 Bernoulli(density) mask, shaped like this block, the same whatever
        the blocking."""
        assert self.draws is not None
        return self.cached(f"keep{i}", lambda: self.draws.keep(i, self.rows, density)
                           .reshape(self.stored_models[i].shape).to(self.stored_models[i].device))

    def carried(self, key: str, make: Callable[[], object]):
        """Like `cached`, and kept for the next read of these rows by a later pass of the same tensor
        (within the engine's budget): the merge pass's read takes it, earlier reads leave it. For values
        that depend on the block alone and cost more to make than to keep."""
        return self.cached(key, lambda: fetch(self.kept, (self.name, self.rows, key), self.final, make))

    def cached(self, key: str, make: Callable[[], object]):
        """Values derived from this block, computed once while it is alive (a block read once serves
        every statistics stage and the merge). Callers must not modify what they get."""
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]


Condition = Callable[[BaseModel, tuple[BaseModel, ...]], bool]  # (global params, per-model params) -> bool


def always(shared: BaseModel, per_model: tuple[BaseModel, ...]) -> bool:
    return True


Needed = Callable[[BaseModel, tuple[BaseModel, ...], tuple[int, ...], Stats], bool]
# (global params, per-model params, tensor shape, totals of the passes before) -> whether a pass has work


@dataclass(frozen=True)
class Stage:
    """One pass over a tensor: `run` maps a block to partial statistics (summed over the blocks);
    `when` says whether a tensor with these parameters needs it; `needed`, when given, whether it still
    has work once the earlier passes' totals are known (a cut-off the first pass already pinned down,
    e.g. at 0 in a sparse task vector): if not, the engine skips the pass and reads nothing for it."""

    run: Callable[[Block, Stats], Stats]
    when: Condition = always
    needed: Needed | None = None
    carried: str | None = None  # the key of the one value `run` needs (`Block.carried`): where an earlier
    # read kept it for a block, the engine reads none of that block's rows for this pass (the block holds none)


BasePolicy = Literal["required", "optional", "unused", "merged"]
# required: every other input is compared to the base_model; optional: so when a base_model is given,
# else the models are merged alone; unused: a base_model is not an input unless listed among the
# models; merged: a base_model is one more input, after the models, as mergekit adds it


@dataclass(frozen=True)
class Fallback:
    """A simpler merge a method falls back to on some tensors (SLERP's linear interpolation of nearly
    colinear ones): the engine counts the tensors that take it and reports the count after the merge."""

    what: str                                   # what the tensor gets instead, e.g. "linear interpolation"
    why: str                                    # when, e.g. "their two inputs are nearly colinear"
    taken: Callable[[BaseModel, Stats], bool]   # from a tensor's resolved global parameters and statistics


@dataclass(frozen=True)
class Method:
    name: str
    merge: Callable[[Block, Stats], torch.Tensor]
    summary: str
    reference: str = ""
    shared: type[Params] = NoParams
    per_model: type[Params] = NoParams
    base: BasePolicy = "required"
    min_models: int = 1                    # inputs besides the base
    max_models: int | None = None
    stages: tuple[Stage, ...] = ()
    work: int = 4                          # block-sized float32 temporaries `merge` needs per input
    stored_work: int | None = None         # where its compiled kernels read the inputs as stored (no float32
    # copies of them): the block-sized float32 temporaries then; the engine sizes blocks by it (`row_bytes`)
    random: bool = False
    required: tuple[str, ...] = field(default=())  # per-model parameters without a default
    prepare: Callable[[Block, bool, Callable[[], bool]], None] | None = None  # fills the block's cache with
    # what depends on it alone; the engine calls it in its reading thread, so the next block's share overlaps
    # this block's work. The flag says whether the merge pass reads the block (False: only a statistics pass
    # does); the callable whether that thread is ahead (the block's consumer is still busy with an earlier
    # one): work that is only worth moving then (work the consumer would otherwise do) asks it
    fallback: Fallback | None = None  # taken by every tensor whose inputs are the same bytes
    statistics_ahead: bool = False  # run the statistics passes in a thread of their own, a few tensors ahead
    # of the merge pass: for passes as heavy as the merge (an exact selection), not light ones (norms)
    check: Callable[[BaseModel, tuple[BaseModel, ...]], str | None] | None = None  # a problem the merge would
    # meet with a tensor's resolved (global, per-model) parameters, e.g. a division by a zero sum: the planner
    # raises it, so it stops a merge (and every point of a sweep) before anything is read

    @property
    def uses_base(self) -> bool:
        """Whether a base_model given in the spec is the block's `base` (rather than absent or a model)."""
        return self.base in ("required", "optional")

    def stages_for(self, shared: BaseModel, per_model: tuple[BaseModel, ...]) -> tuple[Callable, ...]:
        """The statistics passes a tensor with these parameters needs, in order."""
        return tuple(s.run for s in self.passes_for(shared, per_model))

    def passes_for(self, shared: BaseModel, per_model: tuple[BaseModel, ...]) -> tuple[Stage, ...]:
        """The same passes as `Stage`s: the engine asks each one's `needed` before reading for it."""
        return tuple(s for s in self.stages if s.when(shared, per_model))

    def merge_tensors(self, base: torch.Tensor | None, models: list[torch.Tensor], per_model: list[BaseModel],
                      shared: BaseModel, seed: int = 0, name: str = "tensor") -> torch.Tensor:
        """The method on whole tensors (one block): the reference form used by tests and callers."""
        from surgery.merge.draws import Draws  # local: keeps this module free of engine imports

        shape = tuple(models[0].shape)
        f32 = [m.float() for m in models]
        block = Block(name, shape, (0, num_rows(shape)),
                      None if base is None else base.float(), tuple(f32), tuple(per_model), shared,
                      Draws(seed, name, shape, len(models)) if self.random else None)
        stats: Stats = {}
        if self.prepare is not None:
            self.prepare(block, True, lambda: True)
        for stage in self.passes_for(shared, tuple(per_model)):
            if stage.needed is None or stage.needed(shared, tuple(per_model), shape, stats):
                stats.update(stage.run(block, dict(stats)))
        return self.merge(block, dict(stats))
