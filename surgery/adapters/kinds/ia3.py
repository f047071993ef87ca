"""(IA)^3 folding (Liu et al. 2022, arXiv:2205.05638): a learned vector l rescales a weight's
outputs (attention keys and values: W' = diag(l) W) or, for `feedforward_modules`, its inputs
(W' = W diag(l)); an output-scaled layer's bias is scaled with it, as PEFT merges it.
"""

from __future__ import annotations

import torch

from surgery.adapters.config import AdapterConfig, names, targets
from surgery.adapters.kinds.kind import Kind, one_at_a_time
from surgery.adapters.mapping import Adapter, Delta, map_bias, need, part_shape
from surgery.errors import InputError


def fold(w: torch.Tensor, rows: tuple[int, int], l: torch.Tensor, feedforward: bool, transposed: bool) -> torch.Tensor:
    """Rows [r0, r1) of the rescaled weight; `w` stored (out, in), or (in, out) when `transposed`."""
    r0, r1 = rows
    vector = l.float().reshape(-1)  # (out,) or (in,)
    scales_rows = feedforward == transposed  # outputs are rows of (out, in); inputs are rows of (in, out)
    if scales_rows:
        return w.float() * vector[r0:r1].unsqueeze(1)  # (r1 - r0, 1)
    return w.float() * vector.unsqueeze(0)  # (1, cols)


def fold_bias(bias: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """The bias (out,) of an output-scaled layer, scaled with its outputs."""
    return bias.float() * l.float().reshape(-1)


def read_config(path: str, file: str, raw: dict) -> AdapterConfig:
    return AdapterConfig(path, "IA3", fan_in_fan_out=bool(raw.get("fan_in_fan_out")), target_modules=targets(raw),
                         modules_to_save=names(raw.get("modules_to_save")))


def map_module(adapter: Adapter, base, module: str, parts: dict[str, str], target: str, shared: dict[str, str]) -> None:
    need(adapter, module, parts, "l")
    l = part_shape(adapter, parts["l"])  # (out, 1) scales outputs; (1, in) scales inputs (feedforward_modules)
    W = base.tensors[target].shape
    if len(l) != 2 or 1 not in l:
        raise InputError(f"{adapter.file}: module {module!r}: tensor {parts['l']!r} is {list(l)}, not a vector "
                         "(out, 1) or (1, in)")
    feedforward = l[0] == 1 and l[1] != 1
    size, natural = (l[1], 1) if feedforward else (l[0], 0)  # the axis it scales in an (out, in) weight
    transposed = adapter.config.fan_in_fan_out if W[0] == W[1] else W[natural] != size
    if len(W) != 2 or W[natural ^ transposed] != size:
        raise InputError(f"{adapter.file}: module {module!r}: tensor {parts['l']!r} scales {size} "
                         f"{'inputs' if feedforward else 'outputs'} but the base weight {target!r} is {list(W)}")
    adapter.deltas[target] = Delta("ia3_ff" if feedforward else "ia3", module, parts, 1.0, transposed)
    if not feedforward and f"{module}.bias" in base.tensors:  # PEFT scales the bias with the outputs
        map_bias(adapter, base, module, parts, "ia3_bias", (size,), 1.0)


FOLDS = {
    "ia3": one_at_a_time(lambda w, rows, s: fold(w, rows, s["l"], False, s.delta.transposed)),
    "ia3_ff": one_at_a_time(lambda w, rows, s: fold(w, rows, s["l"], True, s.delta.transposed)),
    "ia3_bias": one_at_a_time(lambda w, rows, s: fold_bias(w, s["l"])),
}
KIND = Kind("ia3", "IA3", FOLDS, peft_type="IA3", read_config=read_config, map_module=map_module, weighted=False)
