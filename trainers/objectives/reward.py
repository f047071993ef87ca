"""Reward model: a causal LM with a scalar head, trained on preference pairs with the Bradley-Terry
loss (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, Eq. 1; the margin of Touvron et al.
2023, https://arxiv.org/abs/2307.09288, Eq. 2).

The model is `AutoModelForSequenceClassification` with `num_labels=1` on the base: the decoder of
the base and a new linear head `score` (hidden -> 1) read at each sequence's last non-padding token.
For a pair with scores s_w, s_l (and an optional per-row `margin` m, a number, 0 when absent):

    loss = -log sigmoid(s_w - s_l - m)

With method `full` (or `freeze`) the result is a normal Hugging Face folder
(`architectures: [<Arch>ForSequenceClassification]`, `num_labels: 1`) that
`AutoModelForSequenceClassification.from_pretrained` loads to score any rendered (prompt, response);
with an adapter method, a PEFT adapter folder of task type SEQ_CLS (the head saved beside the adapter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from surgery.errors import InputError
from trainers.data import Row
from trainers.objectives import objective, pairs, sft
from trainers.templates import Template

SHAPES = pairs.SHAPES


class Config(objective.Config):
    pass


def load_model(path: str, dtype: torch.dtype, trust_remote_code: bool = False):
    """The folder's decoder under a fresh scalar head (or, from a reward checkpoint, its own head); the
    pad token is set from the folder's tokenizer, since the head reads the last non-padding token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the new head and the unused LM head are expected: no load report
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype,
                                                                   trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"{path!r}: cannot load it as a sequence classifier with one label ({e})") from None
    finally:
        logging.set_verbosity(verbosity)
    model.config.pad_token_id = sft.pad_token_id(tokenizer)
    return model


def encode(row: Row, tokenizer, template: Template, config: Config | None = None) -> dict:
    out = pairs.encode(row, tokenizer, template)
    margin = row.fields.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise InputError(f"{row.where}: field 'margin' must be a number, not {type(margin).__name__}")
    return {**out, "margin": float(margin)}


def collate(examples: list[dict], pad_id: int, layout=None) -> dict[str, torch.Tensor]:
    """Always padded (the scalar head reads each row's last token); `layout` is the loop's, unused."""
    return {**pairs.collate(examples, pad_id), "margin": torch.tensor([e["margin"] for e in examples])}


def build_batch(rows: list[Row], tokenizer, template: Template,
                config: Config | None = None) -> dict[str, torch.Tensor]:
    return collate([encode(r, tokenizer, template, config) for r in rows], sft.pad_token_id(tokenizer))


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair loss (B,) from the scores of chosen and rejected (B,)."""
    return -F.logsigmoid(chosen - rejected - (0 if margin is None else margin))


def scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's score of every sequence, (2B,)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[:, 0]


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    chosen, rejected = pairs.halves(scores(model, batch).float())
    return bradley_terry_loss(chosen, rejected, batch["margin"]).mean(), pairs.reward_metrics(chosen, rejected)


OBJECTIVE = objective.Objective("reward", "reward model", Config, SHAPES, "offline",
                                objective.Batches(encode, collate), loss, load_model=load_model)
