"""Partial fine-tuning: the first `layers` decoder layers (and optionally the embeddings) stay frozen,
everything above them trains; the result is a Hugging Face model folder."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from surgery.errors import SpecError
from trainers.methods.method import TrainingMethod


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: int = Field(1, ge=0, description="how many decoder layers, counted from the input, stay frozen")
    embeddings: bool = Field(True, description="freeze the input embeddings too")


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    blocks = decoder_layers(model)
    if config.layers > len(blocks):
        raise SpecError("run spec", "method.layers", f"the model has {len(blocks)} decoder layers; "
                        f"cannot freeze {config.layers} (choose 0 to {len(blocks)})")
    frozen = {id(p) for block in blocks[: config.layers] for p in block.parameters()}
    if config.embeddings:
        frozen |= {id(p) for p in model.get_input_embeddings().parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)  # a tied lm_head shares the embedding's tensor, so it follows it
    return model


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of decoder layers: the longest ModuleList in the model (`model.layers`, `transformer.h`)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise SpecError("run spec", "method.name", f"{type(model).__name__} has no list of decoder layers; "
                        "use method 'full' or a PEFT method")
    return max(lists, key=len)


def save(model, folder: str, config: Config) -> None:
    model.save_pretrained(folder)


METHOD = TrainingMethod("freeze", Config, attach, save, saves="model")
