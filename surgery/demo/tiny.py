"""Tiny random causal LMs built locally (no downloads): the demo's models and the tests' fixtures.

A "fine-tune" is the base plus a seeded perturbation, so task vectors are small and distinct, as
real ones are. Each folder is a normal Hugging Face model folder with a word-level tokenizer and a
ChatML chat template, so `AutoModelForCausalLM` and `AutoTokenizer` load it.
"""

from __future__ import annotations

import os

import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("the a of to and in is it you that he was for on are with as I his they be at one have this from "
         "or had by hot word but what some we can out other were all there when up use your how said an each "
         "she which do their time if will way about many then them write would like so these her long make "
         "thing see him two has look more day could go come did number sound no most people my over know water "
         "than call first who may down side been now find any new work part take get place made live where "
         "after").split()


def tiny_config(kind: str = "llama", **overrides):
    """A transformers config of a tiny model: kind is llama, qwen2, mistral, granite or gpt2."""
    from transformers import GPT2Config, GraniteConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=128, tie_word_embeddings=False)
    if kind == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2,
                         **{**common, "tie_word_embeddings": True})
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig, "granite": GraniteConfig}[kind]
        cfg = cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, **common)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def build_tokenizer(vocab_size: int = 128):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {w: i for i, w in enumerate(specials + [w for w in WORDS][: vocab_size - len(specials)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def build_model(folder: str, kind: str = "llama", seed: int = 0, base: str | None = None, scale: float = 0.02,
                dtype: torch.dtype = torch.float32, shard_size: str | None = None, **overrides) -> str:
    """Save a tiny model in `folder`: random (seed) or, given `base`, base + scale * N(0, 1) noise."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if base is None:
        model = AutoModelForCausalLM.from_config(tiny_config(kind, **overrides))
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * (scale * p.abs().mean().clamp(min=1e-3)))  # ~2% relative
    model = model.to(dtype)
    os.makedirs(folder, exist_ok=True)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(folder, **kwargs)
    build_tokenizer(model.config.vocab_size).save_pretrained(folder)
    return folder


def build_family(root: str, kind: str = "llama", names: tuple[str, ...] = ("math", "code", "chat"),
                 **kw) -> dict[str, str]:
    """A base and fine-tunes of it under `root`: {'base': path, 'math': path, ...}."""
    out = {"base": build_model(os.path.join(root, "base"), kind, seed=0, **kw)}
    for i, name in enumerate(names, start=1):
        out[name] = build_model(os.path.join(root, name), kind, seed=i, base=out["base"],
                                **{k: v for k, v in kw.items() if k in ("dtype", "shard_size")})
    return out
