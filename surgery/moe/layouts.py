"""The output architectures of a mixture of experts (the registry LAYOUTS): the config written and the
names and shapes of the MoE tensors of each layer, in transformers 5's fused expert format.

Per layer l, with E experts, hidden size H and MLP width I (every expert's MLP as the base's):

| tensor | shape | from |
|---|---|---|
| `model.layers.l.mlp.gate.weight` | (E, H) | the router rows (gates.py) |
| `model.layers.l.mlp.experts.gate_up_proj` | (E, 2I, H) | expert e's gate_proj rows, then its up_proj rows |
| `model.layers.l.mlp.experts.down_proj` | (E, H, I) | expert e's down_proj |

Qwen2-MoE adds `mlp.shared_expert.{gate,up,down}_proj.weight` (the shared expert's MLP, run on every
token) and `mlp.shared_expert_gate.weight` (1, H), whose sigmoid scales the shared expert's output.
Mixtral and Qwen2-MoE normalise the top-k routing weights to sum to one (Qwen2-MoE through
`norm_topk_prob`, set here), so identical experts give the dense model's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    name: str                       # as the card and messages say it
    sources: tuple[str, ...]        # the dense model_types it accepts
    shared: tuple[int, int]         # (fewest, most) shared experts
    config: Callable[[dict, int, int, int, bool], dict]  # (base config, experts, per token, MLP width, qkv bias)
    qkv_bias: bool                  # whether it can hold attention q/k/v biases (a Qwen2 base's)


def mixtral_config(base: dict, experts: int, per_token: int, width: int, qkv_bias: bool = False) -> dict:
    out = {k: v for k, v in base.items() if k not in DENSE_ONLY}
    return {**out, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": experts,
            "num_experts_per_tok": per_token, "sliding_window": None, "intermediate_size": width}


def qwen2_moe_config(base: dict, experts: int, per_token: int, width: int, qkv_bias: bool = False) -> dict:
    out = {k: v for k, v in base.items() if k not in DENSE_ONLY}
    return {**out, "model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"], "num_experts": experts,
            "num_experts_per_tok": per_token, "decoder_sparse_step": 1, "norm_topk_prob": True, "mlp_only_layers": [],
            "use_sliding_window": False, "sliding_window": None, "moe_intermediate_size": width,
            "shared_expert_intermediate_size": width, "intermediate_size": width, "qkv_bias": qkv_bias}


# keys of dense configs that the MoE configs do not take (or take with another meaning)
DENSE_ONLY = ("model_type", "architectures", "mlp_bias", "attention_bias", "pretraining_tp", "layer_types",
              "use_sliding_window", "max_window_layers", "auto_map")

LAYOUTS: dict[str, Layout] = {
    "mixtral": Layout("Mixtral", ("llama", "mistral"), (0, 0), mixtral_config, False),
    "qwen": Layout("Qwen2-MoE", ("llama", "mistral", "qwen2"), (1, 1), qwen2_moe_config, True),
}


def mlp_names(layer: int) -> tuple[str, str, str]:
    """A dense layer's MLP weights: gate, up, down."""
    return tuple(f"model.layers.{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down"))


def moe_shapes(layer: int, experts: int, hidden: int, width: int, shared: bool) -> list[tuple[str, tuple[int, ...]]]:
    """The MoE tensors of one layer, in the order they are written."""
    p = f"model.layers.{layer}.mlp"
    out = [(f"{p}.gate.weight", (experts, hidden)), (f"{p}.experts.gate_up_proj", (experts, 2 * width, hidden)),
           (f"{p}.experts.down_proj", (experts, hidden, width))]
    if shared:
        out += [(f"{p}.shared_expert.gate_proj.weight", (width, hidden)),
                (f"{p}.shared_expert.up_proj.weight", (width, hidden)),
                (f"{p}.shared_expert.down_proj.weight", (hidden, width)),
                (f"{p}.shared_expert_gate.weight", (1, hidden))]
    return out
