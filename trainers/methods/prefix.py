"""Prefix tuning: trained key and value vectors for `num_virtual_tokens` positions in front of the
sequence, at every attention layer; the base stays frozen (Li & Liang 2021, arXiv:2101.00190).

As in the paper, the prefixes are by default reparameterised while training: a small embedding goes
through a two-layer MLP to the keys and values of every layer, which the paper found trains more
stably than optimising them directly. Realised with PEFT's PrefixTuningConfig (`prefix_projection`).
The adapter folder holds the resulting keys and values themselves (the MLP is only a training aid),
so it loads with `PeftModel.from_pretrained` and reproduces the trained prefixes exactly.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from trainers.methods import peft_adapter
from trainers.methods.method import TrainingMethod


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="prefix length, in positions, at every layer")
    projection: bool = Field(True, description="train the prefixes through an MLP (the paper's reparameterisation)")
    projection_hidden: int = Field(512, ge=1, le=16384, description="hidden width of that MLP")


def peft_config(config: Config):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=config.num_virtual_tokens,
                              prefix_projection=config.projection, encoder_hidden_size=config.projection_hidden)


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    return peft_adapter.wrap(model, peft_config(config))


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("prefix", Config, attach, save, saves="adapter")
