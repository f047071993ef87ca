"""Plan and write a mixture of experts: every model opened and checked (architecture, layer count, MLP
shapes) before anything is computed, the routers computed from the base (gates.py), then the output
streamed through the shard writer into an atomic folder: the base's non-MLP tensors copied in row
blocks, each layer's experts written one expert matrix at a time. Nothing but one expert matrix (and
the routers) is held in memory; a failure leaves nothing at the output path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from surgery import __version__
from surgery.errors import InputError, SpecError
from surgery.io.locate import resolve_path
from surgery.io.output import (
    CONFIG_FILES,
    TOKENIZER_FILES,
    atomic_folder,
    check_output_path,
    copy_side_files,
    write_json,
)
from surgery.io.reader import ModelFolder
from surgery.io.writer import write_tensors
from surgery.merge.card import Card, write_card
from surgery.moe.gates import GATE_MODES, GateInputs
from surgery.moe.layouts import LAYOUTS, Layout, mlp_names, moe_shapes
from surgery.moe.spec import Expert, MoESpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
Blocks = Callable[[], Iterator[torch.Tensor]]  # the tensor's rows, in order, as consecutive blocks


@dataclass
class MoEPlan:
    spec: MoESpec
    file: str
    layout: Layout
    base: ModelFolder
    experts: list[ModelFolder]
    shared: list[ModelFolder]
    config: dict                  # the output config.json
    dtype: torch.dtype
    layers: int
    hidden: int
    width: int                    # every expert's MLP width

    @property
    def entries(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every output tensor, in write order: the base's non-MLP tensors, then each layer's MoE tensors."""
        dense = [(n, self.base.tensors[n].shape) for n in sorted(self.base.tensors) if ".mlp." not in n]
        return dense + [e for layer in range(self.layers) for e in
                        moe_shapes(layer, len(self.experts), self.hidden, self.width, bool(self.shared))]


def plan_moe(spec: MoESpec, file: str, models_dir: str | None = None, out_dtype: str | None = None) -> MoEPlan:
    """Open every model and check that they can form the chosen architecture; reads headers only."""
    layout = _layout(spec, file)
    folders = {}
    for ref, where in spec.models():
        try:
            folders.setdefault(ref, ModelFolder(resolve_path(ref, models_dir)))
        except InputError as e:  # a missing or unreadable model: located at the field naming it
            raise SpecError(file, where, str(e)) from None
    base = folders[spec.base_model]
    base_type = base.config.get("model_type")
    if base_type not in layout.sources:
        raise SpecError(file, "base_model", f"{spec.base_model!r} is a {base_type} model; {layout.name} is built "
                        f"from {', '.join(layout.sources)} models")
    layers = base.config.get("num_hidden_layers") or 0
    hidden, width = _mlp_shape(base, spec.base_model, layers, file, "base_model")
    for ref, where in spec.models()[1:]:
        _check_expert(folders[ref], ref, where, base_type, spec.base_model, layers, (hidden, width), file)
    qkv_bias = "model.layers.0.self_attn.q_proj.bias" in base.tensors
    if qkv_bias and not layout.qkv_bias:
        raise SpecError(file, "architecture", f"{spec.base_model!r} has attention q/k/v biases, which {layout.name} "
                        "cannot hold; set architecture: qwen (Qwen2-MoE)")
    dtype = DTYPES[out_dtype or spec.dtype or _config_dtype(base.config)]
    config = layout.config(base.config, len(spec.experts), spec.experts_per_token, width, qkv_bias)
    config["dtype"] = str(dtype).removeprefix("torch.")
    return MoEPlan(spec, file, layout, base, [folders[e.source_model] for e in spec.experts],
                   [folders[e.source_model] for e in spec.shared_experts or []], config, dtype, layers, hidden, width)


