"""Adapter kinds that fold into weights, one module each (LoRA, DoRA, IA3, VeRA), in a registry.

Each module's `KIND` says how its `adapter_config.json` is read, how its tensors map onto the base's
and how its changes fold (`kind.Kind`). `PEFT_TYPES` picks the kind that reads a config by its
`peft_type`; `DELTAS` the kind that folds a change by its `Delta.kind`. An unknown key is an error.
"""

from __future__ import annotations

from importlib import import_module

from surgery.adapters.kinds.kind import Fold, Kind
from surgery.errors import InputError

NAMES = ("lora", "dora", "ia3", "vera")

KINDS: dict[str, Kind] = {name: import_module(f"surgery.adapters.kinds.{name}").KIND for name in NAMES}
PEFT_TYPES: dict[str, Kind] = {k.peft_type: k for k in KINDS.values() if k.peft_type}
DELTAS: dict[str, Kind] = {delta: k for k in KINDS.values() for delta in k.folds}


def kind_of_config(peft_type: str, file: str) -> Kind:
    """The kind that reads a config of this `peft_type`."""
    if peft_type not in PEFT_TYPES:
        raise InputError(f"{file}: peft_type: {peft_type or 'missing'!r} cannot be folded; supported types: "
                         f"{', '.join(PEFT_TYPES)}")
    return PEFT_TYPES[peft_type]


def kind_of_delta(delta: str, where: str) -> Kind:
    """The kind that folds a change of kind `delta`; `where` names the adapter file and module."""
    if delta not in DELTAS:
        raise InputError(f"{where}: change of kind {delta!r} has no fold; the kinds that fold are "
                         f"{', '.join(DELTAS)} (add one in surgery/adapters/kinds/)")
    return DELTAS[delta]


def fold_of(delta: str, where: str) -> Fold:
    return kind_of_delta(delta, where).folds[delta]
