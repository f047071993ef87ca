"""Supervised fine-tuning: next-token cross-entropy on the completion tokens only (on the assistant
turns only, in multi-turn chats); prompts and user turns are context, not targets.

A prompt/completion row is a user turn and an assistant turn under the run's chat template (after a
system turn when the row has a `system` field); with `chat_template: none` the completion follows the
prompt as plain text, ended by the end-of-sequence token.

Instruction tuning is SFT on instruction data; multi-task fine-tuning is SFT on a mixture of datasets
(see trainers/data.py). The loss is the mean over the batch's trained tokens,
-(1/N) Σ log p(x_t | x_<t), as in TRL's SFTTrainer with completion-only loss. Rows may be packed
(`batch.packing`, trainers/packing.py): the same tokens are scored, so the loss is the same.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from surgery.errors import InputError
from trainers import packing
from trainers.data import Row
from trainers.logprobs import IGNORE, Scores, scores, token_logps
from trainers.objectives import objective
from trainers.templates import NONE, Template, assistant_spans

SHAPES = ("prompt_completion", "messages")


class Config(objective.Config):
    loss_on: Literal["completion", "all"] = Field(
        "completion", description="'completion': completion and assistant tokens only; 'all': every token")


def encode(row: Row, tokenizer, template: Template, config: Config) -> dict[str, list[int]]:
    if not getattr(tokenizer, "is_fast", False):  # character offsets locate the trained tokens
        raise InputError(f"{row.where}: SFT needs a fast (Rust) tokenizer for token offsets; the base has "
                         f"{type(tokenizer).__name__}: add its tokenizer.json")
    text, spans = rendered(row, tokenizer, template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    trained = [config.loss_on == "all" or any(end > a and start < b for a, b in spans) for start, end in offsets]
    return {"input_ids": ids, "labels": [t if keep else IGNORE for t, keep in zip(ids, trained)]}


def rendered(row: Row, tokenizer, template: Template) -> tuple[str, list[tuple[int, int]]]:
    """The row's text and the character spans to train on."""
    f = row.fields
    if template.name == NONE:
        if "messages" in f:
            raise InputError(f"{row.where}: chat rows need a chat template; set chat_template in the run spec")
        text = f["prompt"] + f["completion"] + (tokenizer.eos_token or "")
        return text, [(len(f["prompt"]), len(text))]
    messages = f.get("messages") or [{"role": "user", "content": f["prompt"]},
                                     {"role": "assistant", "content": f["completion"]}]
    if "system" in f and "messages" not in f:
        messages = [{"role": "system", "content": f["system"]}, *messages]
    return assistant_spans(tokenizer, template, messages, row.where)


def collate(examples: list[dict[str, list[int]]], pad_id: int,
            layout: packing.Layout = packing.PADDED_LAYOUT) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, attention_mask and labels (IGNORE on padding), or the rows packed as
    `layout` says (trainers/packing.py); `num_items`, the trained tokens."""
    batch = packing.collate([e["input_ids"] for e in examples], [e["labels"] for e in examples], pad_id, layout)
    num_items = (batch["labels"][:, 1:] != IGNORE).sum()  # a token's label is predicted from the one before it
    return {**batch, "num_items": num_items}


def build_batch(rows: list[Row], tokenizer, template: Template, config: Config) -> dict[str, torch.Tensor]:
    return collate([encode(r, tokenizer, template, config) for r in rows], pad_token_id(tokenizer))


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token NLL over labelled positions, and the share of them predicted right."""
    logits, targets = logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)
    mask = targets != IGNORE
    nll = -token_logps(logits, targets)  # (B, T-1)
    count = mask.sum()
    loss = (nll * mask).sum() / count.clamp(min=1)  # a batch with no trained token gives 0, not NaN
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return loss, {"accuracy": float(correct) / max(float(count), 1.0)}


def mean_nll(s: Scores) -> tuple[torch.Tensor, dict[str, float]]:
    """`token_loss` from the scored tokens' log-probabilities (trainers/logprobs.py `scores`)."""
    count = max(s.logps.numel(), 1)  # a batch with no trained token gives 0, not NaN
    return -s.logps.sum() / count, {"accuracy": float(s.correct.sum()) / count}


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    return mean_nll(scores(model, batch))


OBJECTIVE = objective.Objective("sft", "SFT", Config, SHAPES, "offline", objective.Batches(encode, collate, packs=True),
                                loss)
