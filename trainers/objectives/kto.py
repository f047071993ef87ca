"""KTO: Kahneman-Tversky optimisation from unpaired good and bad completions (Ethayarajh et al. 2024,
https://arxiv.org/abs/2402.01306, Eqs. 7-8).

Rows are `{"prompt", "completion", "label"}`, `label` true for a desirable completion. With the
implied reward r = log pi(y|x) - log pi_ref(y|x) (summed over the completion's tokens) and the
reference point z = max(0, mean over the batch of [log pi(y'|x) - log pi_ref(y'|x)]), an estimate of
KL(pi || pi_ref) from mismatched pairs (each prompt with the previous row's completion; no gradient):

    desirable:   loss = w_d (1 - sigmoid(beta (r - z)))
    undesirable: loss = w_u (1 - sigmoid(beta (z - r)))

and the batch loss is the mean over its rows. w_d and w_u rebalance unequal counts of good and bad
rows (the paper suggests w_d n_d / (w_u n_u) in [1, 4/3]). The reference is found as for DPO.
"""

from __future__ import annotations

import torch
from pydantic import Field

from trainers import packing
from trainers.data import Row
from trainers.logprobs import IGNORE
from trainers.objectives import objective, pairs, sft
from trainers.templates import Template

SHAPES = ("unpaired_preference",)


class Config(objective.ReferenceConfig):
    beta: float = Field(0.1, gt=0, description="scale of the implied reward (higher: closer to the reference)")
    desirable_weight: float = Field(1.0, gt=0, description="weight w_d of the desirable rows' losses")
    undesirable_weight: float = Field(1.0, gt=0, description="weight w_u of the undesirable rows' losses")


def encode(row: Row, tokenizer, template: Template, config: Config | None = None) -> dict:
    one = sft.encode(row, tokenizer, template, sft.Config())
    return {**one, "label": bool(row.fields["label"])}


def collate(examples: list[dict], pad_id: int,
            layout: packing.Layout = packing.PADDED_LAYOUT) -> dict[str, torch.Tensor]:
    """(B, T) input_ids, attention_mask, labels (or the rows packed as `layout` says); `desirable` (B,);
    and the mismatched KL sequences laid out alike under `kl_` names: row i's prompt with row i-1's
    completion, cut to the batch's longest row."""
    mismatched = [splice(examples[i], examples[i - 1]) for i in range(len(examples))]
    longest = max(len(e["input_ids"]) for e in examples)
    mismatched = [{k: v[:longest] for k, v in m.items()} for m in mismatched]
    out = {**laid_out(examples, pad_id, layout), "desirable": torch.tensor([e["label"] for e in examples]),
           "num_items": torch.tensor(len(examples))}
    return {**out, **{f"kl_{k}": v for k, v in laid_out(mismatched, pad_id, layout).items()}}


def splice(prompt_of: dict, completion_of: dict) -> dict[str, list[int]]:
    """The prompt tokens of one encoded row followed by the completion tokens (and labels) of another."""
    a, b = start(prompt_of["labels"]), start(completion_of["labels"])
    return {"input_ids": prompt_of["input_ids"][:a] + completion_of["input_ids"][b:],
            "labels": [IGNORE] * a + completion_of["labels"][b:]}


def start(labels: list[int]) -> int:
    """Where the completion starts: the first labelled token."""
    return next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))


def laid_out(examples: list[dict], pad_id: int, layout: packing.Layout) -> dict[str, torch.Tensor]:
    return packing.collate([e["input_ids"] for e in examples], [e["labels"] for e in examples], pad_id, layout)


def build_batch(rows: list[Row], tokenizer, template: Template,
                config: Config | None = None) -> dict[str, torch.Tensor]:
    return collate([encode(r, tokenizer, template, config) for r in rows], sft.pad_token_id(tokenizer))


def kl_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    kl = {k.removeprefix("kl_"): v for k, v in batch.items() if k.startswith("kl_")}
    return pairs.forward_logps(model, kl)[1]


def annotate(reference, batch: dict[str, torch.Tensor], config: Config | None = None) -> dict[str, torch.Tensor]:
    """The reference's summed completion log-probs of the rows, `ref_logps` (B,), and of the
    mismatched pairs, `ref_kl_logps` (B,)."""
    return {**batch, "ref_logps": pairs.forward_logps(reference, batch)[1], "ref_kl_logps": kl_logps(reference, batch)}


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
             desirable: torch.Tensor, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss (B,), the rewards beta * r (B,) and the reference point z, from summed log-probs (B,)."""
    z = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    r = logps - ref_logps
    value = torch.where(desirable, torch.sigmoid(beta * (r - z)), torch.sigmoid(beta * (z - r)))
    weight = torch.where(desirable, torch.tensor(desirable_weight), torch.tensor(undesirable_weight))
    return weight.to(value) * (1 - value), beta * r, z


def loss(model, batch: dict[str, torch.Tensor], config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    _, logps, _ = pairs.forward_logps(model, batch)
    with torch.no_grad():
        policy_kl = kl_logps(model, batch)
    losses, rewards, z = kto_loss(logps, batch["ref_logps"], policy_kl, batch["ref_kl_logps"], batch["desirable"],
                                  config.beta, config.desirable_weight, config.undesirable_weight)
    return losses.mean(), {**kto_metrics(rewards.detach(), batch["desirable"]), "kl": float(z)}


def kto_metrics(rewards: torch.Tensor, desirable: torch.Tensor) -> dict[str, float]:
    """Mean reward of the desirable and undesirable rows (0 where the batch has none), their margin, and
    the share of rows whose reward has the sign of their label (KTO has no pairs to compare)."""
    good = float(rewards[desirable].mean()) if desirable.any() else 0.0
    bad = float(rewards[~desirable].mean()) if (~desirable).any() else 0.0
    accuracy = float(((rewards > 0) == desirable).float().mean())
    return {"rewards/chosen": good, "rewards/rejected": bad, "margin": good - bad, "accuracy": accuracy}


OBJECTIVE = objective.Objective("kto", "KTO", Config, SHAPES, "offline", objective.Batches(encode, collate, packs=True),
                                loss, annotate=annotate, uses_reference=objective.always)
