"""The architectures GGUF files are read as and written from: llama.cpp's names, tensor names and row
layout on one side, Hugging Face's on the other.

One entry per llama.cpp architecture, keyed by `general.architecture`. `rotary_rows` marks the
architectures whose query and key rows llama.cpp's converter permutes (`LlamaModel.permute` in
convert_hf_to_gguf.py): each head's rows, stored by transformers as two halves (2, d/2) for its
rotate-half rotary embedding, are interleaved as pairs (d/2, 2), the layout of llama.cpp's rope.
transformers' GGUF loader undoes it (`LlamaTensorProcessor`) for the same architectures, so reading
and writing here do what those two do.

Tensor names come from the `gguf` package's `TensorNameMap` (what both converters use), applied to
the names of the Hugging Face model the config describes, built on the meta device (no memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.errors import InputError


@dataclass(frozen=True)
class Architecture:
    gguf: str                  # general.architecture
    model_types: tuple[str, ...]  # the transformers model_type(s) written as this architecture
    rotary_rows: bool          # query and key rows permuted into llama.cpp's rope layout
    vocab_size_key: bool       # llama.cpp's converter writes `{arch}.vocab_size`
    rope_dimension_key: bool   # ... and `{arch}.rope.dimension_count` (the head size)


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", ("llama", "mistral"), rotary_rows=True, vocab_size_key=True,
                          rope_dimension_key=True),
    "qwen2": Architecture("qwen2", ("qwen2",), rotary_rows=False, vocab_size_key=False, rope_dimension_key=False),
    "qwen3": Architecture("qwen3", ("qwen3",), rotary_rows=False, vocab_size_key=False, rope_dimension_key=False),
}
BY_MODEL_TYPE = {t: a for a in ARCHITECTURES.values() for t in a.model_types}
ROTARY_TENSORS = ("attn_q", "attn_k")  # llama.cpp's names of the permuted tensors (weights and biases)


def architecture(name: str, path: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise InputError(f"{path}: GGUF architecture {name!r} is not supported (general.architecture); "
                         f"supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def for_model_type(model_type: str, where: str) -> Architecture:
    if model_type not in BY_MODEL_TYPE:
        raise InputError(f"{where}: model_type {model_type!r} cannot be written as GGUF; supported: "
                         f"{', '.join(BY_MODEL_TYPE)} (convert it with llama.cpp's convert_hf_to_gguf.py instead)")
    return BY_MODEL_TYPE[model_type]


def hf_names(config: dict) -> list[str]:
    """The state-dict names of the causal LM `config` describes (built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **settings))
    return list(model.state_dict())


def name_map(arch: Architecture, config: dict) -> dict[str, str]:
    """Hugging Face name -> GGUF name for every tensor of the model that llama.cpp names."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch_id = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch.gguf)
    names = get_tensor_name_map(arch_id, config["num_hidden_layers"])
    out = {}
    for hf in hf_names(config):
        stem, dot, suffix = hf.rpartition(".")
        gguf = names.get_name(stem) if suffix in ("weight", "bias") else None
        if gguf is not None:
            out[hf] = f"{gguf}.{suffix}"
    return out


def rotary_heads(arch: Architecture, gguf_name: str, config: dict) -> int:
    """Heads whose rows are permuted in this tensor (0: none), as transformers' loader counts them."""
    if not arch.rotary_rows or gguf_name.split(".")[-2] not in ROTARY_TENSORS:
        return 0
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if heads is None or kv_heads is None:
        return 0
    return heads if gguf_name.split(".")[-2] == "attn_q" else kv_heads


def to_rotary(rows: torch.Tensor, head_rows: int) -> torch.Tensor:
    """Hugging Face rows, whole heads of `head_rows` rows each, (heads, 2, d/2, ...) -> llama.cpp's
    (heads, d/2, 2, ...)."""
    shape = rows.shape
    return rows.reshape(-1, 2, head_rows // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def from_rotary(rows: torch.Tensor, head_rows: int) -> torch.Tensor:
    """llama.cpp's rows (heads, d/2, 2, ...) -> Hugging Face's (heads, 2, d/2, ...); whole heads."""
    shape = rows.shape
    return rows.reshape(-1, head_rows // 2, 2, *shape[1:]).transpose(1, 2).reshape(shape)
