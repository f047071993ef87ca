"""A tiny Llama written as a GGUF file with the `gguf` package's writer, as llama.cpp's converter
writes one: llama.cpp's tensor names, the query and key rows permuted for its rotary layout, float32
tensors (so the import must give the model back exactly) or matrices in any ggml type (`encoder`),
and a byte-level BPE tokenizer with a ChatML template in the metadata."""

from __future__ import annotations

import numpy as np
import torch

from surgery.demo.tiny import CHATML

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, as in SmolLM2
MERGES = ["Ġ t", "h e", "Ġt he"]
CONTROL, NORMAL = 3, 1  # llama.cpp's token types

# transformers' name -> llama.cpp's, within one decoder layer
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def vocabulary(extra: tuple[str, ...] = ()) -> list[str]:
    """Specials, the 256 byte symbols of byte-level BPE, one token per merge, then `extra` tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES] + list(extra)


def tiny_llama(tied: bool = False, seed: int = 0, extra: tuple[str, ...] = (), **overrides):
    """A random Llama (hidden 32, 2 layers, 4 heads, 2 key-value heads; `overrides` change the config)
    over `vocabulary(extra)`."""
    from transformers import LlamaForCausalLM

    from surgery.demo.tiny import tiny_config

    torch.manual_seed(seed)
    config = tiny_config("llama", vocab_size=len(vocabulary(extra)), tie_word_embeddings=tied,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, **overrides)
    return LlamaForCausalLM(config).eval()


# The float16 scale fields of each K-quant block (byte offsets), which random bytes must keep finite.
SCALE_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def encoder(qtype: str, seed: int = 0):
    """`encode(name, array)` for `write_gguf`: matrices in ggml type `qtype` (quantized by the gguf
    package where it can, else random blocks with small finite scales), vectors in F32, as llama.cpp."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    kind = GGMLQuantizationType[qtype]
    rng = np.random.default_rng(seed)

    def encode(name: str, array: np.ndarray):
        if array.ndim < 2:
            return array, None
        try:
            return quantize(array, kind), kind
        except NotImplementedError:
            return random_blocks(kind, array.shape, rng), kind
    return encode


def random_blocks(kind, shape: tuple[int, ...], rng) -> np.ndarray:
    """Raw blocks of `kind` for a tensor of `shape`: random codes, scales between 1e-3 and 1e-2."""
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, size=(*shape[:-1], shape[-1] // block, size), dtype=np.uint8)
    for offset in SCALE_FIELDS.get(kind.name, ()):
        scales = rng.uniform(1e-3, 1e-2, size=raw.shape[:-1]).astype(np.float16)
        raw[..., offset:offset + 2] = scales[..., None].view(np.uint8).reshape(*raw.shape[:-1], 2)
    return raw.reshape(*shape[:-1], -1)


def permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's rotary layout: each head's rows (2, d/2) become (d/2, 2), interleaving the halves."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model) -> dict[str, np.ndarray]:
    c = model.config
    out = {}
    for name, t in model.state_dict().items():
        t = t.float()
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = t
        elif name == "model.norm.weight":
            out["output_norm.weight"] = t
        elif name == "lm_head.weight":
            if not c.tie_word_embeddings:
                out["output.weight"] = t
        else:
            _, _, layer, rest = name.split(".", 3)  # model.layers.{i}.{module}.weight
            module = rest.removesuffix(".weight")
            if module == "self_attn.q_proj":
                t = permute(t, c.num_attention_heads)
            elif module == "self_attn.k_proj":
                t = permute(t, c.num_key_value_heads)
            out[f"blk.{layer}.{LAYER_NAMES[module]}.weight"] = t
    return {k: v.contiguous().numpy() for k, v in out.items()}


def write_gguf(path, model, drop: tuple[str, ...] = (), encode=None, extra: tuple[str, ...] = ()) -> str:
    """Write `model` (a transformers Llama over `vocabulary(extra)`) to the GGUF file `path`, without
    the tensors named in `drop`, each tensor as `encode(name, array)` gives it (default float32)."""
    from gguf import GGUFWriter

    c = model.config
    w = GGUFWriter(str(path), "llama")
    w.add_string("general.name", "tiny-llama")
    for key, value in {"context_length": c.max_position_embeddings, "embedding_length": c.hidden_size,
                       "block_count": c.num_hidden_layers, "feed_forward_length": c.intermediate_size,
                       "attention.head_count": c.num_attention_heads, "attention.head_count_kv": c.num_key_value_heads,
                       "rope.dimension_count": c.hidden_size // c.num_attention_heads,
                       "vocab_size": c.vocab_size}.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.rope.freq_base", rope_theta(c))
    w.add_float32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    add_tokenizer(w, extra)
    for name, array in gguf_tensors(model).items():
        if name not in drop:
            data, raw_dtype = encode(name, array) if encode else (array, None)
            w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None)  # transformers 5; 4 has config.rope_theta
    return parameters["rope_theta"] if parameters else config.rope_theta


def add_tokenizer(w, extra: tuple[str, ...] = ()) -> None:
    tokens = vocabulary(extra)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [CONTROL if t in SPECIALS or t in extra else NORMAL for t in tokens])
    w.add_array("tokenizer.ggml.merges", MERGES)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_uint32("tokenizer.ggml.padding_token_id", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.chat_template", CHATML)


def write_header_only(path, architecture: str) -> str:
    """A valid GGUF file with no tensors, claiming `architecture`."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), architecture)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def lie_about_rows(src, dst, tensor: str = "token_embd.weight") -> str:
    """A copy of the GGUF file `src` whose header doubles `tensor`'s row count (its outer dimension)."""
    data = bytearray(open(src, "rb").read())
    name = tensor.encode()
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)  # then n_dims (uint32), dims
    n_dims = int.from_bytes(data[at:at + 4], "little")
    outer = at + 4 + 8 * (n_dims - 1)
    rows = int.from_bytes(data[outer:outer + 8], "little")
    data[outer:outer + 8] = (rows * 2).to_bytes(8, "little")
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return str(dst)
