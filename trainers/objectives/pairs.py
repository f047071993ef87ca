"""What the pairwise preference objectives share (DPO, IPO, SimPO, ORPO, the reward model): a
(prompt, chosen, rejected) row encoded as two prompt/completion sequences, the batch laid out as
[chosen rows; rejected rows], per-sequence log-probabilities of the completions, and the metrics.

Not an objective itself (it has no entry in the registry). Each completion is rendered exactly as SFT
renders a prompt/completion row (chat template, or plain text ended by the end-of-sequence token), so
the tokens a preference objective scores are those SFT trains on.
"""

from __future__ import annotations

import torch

from trainers import packing
from trainers.data import Row
from trainers.logprobs import Scores, scores, sequence_count, sequence_logps, sequence_sums  # noqa: F401
from trainers.objectives import sft
from trainers.templates import Template

SHAPES = ("preference",)


def encode(row: Row, tokenizer, template: Template, config=None) -> dict[str, list[int]]:
    """The chosen and the rejected completion after the same prompt, each with SFT's labels."""
    sides = {}
    for side in ("chosen", "rejected"):
        fields = {k: v for k, v in row.fields.items() if k not in ("chosen", "rejected")}
        one = sft.encode(Row({**fields, "completion": row.fields[side]}, row.file, row.line), tokenizer, template,
                         sft.Config())
        sides[f"{side}_ids"], sides[f"{side}_labels"] = one["input_ids"], one["labels"]
    return sides


def collate(examples: list[dict[str, list[int]]], pad_id: int,
            layout: packing.Layout = packing.PADDED_LAYOUT) -> dict[str, torch.Tensor]:
    """The 2B sequences, the B chosen then the B rejected: padded (2B, T) input_ids, attention_mask and
    labels, or packed as `layout` says (sequence i of `sequence` is the i-th of that order). `num_items`
    is the number of pairs."""
    ids = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    labels = [e["chosen_labels"] for e in examples] + [e["rejected_labels"] for e in examples]
    return {**packing.collate(ids, labels, pad_id, layout), "num_items": torch.tensor(len(examples))}


def build_batch(rows: list[Row], tokenizer, template: Template, config=None) -> dict[str, torch.Tensor]:
    return collate([encode(r, tokenizer, template, config) for r in rows], sft.pad_token_id(tokenizer))


def forward_logps(model, batch: dict[str, torch.Tensor]) -> tuple[Scores, torch.Tensor, torch.Tensor]:
    """The model's scores of the completion tokens, their summed log-probs per sequence (2B,) and the
    completion lengths (2B,)."""
    s = scores(model, batch)
    return (s, *sequence_sums(s, sequence_count(batch)))


def annotate(reference, batch: dict[str, torch.Tensor], config=None) -> dict[str, torch.Tensor]:
    """The batch with the reference's summed completion log-probs, `ref_logps` (2B,)."""
    _, logps, _ = forward_logps(reference, batch)
    return {**batch, "ref_logps": logps}


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen half and the rejected half of a (2B, ...) tensor."""
    return x.chunk(2, dim=0)


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Means over the pairs of the implied rewards, their margin, and how often chosen scores higher."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    return {"rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
            "margin": float((chosen - rejected).mean()), "accuracy": float((chosen > rejected).float().mean())}
