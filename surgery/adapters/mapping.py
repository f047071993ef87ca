"""A PEFT adapter folder mapped onto a base model: which base tensor each adapter tensor changes,
how, and whether every shape, rank and value fits, checked before any output is written.

PEFT saves `base_model.model.<module>.lora_A.weight` and the like; the module name, less PEFT's
prefix, is the base model's module, and its `.weight` (or `.bias`) the tensor changed. Tensors that
are not adapter factors (`modules_to_save`, an embedding's `base_layer.weight`) replace the base's.
Here: what every kind shares (the grouping of tensor names, the checks); each kind's own mapping is in
`surgery.adapters.kinds`, and `surgery.adapters.load.open_adapter` runs them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from surgery.adapters.config import AdapterConfig
from surgery.errors import InputError
from surgery.io.format import TensorInfo
from surgery.io.reader import ModelFolder

PREFIX = "base_model.model."
SHARED = {"base_model.vera_A": "vera_A", "base_model.vera_B": "vera_B"}
# suffix after the module name -> the part it is
PARTS = {
    ".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_B.bias": "bias",
    ".lora_embedding_A": "embedding_A", ".lora_embedding_B": "embedding_B",
    ".lora_magnitude_vector": "magnitude", ".lora_magnitude_vector.weight": "magnitude",
    ".ia3_l": "l", ".vera_lambda_b": "lambda_b", ".vera_lambda_d": "lambda_d",
}
CHECK_BLOCK = 16 * 1024**2  # bytes read at a time when checking adapter tensors for NaN/Inf


class AdapterWeights(ModelFolder):
    """The one `adapter_model.safetensors` of an adapter folder, read lazily like a model folder."""

    def _safetensors_files(self) -> list[str]:
        file = os.path.join(self.path, "adapter_model.safetensors")
        if os.path.isfile(file):
            return [file]
        pickled = os.path.join(self.path, "adapter_model.bin")
        how = "it holds only adapter_model.bin (pickle, which can run code); re-save it with safetensors" \
            if os.path.exists(pickled) else "the adapter's weights are missing; copy adapter_model.safetensors in"
        raise InputError(f"{self.path}: no adapter_model.safetensors: {how}")


@dataclass(frozen=True)
class Delta:
    """How one adapter changes one base tensor."""

    kind: str                   # a key of surgery.adapters.kinds.DELTAS (lora, lora_bias, dora, ia3, vera, ...)
    module: str                 # e.g. model.layers.0.self_attn.q_proj
    parts: dict[str, str]       # part (A, B, magnitude, l, ...) -> adapter tensor name
    scale: float = 1.0          # LoRA: alpha / r (or / sqrt r) times the adapter's weight; VeRA: the weight
    transposed: bool = False    # the base stores this weight (in, out): fan_in_fan_out, or an embedding's A^T B^T


@dataclass
class Adapter:
    config: AdapterConfig
    weights: AdapterWeights
    weight: float = 1.0
    deltas: dict[str, Delta] = field(default_factory=dict)      # base tensor -> its change
    replaced: dict[str, str] = field(default_factory=dict)      # base tensor -> adapter tensor replacing it
    projection: tuple[int, int] = (0, 0)  # VeRA: (out, in) of the largest adapted weight, the shared projections' size

    @property
    def file(self) -> str:
        return self.config.weights_file


def group_parts(names) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, str]]:
    """Adapter tensor names sorted out: factors by base module {module: {part: name}}, VeRA's shared
    projections {part: name}, and whole tensors replacing the base's {base tensor: name}."""
    modules: dict[str, dict[str, str]] = {}
    shared: dict[str, str] = {}
    replaced: dict[str, str] = {}
    for name in names:
        key = name.removeprefix(PREFIX)
        suffix = next((s for s in PARTS if key.endswith(s)), None)
        if name in SHARED:
            shared[SHARED[name]] = name
        elif suffix is None:  # modules_to_save or a saved base layer: a whole base tensor
            replaced[_base_name(key)] = name
        else:
            modules.setdefault(key[: -len(suffix)], {})[PARTS[suffix]] = name
    return modules, shared, replaced


def _base_name(key: str) -> str:
    return re.sub(r"\.modules_to_save\.[^.]+", "", key).replace(".base_layer.", ".").replace(".original_module.", ".")


