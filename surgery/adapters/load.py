"""Reading an adapter folder through its kind: its config (`read_config`) and its tensors mapped onto a
base model (`open_adapter`), every shape, rank and value checked before any output is written.

Only adapters whose effect is a change of weights can be folded: LoRA (with rsLoRA, DoRA, rank and
alpha patterns), IA3 and VeRA (`surgery.adapters.kinds`). Options that change what the adapter
computes in ways a folded weight cannot express are refused while the config is read.
"""

from __future__ import annotations

import os

from surgery.adapters.config import CONFIG, VIRTUAL_TOKENS, AdapterConfig, raw_config
from surgery.adapters.kinds import kind_of_config, kind_of_delta
from surgery.adapters.mapping import Adapter, AdapterWeights, check_finite, check_replacements, group_parts
from surgery.errors import InputError


def read_config(path: str) -> AdapterConfig:
    """The validated config of the adapter folder `path`."""
    file = os.path.join(path, CONFIG)
    raw = raw_config(path)
    kind = str(raw.get("peft_type", "")).upper()
    if kind in VIRTUAL_TOKENS:
        raise InputError(f"{file}: peft_type: {kind} cannot be folded into weights: it adds virtual tokens, "
                         "not weight deltas; keep using it through PEFT")
    return kind_of_config(kind, file).read_config(os.path.abspath(path), file, raw)


def open_adapter(path: str, base, weight: float = 1.0) -> Adapter:
    """Read the adapter at `path` and map it onto `base` (a ModelFolder); every check happens here."""
    config = read_config(path)
    adapter = Adapter(config, AdapterWeights(path), weight)
    map_module = kind_of_config(config.peft_type, config.file).map_module
    modules, shared, adapter.replaced = group_parts(adapter.weights.tensors)
    for module, parts in sorted(modules.items()):
        target = f"{module}.weight"
        if target not in base.tensors:
            raise InputError(f"{adapter.file}: module {module!r} (tensor {next(iter(parts.values()))!r}): the base "
                             f"model {base.path} has no tensor {target!r}; this adapter was trained on another "
                             "architecture")
        map_module(adapter, base, module, parts, target, shared)
    _check_kinds(adapter)
    check_replacements(adapter, base)
    check_finite(adapter)
    return adapter


def _check_kinds(adapter: Adapter) -> None:
    """Every change has a kind that folds it, and a weight only where that kind's delta takes one."""
    for delta in adapter.deltas.values():
        kind = kind_of_delta(delta.kind, f"{adapter.file}: module {delta.module!r}")
        if adapter.weight != 1.0 and not kind.weighted:
            raise InputError(f"{adapter.config.path}: weight {adapter.weight} given, but a {kind.title} adapter "
                             "rescales weights rather than adding a delta, so it has no weight to scale; give it "
                             "weight 1")
