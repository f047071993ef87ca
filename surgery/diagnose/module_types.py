"""The role of a tensor in a transformer, from its name: q, k, v, o, gate, up, down, embed, norm,
head, ... across Llama-style (`self_attn.q_proj`), GPT-2 (`attn.c_attn`, `mlp.c_fc`) and a few other
naming schemes. Used to group diagnostics by module type."""

from __future__ import annotations

from surgery.merge.layers import PRE_MARKERS

# module name (the part before `.weight`/`.bias`) -> type
BY_MODULE = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "query": "q", "key": "k", "value": "v",
    "wq": "q", "wk": "k", "wv": "v", "wo": "o", "out_proj": "o", "dense": "o",
    "qkv_proj": "qkv", "c_attn": "qkv", "query_key_value": "qkv", "Wqkv": "qkv",
    "gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "c_fc": "up", "fc1": "up",
    "down_proj": "down", "w2": "down", "fc2": "down", "gate_up_proj": "gate_up", "lm_head": "head",
}
ORDER = ("embed", "q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down", "norm", "head")


def module_type(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'q'; GPT-2's c_proj is 'o' in attn, 'down' in mlp."""
    parts = name.split(".")
    module = parts[-2] if len(parts) > 1 else parts[-1]
    if module == "c_proj":
        return "down" if "mlp" in parts else "o"
    if module in BY_MODULE:
        return BY_MODULE[module]
    if any(m in module for m in PRE_MARKERS):
        return "embed"
    if "norm" in module or module.startswith("ln"):
        return "norm"
    return module


def type_order(types: set[str]) -> list[str]:
    """Known types in their place in a block, then the others alphabetically."""
    return [t for t in ORDER if t in types] + sorted(types - set(ORDER))
