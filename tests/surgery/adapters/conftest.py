"""Adapters made by PEFT itself on the tiny models, with every trainable value perturbed (so no
factor is zero and no IA3 vector is all ones), and PEFT's own answers to compare ours with: the
weights of `merge_and_unload()` and the logits of the model with the adapter active."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file

from surgery.adapters.fold_plan import plan_fold
from surgery.merge.engine import Options, run_merge

TOKENS = torch.tensor([[5, 17, 42, 3, 99, 120, 7, 64, 1, 30], [12, 0, 77, 101, 4, 56, 90, 2, 11, 127]])
SMALL_BLOCKS = Options(block_bytes=2048)  # a few rows per block: every folded weight is read in several blocks


@pytest.fixture(autouse=True)
def keep_sigterm():
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def load_base(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def save_adapter(base: str, config, folder: str, seed: int = 1, noise: float = 0.3) -> str:
    """PEFT wraps `base` with `config`; every trainable tensor gets seeded N(0, noise) added; saved to `folder`."""
    from peft import get_peft_model

    model = get_peft_model(load_base(base), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * noise)
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def adapter(tmp_path):
    """adapter(base, peft_config, name='adapter', seed=1) -> folder of an adapter saved by PEFT."""
    def make(base: str, config, name: str = "adapter", seed: int = 1) -> str:
        return save_adapter(base, config, str(tmp_path / name), seed)
    return make


def peft_reference(base: str, adapters: list[str], weights: list[float] | None = None):
    """PEFT's (merged state dict, logits with the adapters active) for `adapters` loaded on `base`.
    Weights scale each LoRA adapter's `scaling`, PEFT's own factor on B @ A."""
    from peft import PeftModel

    names = [f"a{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(load_base(base), adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    for name, w in zip(names, weights or [1.0] * len(adapters)):
        for module in model.modules():
            if w != 1.0 and isinstance(getattr(module, "scaling", None), dict) and name in module.scaling:
                module.scaling[name] *= w
    model.base_model.set_adapter(names)
    model.eval()
    with torch.no_grad():
        logits = model(TOKENS).logits
    merged = model.merge_and_unload(adapter_names=names)
    if (getattr(merged.config, "tie_word_embeddings", False)
            and any("wte" in a or "embed" in a for a in _targets(model))):
        # A LoRA on a tied embedding: PEFT's active adapter leaves the tied output head alone, while its
        # merge (like ours) changes the one shared matrix; the merged model is then the only oracle.
        with torch.no_grad():
            logits = merged(TOKENS).logits
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}, logits


def _targets(model) -> list[str]:
    return [str(t) for c in model.peft_config.values() for t in (c.target_modules or [])]


def fold_to(base: str, adapters: list[str], out: str, weights: list[float] = (),
            options: Options = SMALL_BLOCKS) -> str:
    """Our fold, through the engine, in small blocks; returns the output folder."""
    return run_merge(plan_fold(base, adapters, weights), out, options)


def logits_of(folder: str) -> torch.Tensor:
    with torch.no_grad():
        return load_base(folder)(TOKENS).logits


def folded_state(folder: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.fixture(scope="session")
def reference():
    """reference(base, adapters, weights=None) -> (PEFT's merged state dict, PEFT's logits)."""
    return peft_reference


@pytest.fixture
def fold(tmp_path):
    """fold(base, adapters, weights=(), name='folded') -> (our folded state dict, our logits, folder)."""
    def run(base: str, adapters: list[str], weights: list[float] = (), name: str = "folded"):
        out = fold_to(base, adapters, str(tmp_path / name), weights)
        return folded_state(out), logits_of(out), out
    return run


@pytest.fixture(scope="session")
def llama_lora(llama, tmp_path_factory) -> str:
    """A LoRA made by PEFT on the tiny Llama: r=4 on q_proj and v_proj, lm_head in modules_to_save."""
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"],
                        init_lora_weights=False)
    return save_adapter(llama["base"], config, str(tmp_path_factory.mktemp("llama_lora") / "adapter"))


@pytest.fixture
def edited(llama_lora, tmp_path):
    """edited(tensors=fn(dict) -> dict, config=fn(dict) -> dict) -> a changed copy of `llama_lora`."""
    def make(tensors=None, config=None, name: str = "edited") -> str:
        folder = str(tmp_path / name)
        shutil.copytree(llama_lora, folder)
        weights = os.path.join(folder, "adapter_model.safetensors")
        if tensors:
            save_file(tensors(load_file(weights)), weights)
        if config:
            file = os.path.join(folder, "adapter_config.json")
            with open(file) as f:
                data = json.load(f)
            with open(file, "w") as f:
                json.dump(config(data), f)
        return folder
    return make
