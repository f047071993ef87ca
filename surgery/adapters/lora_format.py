"""PEFT's on-disk LoRA adapter: tensor names in `adapter_model.safetensors` and the fields of
`adapter_config.json`, as `PeftModel.from_pretrained` reads them (peft >= 0.14).

Names are the module's name behind `base_model.model.` plus the factor's name, the adapter name
left out. Shapes (r = the module's rank):
  linear     `lora_A.weight` (r, in), `lora_B.weight` (out, r); ΔW = B @ A          W (out, in)
  conv1d     the same names; GPT-2's Conv1D stores W (in, out), so ΔW = (B @ A)ᵀ (fan_in_fan_out)
  embedding  `lora_embedding_A` (r, vocab), `lora_embedding_B` (dim, r); ΔE = (B @ A)ᵀ  E (vocab, dim)
A module in `modules_to_save` is stored whole under its own names (`base_model.model.model.norm.weight`).
"""

from __future__ import annotations

from collections import Counter

PREFIX = "base_model.model."
FACTOR_NAMES = {
    "linear": ("lora_A.weight", "lora_B.weight"),
    "conv1d": ("lora_A.weight", "lora_B.weight"),
    "embedding": ("lora_embedding_A", "lora_embedding_B"),
}
TRANSPOSED = ("conv1d", "embedding")  # kinds whose stored weight is (B @ A)ᵀ


def factor_keys(module: str, kind: str) -> tuple[str, str]:
    """The adapter file's names of a module's A and B factors."""
    a, b = FACTOR_NAMES[kind]
    return f"{PREFIX}{module}.{a}", f"{PREFIX}{module}.{b}"


def saved_key(tensor: str) -> str:
    """The adapter file's name of a tensor of a module in modules_to_save."""
    return PREFIX + tensor


def adapter_config(ranks: dict[str, int], kinds: dict[str, str], saved: list[str], base: str,
                   task_type: str | None) -> dict:
    """adapter_config.json: one LoRA per module in `ranks`, scaling lora_alpha / r = 1 for every module.

    `r` is the most common rank; modules of other ranks go in rank_pattern, with alpha_pattern equal
    to their rank. Target modules are full module names, so no other module is wrapped."""
    r = _common_rank(ranks)
    pattern = {m: k for m, k in sorted(ranks.items()) if k != r}
    return {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base,
        "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks), "modules_to_save": sorted(saved) or None,
        "fan_in_fan_out": any(kinds[m] == "conv1d" for m in ranks), "bias": "none",
        "lora_dropout": 0.0, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True,
    }


def _common_rank(ranks: dict[str, int]) -> int:
    """The most frequent rank (the larger on a tie); 1 for an adapter with no LoRA module."""
    counts = Counter(ranks.values())
    return max(counts, key=lambda k: (counts[k], k)) if counts else 1
