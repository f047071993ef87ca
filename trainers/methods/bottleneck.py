"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP",
arXiv:1902.00751): a small module added after the attention and after the feed-forward sublayer of
every decoder layer, h + up(f(down(h))), down (size, hidden) and up (hidden, size), applied to the
sublayer's output before the layer adds its residual. Only the adapters train.

The up-projection starts at zero, so the model starts exactly as the base (the paper starts near
the identity). No maintained library supports these adapters on current transformers, so they are
implemented here: each adapter is a child module `bottleneck` of its sublayer (the base's weights
keep their names), applied by a forward hook on that sublayer. The result is our own folder:
bottleneck_model.safetensors (the adapter tensors) and bottleneck_config.json; `load` rebuilds the
adapted model from the base and that folder.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from surgery.errors import InputError, SpecError
from surgery.io.output import write_json
from trainers.methods.method import TrainingMethod

NAME = "bottleneck"  # the adapter's child name in its sublayer
WEIGHTS_FILE = "bottleneck_model.safetensors"
CONFIG_FILE = "bottleneck_config.json"
SUBLAYERS = {"attention": ("self_attn", "attn", "attention", "self_attention"),  # Llama/Qwen2/Mistral, GPT-2, ...
             "feed_forward": ("mlp", "feed_forward", "ffn")}
NON_LINEARITIES = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(64, ge=1, le=16384, description="bottleneck width (the paper's m; hidden size in and out)")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field("silu", description="between down and up projection")
    where: list[Literal["attention", "feed_forward"]] = Field(
        ["attention", "feed_forward"], min_length=1, description="after which sublayers of every decoder layer")


class Bottleneck(torch.nn.Module):
    """h + up(f(down(h))), computed in float32 whatever the base's dtype."""

    def __init__(self, hidden: int, size: int, non_linearity: str):
        super().__init__()
        self.down = torch.nn.Linear(hidden, size)
        self.act = NON_LINEARITIES[non_linearity]()
        self.up = torch.nn.Linear(size, hidden)
        torch.nn.init.zeros_(self.up.weight)  # the adapter starts as the identity
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = h.to(self.down.weight.dtype)
        return h + self.up(self.act(self.down(x))).to(h.dtype)  # (B, T, size) inside


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    hidden = model.config.hidden_size
    for sublayer in sublayers(model, config.where):
        if hasattr(sublayer, NAME):
            raise InputError(f"{type(model).__name__} already carries bottleneck adapters; attach them to a plain base")
        device = next(sublayer.parameters()).device
        sublayer.add_module(NAME, Bottleneck(hidden, config.size, config.non_linearity).to(device))
        sublayer.register_forward_hook(apply_adapter)
    return model


def apply_adapter(sublayer: torch.nn.Module, args, output):
    """Attention returns (hidden, weights); a feed-forward returns hidden."""
    adapter = getattr(sublayer, NAME)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def sublayers(model: torch.nn.Module, where: list[str]) -> list[torch.nn.Module]:
    """The attention and/or feed-forward module of every decoder layer, in order."""
    found = []
    for index, layer in enumerate(decoder_layers(model)):
        for kind in where:
            names = [n for n in SUBLAYERS[kind] if isinstance(getattr(layer, n, None), torch.nn.Module)]
            if not names:
                raise SpecError("run spec", "method.where", f"decoder layer {index} ({type(layer).__name__}) has no "
                                f"{kind} sublayer named {' or '.join(SUBLAYERS[kind])}; this architecture is not "
                                "supported by bottleneck adapters, use a PEFT method such as lora")
            found.append(getattr(layer, names[0]))
    return found


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The longest ModuleList of the model: `model.layers` (Llama), `transformer.h` (GPT-2)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise SpecError("run spec", "method.name", f"{type(model).__name__} has no list of decoder layers to put "
                        "bottleneck adapters in; use a PEFT method such as lora")
    return max(lists, key=len)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t for name, t in model.state_dict().items() if f".{NAME}." in name}


def save(model, folder: str, config: Config) -> None:
    from safetensors.torch import save_file

    state = adapter_state(model)
    if not state:
        raise InputError(f"{type(model).__name__} has no bottleneck adapters to save: attach them first")
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, os.path.join(folder, WEIGHTS_FILE),
              metadata={"format": "pt"})
    write_json(os.path.join(folder, CONFIG_FILE), {
        "method": "bottleneck", "config": config.model_dump(mode="json"), "hidden_size": model.config.hidden_size,
        "base_model_name_or_path": getattr(model.config, "_name_or_path", None)})


def read_config(adapter_folder: str) -> Config:
    path = os.path.join(adapter_folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{adapter_folder}: not a bottleneck adapter folder (no {CONFIG_FILE}); "
                         "pass the folder a bottleneck run saved (its final/ or checkpoint-N/)")
    with open(path) as f:
        saved = json.load(f)
    try:
        return Config.model_validate(saved.get("config"))
    except ValidationError as e:
        raise InputError(f"{path}: the config does not validate ({e.errors()[0]['msg']})") from None


def load(base_path: str, adapter_folder: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The base with the saved adapters in place, in eval mode, for inference."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    config = read_config(adapter_folder)
    model = attach(AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype), config)
    saved = load_file(os.path.join(adapter_folder, WEIGHTS_FILE))
    expected = adapter_state(model)
    if saved.keys() != expected.keys() or any(saved[k].shape != expected[k].shape for k in saved):
        wrong = sorted(saved.keys() ^ expected.keys()) or [k for k in saved if saved[k].shape != expected[k].shape]
        raise InputError(f"{adapter_folder}: its adapters do not fit the base {base_path!r} ({wrong[:3]}); "
                         "load it on the base it was trained from")
    model.load_state_dict(saved, strict=False)
    return model.eval()


METHOD = TrainingMethod("bottleneck", Config, attach, save, saves="adapter")
