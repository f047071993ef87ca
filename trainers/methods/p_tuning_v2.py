"""P-tuning v2: deep prompt tuning, trained prompts at every layer of the model rather than only at
the input, which closes most of the gap to fine-tuning at small model sizes and on hard sequence
tasks (Liu et al. 2022, arXiv:2110.07602).

How it is realised: a prompt that every layer sees is, for a decoder, a prefix of keys and values at
every attention layer, which is what PEFT's prefix tuning trains (PrefixTuningConfig, through
`trainers.methods.prefix`); the paper itself describes its method as an optimised form of deep
prompt tuning (Li & Liang 2021; Qin & Eisner 2021). What differs from `prefix` is the default the
paper argues for: no reparameterisation (the prefixes are trained directly; the paper finds the MLP
helps on some tasks and hurts on others, so `projection: true` remains available). The paper's
linear classification head (in place of a verbaliser) is for labelling tasks, not for a causal LM's
generation, and is left out.
"""

from __future__ import annotations

import torch
from pydantic import Field

from trainers.methods import peft_adapter, prefix
from trainers.methods.method import TrainingMethod


class Config(prefix.Config):
    projection: bool = Field(False, description="train the prefixes through an MLP (off by default, as in the paper)")


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    return peft_adapter.wrap(model, prefix.peft_config(config))


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("p_tuning_v2", Config, attach, save, saves="adapter")
