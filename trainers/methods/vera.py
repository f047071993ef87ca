"""VeRA: one pair of frozen random matrices A (r, in) and B (out, r) shared by all adapted layers,
and per layer two trained scaling vectors, W + diag(lambda_b) B diag(lambda_d) A (Kopiczko et al.
2024, arXiv:2310.11454). lambda_b starts at zero, so training starts from the base; a layer trains
r + out numbers, where LoRA trains r * (in + out).

Realised with PEFT's VeraConfig. The shared A and B are regenerated from `projection_seed`, and are
also saved in the adapter folder (`save_projection`) so it loads without that seed.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from trainers.methods import peft_adapter
from trainers.methods.method import TrainingMethod
from trainers.methods.peft_adapter import TARGETS_HELP, Targets


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(256, ge=1, le=8192, description="rank of the shared random matrices (cheap: they are not trained)")
    target_modules: Targets = Field(peft_adapter.ALL_LINEAR, description=TARGETS_HELP)
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    d_initial: float = Field(0.1, gt=0, le=10, description="initial value of every lambda_d")
    projection_seed: int = Field(0, ge=0, description="seed of the shared random matrices A and B")


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    from peft import VeraConfig

    vera = VeraConfig(task_type="CAUSAL_LM", r=config.r, target_modules=config.target_modules,
                      vera_dropout=config.dropout, d_initial=config.d_initial,
                      projection_prng_key=config.projection_seed, save_projection=True,
                      fan_in_fan_out=peft_adapter.has_conv1d(model))
    return peft_adapter.wrap(model, vera)


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("vera", Config, attach, save, saves="adapter")
