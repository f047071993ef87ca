"""A model's configuration between GGUF metadata and a Hugging Face `config.json`, both ways.

Reading follows transformers' GGUF loader (`load_gguf_checkpoint` in modeling_gguf_pytorch_utils.py)
with its own key tables (`GGUF_CONFIG_MAPPING`), over the metadata our header parser already holds:
transformers' path re-reads the whole file with `gguf.GGUFReader`, which takes tens of seconds on a
49k-token vocabulary. Writing gives the keys llama.cpp's `convert_hf_to_gguf.py` writes for the
architectures of `surgery.io.gguf_arch` (block count, widths, heads, rope base, norm epsilon, the
head size where it is not hidden / heads, and `vocab_size` and `rope.dimension_count` for llama).
"""

from __future__ import annotations

from surgery.errors import InputError
from surgery.io.gguf_arch import Architecture
from surgery.io.gguf_format import STRING, Typed

U32, F32 = 4, 6  # GGUF value types
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType for each --quant
QUANTIZATION_VERSION = 2  # ggml's block formats as of the K-quants (general.quantization_version)


def hf_config(metadata: dict, tensor_names, path: str):
    """The transformers config (a `PretrainedConfig`) of a GGUF file, as `AutoConfig.from_pretrained(...,
    gguf_file=...)` builds it."""
    from transformers import AutoConfig
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    arch = metadata["general.architecture"]
    # transformers reads llama files named exactly "mistral" as Mistral (`"mistral" in [general.name]`)
    updated = "mistral" if "llama" in arch and metadata.get("general.name") == "mistral" else arch
    config: dict = {"tie_word_embeddings": "output.weight" not in tensor_names}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(updated, GGUF_CONFIG_DEFAULTS_MAPPING.get(arch) or {}).items():
        config.setdefault(key, value)
    for key, value in metadata.items():
        prefix, _, rest = key.replace(arch, updated).partition(".")
        renamed = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if renamed is None or renamed == -1:
            continue
        value = value[0] if isinstance(value, list) and len(value) == 1 else value
        config[renamed] = value.replace(arch, updated) if isinstance(value, str) and arch in value else value
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in metadata:
        config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
    try:
        built = AutoConfig.for_model(**config)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: transformers cannot build a config from this file's metadata ({e})") from None
    return built


def rope_theta(config: dict, where: str) -> float:
    """The rotary base, refusing the scaled variants llama.cpp would need more keys (or tensors) for."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise InputError(f"{where}: rope_type {kind!r} is not written to GGUF here (only the default rotary "
                         "embedding); convert this model with llama.cpp's convert_hf_to_gguf.py")
    theta = rope.get("rope_theta", config.get("rope_theta"))
    if theta is None:
        raise InputError(f"{where}: config.json gives no rope_theta; the GGUF file needs its rotary base")
    return float(theta)


def hyperparameters(config: dict, arch: Architecture, quant: str, name: str, where: str) -> dict[str, Typed]:
    """The `general.*` and `{arch}.*` keys of a GGUF file for this config and output type."""
    a = arch.gguf
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    keys = {
        "general.architecture": Typed(STRING, a), "general.type": Typed(STRING, "model"),
        "general.name": Typed(STRING, name),
        f"{a}.block_count": Typed(U32, config["num_hidden_layers"]),
        f"{a}.context_length": Typed(U32, config["max_position_embeddings"]),
        f"{a}.embedding_length": Typed(U32, hidden),
        f"{a}.feed_forward_length": Typed(U32, config["intermediate_size"]),
        f"{a}.attention.head_count": Typed(U32, heads),
        f"{a}.attention.head_count_kv": Typed(U32, config.get("num_key_value_heads") or heads),
        f"{a}.rope.freq_base": Typed(F32, rope_theta(config, where)),
        f"{a}.attention.layer_norm_rms_epsilon": Typed(F32, float(config["rms_norm_eps"])),
        "general.file_type": Typed(U32, FILE_TYPES[quant]),
        "general.quantization_version": Typed(U32, QUANTIZATION_VERSION),
    }
    if head_dim != hidden // heads:  # llama.cpp assumes hidden / heads otherwise
        keys[f"{a}.attention.key_length"] = Typed(U32, head_dim)
        keys[f"{a}.attention.value_length"] = Typed(U32, head_dim)
    if arch.vocab_size_key:
        keys[f"{a}.vocab_size"] = Typed(U32, config["vocab_size"])
    if arch.rope_dimension_key:
        keys[f"{a}.rope.dimension_count"] = Typed(U32, head_dim)
    return keys
