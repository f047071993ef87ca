"""LoRA: W' = W + sum_i scale_i * B_i @ A_i, on rows [r0, r1) of the stored weight.

LoRA: Hu et al. 2021, arXiv:2106.09685; scale = alpha / r, or alpha / sqrt(r) with rsLoRA
(Kalajdzievski 2023, arXiv:2312.03732). A weight stored (in, out) (GPT-2's Conv1D with
`fan_in_fan_out`, and embeddings, whose delta is A^T B^T) takes the transposed product. This kind
also reads and maps DoRA adapters (`use_dora`, a LoRA with a magnitude vector), which `dora` folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from surgery.adapters.config import AdapterConfig, names, number, positive, targets
from surgery.adapters.kinds.kind import Kind, Step, one_at_a_time
from surgery.adapters.mapping import Adapter, Delta, check_shape, map_bias, need, part_shape, stored_transposed
from surgery.errors import InputError

Factor = tuple[torch.Tensor, torch.Tensor, float]  # (A (r, in), B (out, r), scale), float32
# Options that change the forward pass beyond W + scale * B @ A; set to anything truthy, we refuse.
UNFOLDABLE = ("layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens",
              "use_qalora", "use_bdlora", "velora_config", "monteclora_config", "kasa_config", "arrow_config",
              "megatron_config")


# ---- the maths ----------------------------------------------------------------------------------

def _factors(A: torch.Tensor, B: torch.Tensor, rows: tuple[int, int],
             transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The two matrices whose product is rows [r0, r1) of B @ A, or of (B @ A)^T when stored (in, out)."""
    r0, r1 = rows
    if transposed:
        return A[:, r0:r1].T, B.T  # (r1 - r0, r) @ (r, out)
    return B[r0:r1], A  # (r1 - r0, r) @ (r, in)


def delta_rows(A: torch.Tensor, B: torch.Tensor, rows: tuple[int, int], transposed: bool) -> torch.Tensor:
    """Rows [r0, r1) of B @ A, or of (B @ A)^T when the weight is stored (in, out)."""
    left, right = _factors(A, B, rows, transposed)
    return left @ right


def fold(w: torch.Tensor, rows: tuple[int, int], factors: Sequence[Factor], transposed: bool) -> torch.Tensor:
    """Rows [r0, r1) of the weight with every adapter of `factors` added (weights already in each scale)."""
    out = w.to(torch.float32, copy=True)  # (r1 - r0, cols): the one block-sized buffer; the caller's is untouched
    for A, B, scale in factors:
        left, right = _factors(A, B, rows, transposed)
        out.addmm_(left, right, alpha=scale)  # no delta-sized temporary
    return out


def fold_bias(bias: torch.Tensor, lora_bias: torch.Tensor, scale: float) -> torch.Tensor:
    """A LoRA with `lora_bias` also adds scale * B's bias to the base bias (out,)."""
    return bias.float() + scale * lora_bias.float()


def _fold_steps(w: torch.Tensor, rows: tuple[int, int], steps: Sequence[Step]) -> torch.Tensor:
    """Consecutive LoRA adapters of one orientation fold in one call: one float32 copy of the block for all."""
    return fold(w, rows, [(s["A"], s["B"], s.delta.scale) for s in steps], steps[0].delta.transposed)


# ---- config and mapping -------------------------------------------------------------------------

def read_config(path: str, file: str, raw: dict) -> AdapterConfig:
    for key in UNFOLDABLE:
        if raw.get(key):
            raise InputError(f"{file}: {key}: set to {raw[key]!r}, which changes the forward pass in a way a "
                             "folded weight cannot express; fold an adapter trained without it")
    r, alpha = number(file, raw, "r", int), number(file, raw, "lora_alpha", float)
    ranks = {k: positive(file, f"rank_pattern.{k}", v, int) for k, v in (raw.get("rank_pattern") or {}).items()}
    alphas = {k: positive(file, f"alpha_pattern.{k}", v, float) for k, v in (raw.get("alpha_pattern") or {}).items()}
    return AdapterConfig(path, "LORA", r, alpha, bool(raw.get("use_rslora")), bool(raw.get("use_dora")),
                         bool(raw.get("lora_bias")), bool(raw.get("fan_in_fan_out")), ranks, alphas,
                         targets(raw), names(raw.get("modules_to_save")))


def _checked_factors(adapter: Adapter, module: str, parts: dict[str, str], a: str, b: str) -> tuple[tuple, tuple]:
    """The shapes of A (r, in) and B (out, r), checked against each other and the config's rank."""
    need(adapter, module, parts, a, b)
    A, B = part_shape(adapter, parts[a]), part_shape(adapter, parts[b])
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
    return A, B


def map_module(adapter: Adapter, base, module: str, parts: dict[str, str], target: str, shared: dict[str, str]) -> None:
    embedding = "embedding_A" in parts or "embedding_B" in parts
    a, b = ("embedding_A", "embedding_B") if embedding else ("A", "B")
    A, B = _checked_factors(adapter, module, parts, a, b)
    W = base.tensors[target].shape
    transposed = embedding or stored_transposed(adapter, module, W, (B[0], A[1]), parts[a])
    scale = adapter.config.lora_scale(module) * adapter.weight
    dora = "magnitude" in parts  # DoRA: one magnitude per output feature
    if dora:
        check_shape(adapter, module, parts["magnitude"], (W[1] if transposed else W[0],))
    parts = {**parts, "A": parts[a], "B": parts[b]}  # an embedding's factors fold the same way, transposed
    adapter.deltas[target] = Delta("dora" if dora else "lora", module, parts, scale, transposed)
    if "bias" in parts:
        map_bias(adapter, base, module, parts, "lora_bias", (B[0],), scale)


def describe(config: AdapterConfig) -> dict:
    patterns = (("rank_pattern", config.rank_pattern), ("alpha_pattern", config.alpha_pattern))
    return {"alpha": config.alpha, **{k: v for k, v in patterns if v}}


KIND = Kind("lora", "LoRA", {"lora": _fold_steps, "lora_bias": one_at_a_time(
    lambda w, rows, s: fold_bias(w, s["bias"], s.delta.scale))}, peft_type="LORA", read_config=read_config,
    map_module=map_module, describe=describe)
