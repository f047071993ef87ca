"""Causal language modelling (pretraining a base, or continued pretraining): next-token
cross-entropy on every token of plain-text rows. The same loss as SFT with every token labelled."""

from __future__ import annotations

import torch
from pydantic import Field

from trainers.data import Row
from trainers.logprobs import scores
from trainers.objectives import objective
from trainers.objectives.sft import collate, mean_nll, pad_token_id
from trainers.templates import Template

SHAPES = ("text",)


class Config(objective.Config):
    add_eos: bool = Field(True, description="end each text with the end-of-sequence token, so documents are delimited")


def encode(row: Row, tokenizer, template: Template, config: Config) -> dict[str, list[int]]:
    ids = tokenizer(row.fields["text"], add_special_tokens=False)["input_ids"]
    if config.add_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": list(ids)}


def build_batch(rows: list[Row], tokenizer, template: Template, config: Config) -> dict[str, torch.Tensor]:
    return collate([encode(r, tokenizer, template, config) for r in rows], pad_token_id(tokenizer))


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    return mean_nll(scores(model, batch))


OBJECTIVE = objective.Objective("pretrain", "pretraining", Config, SHAPES, "offline",
                                objective.Batches(encode, collate, packs=True), loss)