def _layout(spec: MoESpec, file: str) -> Layout:
    """mergekit's choice: the named architecture (a prefix of its name, any case), else Qwen2-MoE when
    shared experts are given and Mixtral otherwise."""
    shared = len(spec.shared_experts or [])
    wanted = (spec.architecture or ("qwen" if shared else "mixtral")).lower()
    matches = [k for k, v in LAYOUTS.items() if k.startswith(wanted) or v.name.lower().startswith(wanted)]
    if not matches:
        raise SpecError(file, "architecture", f"unknown output architecture {spec.architecture!r} "
                        f"(known: {', '.join(LAYOUTS)})")
    layout = LAYOUTS[matches[0]]
    low, high = layout.shared
    if not low <= shared <= high:
        need = "no shared experts" if high == 0 else f"exactly {low} shared expert"
        raise SpecError(file, "shared_experts", f"{layout.name} takes {need}; got {shared}"
                        + ("; use architecture: qwen (Qwen2-MoE) for a shared expert" if high == 0 else ""))
    return layout


def _config_dtype(config: dict) -> str:
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return name if name in DTYPES else "float32"


def _mlp_shape(folder: ModelFolder, ref: str, layers: int, file: str, where: str) -> tuple[int, int]:
    """(hidden, width) of the model's MLPs, the same in every layer; a missing MLP tensor is an error."""
    shapes = set()
    for layer in range(layers):
        gate, up, down = mlp_names(layer)
        missing = [n for n in (gate, up, down) if n not in folder.tensors]
        if missing:
            raise SpecError(file, where, f"{ref!r} has no tensor {missing[0]!r}: an expert is a dense model with "
                            "Llama-style MLPs (gate_proj, up_proj, down_proj)")
        shapes.add((folder.tensors[gate].shape, folder.tensors[up].shape, folder.tensors[down].shape))
    if len(shapes) != 1:
        raise SpecError(file, where, f"{ref!r} has MLPs of different widths across layers; experts need one width")
    (width, hidden), _, _ = shapes.pop()
    return hidden, width


def _check_expert(folder: ModelFolder, ref: str, where: str, base_type: str, base: str, layers: int,
                  shape: tuple[int, int], file: str) -> None:
    kind = folder.config.get("model_type")
    if kind != base_type:
        raise SpecError(file, where, f"{ref!r} is a {kind} model but the base {base!r} is {base_type}; every "
                        "expert must have the base's architecture")
    if folder.config.get("num_hidden_layers") != layers:
        raise SpecError(file, where, f"{ref!r} has {folder.config.get('num_hidden_layers')} layers but the base has "
                        f"{layers}; every expert must have the base's depth")
    got = _mlp_shape(folder, ref, layers, file, where)
    if got != shape:
        raise SpecError(file, where, f"{ref!r} has MLPs of hidden size {got[0]} and width {got[1]} but the base's "
                        f"are {shape[0]} and {shape[1]}; every expert must have the base's shapes")


