"""A PEFT adapter folder mapped onto a base model: which base tensor each adapter tensor changes,
how, and whether every shape, rank and value fits, checked before any output is written.

PEFT saves `base_model.model.<module>.lora_A.weight` and the like; the module name, less PEFT's
prefix, is the base model's module, and its `.weight` (or `.bias`) the tensor changed. Tensors that
are not adapter factors (`modules_to_save`, an embedding's `base_layer.weight`) replace the base's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from surgery.adapters.config import AdapterConfig, read_config
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

    kind: str                   # lora, dora, ia3, ia3_bias, lora_bias, vera
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


def open_adapter(path: str, base, weight: float = 1.0) -> Adapter:
    """Read the adapter at `path` and map it onto `base` (a ModelFolder); every check happens here."""
    config = read_config(path)
    adapter = Adapter(config, AdapterWeights(path), weight)
    if weight != 1.0 and (config.peft_type == "IA3" or config.use_dora):
        kind = "DoRA" if config.use_dora else "IA3"
        raise InputError(f"{config.path}: weight {weight} given, but a {kind} adapter rescales weights rather than "
                         "adding a delta, so it has no weight to scale; give it weight 1")
    modules, shared, adapter.replaced = group_parts(adapter.weights.tensors)
    for module, parts in sorted(modules.items()):
        _map_module(adapter, base, module, parts, shared)
    check_replacements(adapter, base)
    _check_finite(adapter)
    return adapter


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


def _map_module(adapter: Adapter, base, module: str, parts: dict[str, str], shared: dict[str, str]) -> None:
    kind = adapter.config.peft_type
    target = f"{module}.weight"
    if target not in base.tensors:
        raise InputError(f"{adapter.file}: module {module!r} (tensor {next(iter(parts.values()))!r}): the base model "
                         f"{base.path} has no tensor {target!r}; this adapter was trained on another architecture")
    if kind == "LORA":
        _map_lora(adapter, base, module, parts, target)
    elif kind == "IA3":
        _map_ia3(adapter, base, module, parts, target)
    else:
        _map_vera(adapter, base, module, parts, target, shared)


def _need(adapter: Adapter, module: str, parts: dict[str, str], *names: str) -> None:
    missing = [n for n in names if n not in parts]
    if missing:
        raise InputError(f"{adapter.file}: module {module!r}: has {sorted(parts)} but lacks {missing}; "
                         "the adapter file is incomplete: save it again")


def _shape(adapter: Adapter, name: str) -> tuple[int, ...]:
    return adapter.weights.tensors[name].shape


def _map_lora(adapter: Adapter, base, module: str, parts: dict[str, str], target: str) -> None:
    embedding = "embedding_A" in parts or "embedding_B" in parts
    a, b = ("embedding_A", "embedding_B") if embedding else ("A", "B")
    _need(adapter, module, parts, a, b)
    A, B = _shape(adapter, parts[a]), _shape(adapter, parts[b])  # A (r, in), B (out, r)
    if len(A) != 2 or len(B) != 2:
        raise InputError(f"{adapter.file}: module {module!r}: factors {list(A)} and {list(B)} are not matrices "
                         "(a convolution LoRA?); only linear and embedding layers can be folded")
    if A[0] != B[1]:
        raise InputError(f"{adapter.file}: module {module!r}: A/B rank mismatch: {parts[a]!r} is {list(A)} and "
                         f"{parts[b]!r} is {list(B)}; A must be (r, in) and B (out, r) with the same r")
    r, _ = adapter.config.rank_alpha(module)
    if A[0] != r:
        raise InputError(f"{adapter.file}: module {module!r}: tensor {parts[a]!r} has rank {A[0]} but the config "
                         f"(r / rank_pattern) gives {r}; the config does not belong to these weights")
    W = base.tensors[target].shape
    transposed = embedding or _transposed(adapter, module, W, (B[0], A[1]), parts[a])
    scale = adapter.config.lora_scale(module) * adapter.weight
    dora = "magnitude" in parts
    if dora:
        out = W[1] if transposed else W[0]
        _check_shape(adapter, module, parts["magnitude"], (out,))
    parts = {**parts, "A": parts[a], "B": parts[b]}  # an embedding's factors fold the same way, transposed
    adapter.deltas[target] = Delta("dora" if dora else "lora", module, parts, scale, transposed)
    if "bias" in parts:
        _map_bias(adapter, base, module, parts, "lora_bias", (B[0],), scale)


def _transposed(adapter: Adapter, module: str, W: tuple[int, ...], out_in: tuple[int, int], part: str) -> bool:
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


def _check_shape(adapter: Adapter, module: str, name: str, want: tuple[int, ...]) -> None:
    got = _shape(adapter, name)
    if tuple(got) != tuple(want):
        raise InputError(f"{adapter.file}: module {module!r}: tensor {name!r} is {list(got)} but the base model "
                         f"needs {list(want)}; the adapter was trained on another model size")


def _map_bias(adapter: Adapter, base, module: str, parts: dict[str, str], kind: str, shape, scale: float) -> None:
    target = f"{module}.bias"
    if target not in base.tensors:
        raise InputError(f"{adapter.file}: module {module!r}: the adapter changes a bias but the base model has no "
                         f"tensor {target!r}")
    if tuple(base.tensors[target].shape) != tuple(shape):
        raise InputError(f"{adapter.file}: module {module!r}: bias {target!r} is {list(base.tensors[target].shape)} "
                         f"in the base but the adapter's is {list(shape)}")
    adapter.deltas[target] = Delta(kind, module, parts, scale)


def _map_ia3(adapter: Adapter, base, module: str, parts: dict[str, str], target: str) -> None:
    _need(adapter, module, parts, "l")
    l = _shape(adapter, parts["l"])  # (out, 1) scales outputs; (1, in) scales inputs (feedforward_modules)
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
        _map_bias(adapter, base, module, parts, "ia3_bias", (size,), 1.0)


def _map_vera(adapter: Adapter, base, module: str, parts: dict[str, str], target: str, shared: dict[str, str]) -> None:
    _need(adapter, module, parts, "lambda_b", "lambda_d")
    out, r = _shape(adapter, parts["lambda_b"])[0], _shape(adapter, parts["lambda_d"])[0]
    if r != adapter.config.r:
        raise InputError(f"{adapter.file}: module {module!r}: tensor {parts['lambda_d']!r} has rank {r} but the "
                         f"config says r={adapter.config.r}")
    W = base.tensors[target].shape  # (out, in), or (in, out) with fan_in_fan_out
    transposed = adapter.config.fan_in_fan_out if W[0] == W[1] else W[0] != out
    if W[1 if transposed else 0] != out:
        raise InputError(f"{adapter.file}: module {module!r}: tensor {parts['lambda_b']!r} scales {out} outputs but "
                         f"the base weight {target!r} is {list(W)}; the adapter was trained on another model size")
    inp = W[0] if transposed else W[1]
    parts = {**parts, **shared}
    if adapter.config.save_projection:
        _need(adapter, module, parts, "vera_A", "vera_B")
        A, B = _shape(adapter, parts["vera_A"]), _shape(adapter, parts["vera_B"])  # (r, in_max), (out_max, r)
        if A[0] != r or B[1] != r or A[1] < inp or B[0] < out:
            raise InputError(f"{adapter.file}: module {module!r}: shared projections vera_A {list(A)} / vera_B "
                             f"{list(B)} cannot be sliced to rank {r}, {inp} inputs and {out} outputs")
    adapter.deltas[target] = Delta("vera", module, parts, adapter.weight, transposed)
    adapter.projection = tuple(max(a, b) for a, b in zip(adapter.projection, (out, inp)))  # type: ignore[assignment]


def _check_finite(adapter: Adapter) -> None:
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
