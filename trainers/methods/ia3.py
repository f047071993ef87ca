"""IA3: learned vectors that rescale activations, the keys and values of attention and the input of
the feed-forward's down projection, l * x (Liu et al. 2022, "Few-Shot Parameter-Efficient
Fine-Tuning is Better and Cheaper than In-Context Learning", arXiv:2205.05638). The vectors start
at one, so training starts from the base.

Realised with PEFT's IA3Config; by default PEFT's choice for the architecture: k_proj, v_proj and
down_proj (feed-forward) on Llama, Qwen2 and Mistral; c_attn and mlp.c_proj (feed-forward) on GPT-2.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainers.methods import peft_adapter
from trainers.methods.method import TrainingMethod


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_modules: list[str] | None = Field(None, min_length=1, description="module names (or suffixes) to rescale; "
                                             "default: PEFT's choice for the architecture")
    feedforward_modules: list[str] | None = Field(None, description="those of target_modules that are feed-forward "
                                                  "layers (their input is rescaled, not their output)")

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> Config:
        if self.target_modules is None and self.feedforward_modules is not None:
            raise ValueError("feedforward_modules needs target_modules too (it names a subset of them)")
        if self.target_modules is not None and self.feedforward_modules is None:
            raise ValueError("with target_modules, list which of them are feed-forward in feedforward_modules "
                             "(an empty list if none)")
        extra = set(self.feedforward_modules or []) - set(self.target_modules or [])
        if extra:
            raise ValueError(f"feedforward_modules {sorted(extra)} are not in target_modules")
        return self


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    from peft import IA3Config

    ia3 = IA3Config(task_type="CAUSAL_LM", target_modules=config.target_modules,
                    feedforward_modules=config.feedforward_modules, fan_in_fan_out=peft_adapter.has_conv1d(model))
    return peft_adapter.wrap(model, ia3)


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("ia3", Config, attach, save, saves="adapter")
