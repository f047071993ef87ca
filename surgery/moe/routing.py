"""Where a mixture of experts sends tokens: for a set of prompts, the share of their tokens whose first
choice is each expert, per layer (from the routers' logits, as the model computes them)."""

from __future__ import annotations

import torch


def routing_share(model, tokenizer, prompts: list[str], batch_size: int = 16) -> torch.Tensor:
    """(layers, experts): the share of the prompts' real tokens routed first to each expert; rows sum to 1."""
    counts = None
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model(**batch, output_router_logits=True)
        real = batch["attention_mask"].reshape(-1).bool()  # (B*T,) padding tokens are not counted
        firsts = torch.stack([logits.argmax(-1)[real] for logits in out.router_logits])  # (L, tokens)
        experts = out.router_logits[0].shape[-1]
        found = torch.nn.functional.one_hot(firsts, experts).sum(1)  # (L, E)
        counts = found if counts is None else counts + found
    return counts.float() / counts.sum(-1, keepdim=True)
