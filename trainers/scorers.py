"""Scores of sampled completions, from a reward model or a Python reward function: what PPO optimises
and what the reward-model judge of RLAIF compares.

A reward model is a Hugging Face sequence-classification folder with one label. It reads the
policy's own token ids (prompt and completion as rendered for the policy), so its tokenizer must be
the policy's: a different one is refused rather than silently scoring other tokens. Its score is the
head's output at each sequence's last real token (the stop token when the completion ended).

Python reward functions are `trainers.rewards`' (`f(prompt, completion, row) -> float`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.errors import InputError


@dataclass(frozen=True)
class RewardModel:
    model: torch.nn.Module
    path: str


def load_reward_model(path: str, policy_tokenizer, field: str, device: torch.device | str = "cpu") -> RewardModel:
    """The frozen reward model at `path`, refused when it has more than one label or another tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{field} {path!r}: cannot load a sequence-classification model and tokenizer ({e})") from None
    if model.config.num_labels != 1:
        raise InputError(f"{field} {path!r}: a reward model has one output (num_labels=1), this one has "
                         f"{model.config.num_labels}; train it with the reward-model objective")
    problem = tokenizer_difference(tokenizer, policy_tokenizer)
    if problem:
        raise InputError(f"{field} {path!r}: its tokenizer differs from the policy's ({problem}); the reward model "
                         "reads the policy's token ids, so train it from the policy's base (or with its tokenizer)")
    if not hasattr(model, "score") or not hasattr(model, model.base_model_prefix):
        raise InputError(f"{field} {path!r}: {type(model).__name__} has no `score` head over a backbone; use a "
                         "Llama-, Qwen-, Mistral- or GPT-2-style sequence-classification model")
    model.to(device).eval().requires_grad_(False)
    return RewardModel(model, path)


def tokenizer_difference(a, b) -> str | None:
    """What differs between two tokenizers' vocabularies and special tokens, or None."""
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        return f"{len(va)} tokens against {len(vb)}"
    other = sorted(t for t in va if vb.get(t) != va[t])
    if other:
        return f"token {other[0]!r} has id {va[other[0]]} there and {vb.get(other[0])} here"
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(a, name) != getattr(b, name):
            return f"{name} is {getattr(a, name)} there and {getattr(b, name)} here"
    return None


@torch.no_grad()
def score_sequences(reward: RewardModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) scores of right-padded sequences, read at each one's last real token."""
    model = reward.model
    device = next(model.parameters()).device
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                      use_cache=False).last_hidden_state  # (B, T, H)
    last = attention_mask.long().sum(1) - 1  # (B,)
    picked = hidden[torch.arange(hidden.shape[0], device=device), last.to(device)]  # (B, H)
    return model.score(picked).squeeze(-1).float().cpu()
