"""Log-probabilities of tokens and sequences under a causal LM: the one place where logits become
log p(x_{t+1} | x_<=t), for SFT's cross-entropy, the preference objectives' sequence scores, GRPO's
and PPO's per-token ratios and KL, and the LM judge's verdicts.

The log-softmax is taken in float32 whatever the model's dtype (a bfloat16 log-softmax over a large
vocabulary loses the small probabilities the ratios and the KL are made of). Position t's logits
predict the token at t + 1, so a sequence of T tokens gives T - 1 log-probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # the label of a token that is context only, not a target


def token_logps(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) read at `tokens`: logits (..., V), tokens (...) -> (...).
    A negative token (IGNORE) reads index 0: the caller masks it out."""
    logits = logits.float()
    if temperature != 1.0:  # skipped at 1: it would cost a (..., V) copy for nothing
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)  # (..., V)
    return logp.gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def next_token_logps(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(x_{t+1} | x_<=t) of the tokens that follow: logits (B, T, V), input_ids (B, T) -> (B, T-1)."""
    return token_logps(logits[:, :-1], input_ids[:, 1:], temperature)


def model_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The model's next-token log-probabilities of its own input, (B, T-1)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return next_token_logps(logits, input_ids, temperature)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of its labelled tokens (labels not IGNORE), and how many
    there are; logits (N, T, V), labels (N, T) -> (N,), (N,)."""
    targets = labels[:, 1:]  # (N, T-1): position t predicts t + 1
    mask = targets != IGNORE
    logp = token_logps(logits[:, :-1], targets)  # (N, T-1)
    return (logp * mask).sum(-1), mask.sum(-1)
