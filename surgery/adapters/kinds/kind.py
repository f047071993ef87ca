"""What an adapter kind is: how its `adapter_config.json` is read, how its tensors map onto the base
model's, and how each change it makes is folded into a block of rows of a base weight.

A fold gets the rows [r0, r1) of the weight as the earlier adapters left it, and a run of `Step`s:
consecutive changes of one delta kind and orientation to that weight (one per adapter), so a kind
that can fold several adapters at once (LoRA: one float32 copy for all) does so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from surgery.adapters.config import AdapterConfig
from surgery.adapters.mapping import Adapter, Delta


class Step(Protocol):
    """One adapter's change of one base tensor, as a fold reads it."""

    delta: Delta
    name: str                   # the base tensor changed
    adapter: Adapter

    @property
    def shape(self) -> tuple[int, ...]: ...                   # the base tensor's shape

    def __getitem__(self, part: str) -> torch.Tensor: ...   # an adapter tensor of this change, float32, cached

    def whole(self, part: str) -> torch.Tensor: ...         # the same, read afresh (for what `kept` holds)

    def kept(self, key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor: ...  # made once per adapter

    def before(self, rows: tuple[int, int]) -> torch.Tensor: ...  # the weight's rows as this adapter sees them


Fold = Callable[[torch.Tensor, tuple[int, int], Sequence[Step]], torch.Tensor]
ReadConfig = Callable[[str, str, dict], AdapterConfig]  # (adapter folder, config file, raw JSON) -> config
MapModule = Callable[[Adapter, Any, str, dict[str, str], str, dict[str, str]], None]
# (adapter, base folder, module, its parts {part: tensor}, target tensor, shared parts) -> adds its Delta(s)


@dataclass(frozen=True)
class Kind:
    name: str                               # the module name and registry key
    title: str                              # as messages write it: LoRA, DoRA, IA3, VeRA
    folds: dict[str, Fold]                  # delta kind (Delta.kind) -> its fold
    peft_type: str | None = None            # the peft_type it reads; None: a variant read by another kind
    read_config: ReadConfig | None = None
    map_module: MapModule | None = None
    weighted: bool = True                   # a weight scales its delta (DoRA and IA3 rescale: no weight)
    describe: Callable[[AdapterConfig], dict] = field(default=lambda config: {})  # extra `surgery inspect` fields


def one_at_a_time(fold: Callable[[torch.Tensor, tuple[int, int], Step], torch.Tensor]) -> Fold:
    """A Fold from a fold of one step: the steps of a run applied in order."""
    def run(w: torch.Tensor, rows: tuple[int, int], steps: Sequence[Step]) -> torch.Tensor:
        for step in steps:
            w = fold(w, rows, step)
        return w
    return run