def need(adapter: Adapter, module: str, parts: dict[str, str], *names: str) -> None:
    missing = [n for n in names if n not in parts]
    if missing:
        raise InputError(f"{adapter.file}: module {module!r}: has {sorted(parts)} but lacks {missing}; "
                         "the adapter file is incomplete: save it again")


def part_shape(adapter: Adapter, name: str) -> tuple[int, ...]:
    return adapter.weights.tensors[name].shape


def stored_transposed(adapter: Adapter, module: str, W: tuple[int, ...], out_in: tuple[int, int], part: str) -> bool:
    """Whether the base stores this weight (in, out). PEFT treats Conv1D layers so whatever the config
    says, so a non-square shape decides; a square one follows `fan_in_fan_out`."""
    out, inp = out_in
    if tuple(W) == (out, inp) and (out != inp or not adapter.config.fan_in_fan_out):
        return False
    if tuple(W) == (inp, out):
        return True
    raise InputError(f"{adapter.file}: module {module!r} (tensor {part!r}): the adapter is for a weight of "
                     f"{out} outputs and {inp} inputs, but the base's is {list(W)}; the adapter was trained on "
                     "another model size")


def check_shape(adapter: Adapter, module: str, name: str, want: tuple[int, ...]) -> None:
    got = part_shape(adapter, name)
    if tuple(got) != tuple(want):
        raise InputError(f"{adapter.file}: module {module!r}: tensor {name!r} is {list(got)} but the base model "
                         f"needs {list(want)}; the adapter was trained on another model size")


def map_bias(adapter: Adapter, base, module: str, parts: dict[str, str], kind: str, size: tuple[int, ...],
             scale: float) -> None:
    """The change of the module's bias (out,) that comes with its weight's, as a `kind` Delta."""
    target = f"{module}.bias"
    if target not in base.tensors:
        raise InputError(f"{adapter.file}: module {module!r}: the adapter changes a bias but the base model has no "
                         f"tensor {target!r}")
    if tuple(base.tensors[target].shape) != tuple(size):
        raise InputError(f"{adapter.file}: module {module!r}: bias {target!r} is {list(base.tensors[target].shape)} "
                         f"in the base but the adapter's is {list(size)}")
    adapter.deltas[target] = Delta(kind, module, parts, scale)


def check_finite(adapter: Adapter) -> None:
    for name, info in adapter.weights.tensors.items():
        if not info.dtype.is_floating_point:
            raise InputError(f"{adapter.file}: tensor {name!r} has dtype {info.dtype}; adapter weights are floats")
        step = max(1, CHECK_BLOCK // max(info.row_bytes, 1))
        for r0 in range(0, info.rows, step):
            block = adapter.weights.read(name, (r0, min(r0 + step, info.rows)))  # (rows, ...)
            if not torch.isfinite(block).all():
                row = r0 + first_bad_row(block)
                raise InputError(f"{adapter.file}: tensor {name!r} holds NaN or Inf (row {row} of {info.rows}); "
                                 "the adapter is broken: use an earlier checkpoint of it")


def first_bad_row(block: torch.Tensor) -> int:
    """The first row (along the first axis) of `block` holding NaN or Inf; a 0-d or 1-d block is one row."""
    rows = block.reshape(block.shape[0], -1) if block.dim() > 1 else block.reshape(1, -1)  # (rows, cols)
    return int((~torch.isfinite(rows)).any(dim=1).nonzero()[0])


def check_replacements(adapter: Adapter, base) -> None:
    """Every replacing tensor must exist in the base with the same shape."""
    for target, name in adapter.replaced.items():
        info: TensorInfo | None = base.tensors.get(target)
        got = adapter.weights.tensors[name].shape
        if info is None:
            raise InputError(f"{adapter.file}: tensor {name!r} is no adapter factor, so it would replace {target!r} "
                             f"(as modules_to_save do), which the base model {base.path} does not have")
        if tuple(info.shape) != tuple(got):
            raise InputError(f"{adapter.file}: tensor {name!r} (modules_to_save) is {list(got)} but the base's "
                             f"{target!r} is {list(info.shape)}; resize the base's vocabulary first")
