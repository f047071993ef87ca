"""LoRA: each adapted weight W (out, in) trains as W + (alpha / r) * B A, with A (r, in) random and
B (out, r) zero, so training starts from the base model (Hu et al. 2021, arXiv:2106.09685).

Realised with PEFT's LoraConfig; the result is a PEFT adapter folder. On GPT-2 style models, whose
weights are Conv1D (in, out), `fan_in_fan_out` is set for PEFT so the product is transposed to match.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from trainers.methods import peft_adapter
from trainers.methods.method import TrainingMethod
from trainers.methods.peft_adapter import TARGETS_HELP, Targets


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1, le=1024, description="rank of the update B A")
    alpha: float = Field(16, gt=0, le=8192,
                         description="the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: Targets = Field(peft_adapter.ALL_LINEAR, description=TARGETS_HELP)
    use_rslora: bool = Field(False, description="scale by alpha / sqrt(r), stable at high rank (Kalajdzievski 2023)")


def peft_config(model: torch.nn.Module, config: Config, **extra):
    """PEFT's LoraConfig for `config`; `extra` sets the variants' switches (use_dora, ...)."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=config.target_modules, use_rslora=config.use_rslora,
                      fan_in_fan_out=peft_adapter.has_conv1d(model), **extra)


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    return peft_adapter.wrap(model, peft_config(model, config))


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("lora", Config, attach, save, saves="adapter")
