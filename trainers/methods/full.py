"""Full fine-tuning: every parameter trains; the result is a Hugging Face model folder."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from trainers.methods.method import TrainingMethod


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save(model, folder: str, config: Config) -> None:
    model.save_pretrained(folder)


METHOD = TrainingMethod("full", Config, attach, save, saves="model")