def compute_gates(plan: MoEPlan, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(layers, experts, hidden) router rows and, for a shared expert, its (layers, 1, hidden) gate rows."""
    experts = plan.spec.experts + (plan.spec.shared_experts or [])
    inputs = GateInputs(plan.base.path, plan.layers, plan.hidden, plan.spec.seed, device)
    gates = GATE_MODES[plan.spec.gate_mode](inputs, experts)  # (L, E + S, H)
    n = len(plan.spec.experts)
    return gates[:, :n], (gates[:, n:] if plan.shared else None)


def write_moe(plan: MoEPlan, out: str, gates: torch.Tensor, shared_gates: torch.Tensor | None,
              shard_size: int = 5 * 1024**3, block_bytes: int = 16 * 1024**2, force: bool = False,
              card: Card | None = None, progress: Callable[[str, int], None] | None = None) -> str:
    """Stream the MoE into `out` atomically; returns its absolute path."""
    inputs = [f.path for f in [plan.base, *plan.experts, *plan.shared]]
    out = check_output_path(out, inputs, force)
    entries = plan.entries
    producers = _producers(plan, gates, shared_gates, block_bytes)
    with atomic_folder(out) as tmp:
        try:
            write_tensors(tmp, [(n, plan.dtype, s) for n, s in entries], producers, provenance(plan), shard_size,
                          progress)
        finally:
            for folder in {id(f): f for f in [plan.base, *plan.experts, *plan.shared]}.values():
                folder.close()
        write_json(os.path.join(tmp, "config.json"), plan.config)
        copy_side_files(plan.base.path, tmp, CONFIG_FILES[1:] + TOKENIZER_FILES)
        if card is not None:
            write_card(tmp, card)
    return out


def provenance(plan: MoEPlan) -> dict[str, str]:
    spec = json.dumps(plan.spec.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))
    models = [plan.spec.base_model] + [e.source_model for e in plan.spec.experts + (plan.spec.shared_experts or [])]
    return {"format": "pt", "surgery.version": __version__, "surgery.method": f"moe ({plan.layout.name})",
            "surgery.spec": spec, "surgery.spec_sha256": hashlib.sha256(spec.encode()).hexdigest(),
            "surgery.models": ",".join(models)}


def _producers(plan: MoEPlan, gates: torch.Tensor, shared_gates: torch.Tensor | None,
               block_bytes: int) -> dict[str, Blocks]:
    out: dict[str, Blocks] = {}
    for name in plan.base.tensors:
        if ".mlp." not in name:
            out[name] = _copied(plan.base, name, block_bytes)
    for layer in range(plan.layers):
        p, (gate, up, down) = f"model.layers.{layer}.mlp", mlp_names(layer)
        out[f"{p}.gate.weight"] = _given(gates[layer])  # (E, H)
        out[f"{p}.experts.gate_up_proj"] = _stacked(plan.experts, plan.spec.experts, (gate, up), plan.spec.seed)
        out[f"{p}.experts.down_proj"] = _stacked(plan.experts, plan.spec.experts, (down,), plan.spec.seed)
        if plan.shared:
            folder, expert = plan.shared[0], plan.spec.shared_experts[0]
            for part, source in zip(("gate", "up", "down"), (gate, up, down)):
                out[f"{p}.shared_expert.{part}_proj.weight"] = _stacked([folder], [expert], (source,), plan.spec.seed)
            out[f"{p}.shared_expert_gate.weight"] = _given(shared_gates[layer])  # (1, H)
    return out


def _given(tensor: torch.Tensor) -> Blocks:
    return lambda: iter([tensor])


def _copied(folder: ModelFolder, name: str, block_bytes: int) -> Blocks:
    return lambda: folder.blocks(name, block_bytes)


def _stacked(folders: list[ModelFolder], experts: list[Expert], names: tuple[str, ...], seed: int) -> Blocks:
    """Expert by expert, each of `names` in turn: one expert matrix in memory at a time."""
    def blocks() -> Iterator[torch.Tensor]:
        for e, (folder, expert) in enumerate(zip(folders, experts)):
            for name in names:
                yield _expert_matrix(folder.read(name).float(), expert, name, e, seed)
    return blocks


def _expert_matrix(w: torch.Tensor, expert: Expert, name: str, index: int, seed: int) -> torch.Tensor:
    """mergekit-moe's per-expert edits: Gaussian noise of std `noise_scale` (seeded by the tensor's name
    and the expert's place), and `residual_scale` on the down projection, the expert's residual output."""
    if expert.noise_scale:
        key = int.from_bytes(hashlib.sha256(f"{seed}/{name}/{index}".encode()).digest()[:8], "little")
        w = w + torch.randn(w.shape, generator=torch.Generator().manual_seed(key)) * expert.noise_scale
    if expert.residual_scale is not None and name.endswith("down_proj.weight"):
        w = w * expert.residual_scale
    return w


def moe_card(plan: MoEPlan, out: str, spec_text: str) -> Card:
    experts = [f"- expert {i}: `{e.source_model}`, prompts: {', '.join(repr(p) for p in e.positive_prompts or [])}"
               for i, e in enumerate(plan.spec.experts)]
    shared = [f"- shared expert: `{e.source_model}`" for e in plan.spec.shared_experts or []]
    details = (f"{len(plan.experts)} experts, {plan.spec.experts_per_token} per token, routers from gate mode "
               f"`{plan.spec.gate_mode}`:", *experts, *shared)
    models = tuple(dict.fromkeys(e.source_model for e in plan.spec.experts + (plan.spec.shared_experts or [])))
    return Card(os.path.basename(os.path.abspath(out)), f"mixture of experts ({plan.layout.name})",
                plan.spec.base_model, models, spec_text, details)
