"""Log-probabilities of tokens and sequences under a causal LM: the one place where logits become
log p(x_{t+1} | x_<=t), for SFT's cross-entropy, the preference objectives' sequence scores, GRPO's
and PPO's per-token ratios and KL, and the LM judge's verdicts.

The log-softmax is taken in float32 whatever the model's dtype (a bfloat16 log-softmax over a large
vocabulary loses the small probabilities the ratios and the KL are made of). Position t's logits
predict the token at t + 1, so a sequence of T tokens gives T - 1 log-probabilities.

The training objectives score a batch through `scores`: only the positions whose next token is a
target (completion tokens, say), for padded and packed batches alike (trainers/packing.py), by default
with a chunked head (the cross-entropy of `chunk` positions at a time, their logits recomputed in the
backward pass), so a batch's whole (B, T, V) logits are never held: with a 150k-token vocabulary they
are 0.6 MB per position in float32, several copies of which (softmax, gradient) the plain loss keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainers import parallel

IGNORE = -100  # the label of a token that is context only, not a target
AUTO = "auto"  # `batch.logits_chunk`'s default: as many positions as LOGITS_ENTRIES allows
LOGITS_ENTRIES = 2**24  # logits entries at once by default (64 MiB in float32): 524 positions of a 32000-token
# vocabulary, 110 of a 151936-token one (Qwen2), whose logits are 0.6 MB per position


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


@dataclass(frozen=True)
class Scores:
    """The log-probabilities of a batch's target tokens, flattened over the N scored positions: position t
    of a row is scored when the label at t + 1 is not IGNORE (it predicts that token)."""

    logps: torch.Tensor  # (N,) log p(target), with gradient
    correct: torch.Tensor  # (N,) bool: the target is the model's top token (no gradient)
    sequence: torch.Tensor  # (N,) the sequence each target belongs to (its row when padded)
    where: torch.Tensor  # (R, W-1) bool: the scored positions, so that x[:, 1:][where] lines up with logps


def scores(model, batch: dict, labels: torch.Tensor | None = None) -> Scores:
    """The model's log-probabilities of the batch's labelled tokens (or of `labels`' (R, W)), padded or
    packed (trainers/packing.py). With `batch["logits_chunk"]` set (a count of positions, or "auto", the
    default: LOGITS_ENTRIES // V), logits are formed for the scored positions only, that many at a time,
    and recomputed in the backward pass: the batch's (R, W, V) logits never exist. With None, the model's
    own head runs over every position."""
    labels = batch["labels"] if labels is None else labels
    targets, width = labels[:, 1:], labels.shape[1]  # (R, W-1): position t predicts t + 1
    where = targets != IGNORE
    chunk = batch.get("logits_chunk", AUTO)
    head = output_head(model) if chunk is not None else None
    chunk = auto_chunk(head) if head is not None and chunk == AUTO else chunk
    if head is None:
        logits = model(**model_inputs(batch), use_cache=False).logits[:, -width:]  # prompt learning prepends positions
        logps, correct = head_logps(lambda h: h, logits[:, :-1][where], targets[where])
    else:
        hidden = final_hidden(model, head, batch)[:, -width:]  # (R, W, H)
        logps, correct = chunked_logps(head, hidden[:, :-1][where], targets[where], chunk)
    return Scores(logps, correct, sequence_index(batch)[:, 1:][where], where)


def auto_chunk(head: torch.nn.Module) -> int:
    """Positions per chunk under the default budget: LOGITS_ENTRIES // vocabulary, at least 1."""
    vocab = head.weight.shape[0] if isinstance(getattr(head, "weight", None), torch.Tensor) else head.out_features
    return max(1, LOGITS_ENTRIES // vocab)


def sequence_sums(s: Scores, count: int, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of its scored tokens (those with `weight` 1 when given) and
    how many there are, (count,) and (count,)."""
    w = torch.ones_like(s.logps) if weight is None else weight.to(s.logps.dtype)
    sums = torch.zeros(count, dtype=s.logps.dtype, device=s.logps.device).index_add(0, s.sequence, s.logps * w)
    tokens = torch.zeros(count, dtype=torch.long, device=w.device).index_add(0, s.sequence, w.long())
    return sums, tokens


def model_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """What the model is called with: input_ids and the attention mask (padded) or position ids (packed)."""
    key = "position_ids" if "position_ids" in batch else "attention_mask"
    return {"input_ids": batch["input_ids"], key: batch[key]}


def real_tokens(batch: dict) -> torch.Tensor:
    """(R, W) True on the tokens of a sequence, False on padding."""
    return batch["sequence"] >= 0 if "sequence" in batch else batch["attention_mask"].bool()


def sequence_index(batch: dict) -> torch.Tensor:
    """(R, W) each token's sequence: its row in a padded batch; -1 on a packed row's tail."""
    if "sequence" in batch:
        return batch["sequence"]
    rows, width = batch["input_ids"].shape
    return torch.arange(rows, device=batch["input_ids"].device)[:, None].expand(rows, width)


def sequence_count(batch: dict) -> int:
    return int(batch["sequence"].max()) + 1 if "sequence" in batch else batch["input_ids"].shape[0]


def output_head(model) -> torch.nn.Module | None:
    """The module that turns final hidden states into logits (lm_head), or None for a model without one."""
    inner = parallel.unwrap(model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if get is not None else None
    return head if isinstance(head, torch.nn.Module) else None


def final_hidden(model, head: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The hidden states the head would read, (R, W', H), from the model's own forward pass (so wrappers,
    adapters and data parallelism see an ordinary call) with the head given none of them: its (R, W', V)
    logits are never formed."""
    seen = []

    def take(module, args):
        seen.append(args[0])
        return (args[0][..., :0, :],)  # (R, 0, H): the head runs on no position

    hook = head.register_forward_pre_hook(take)
    try:
        model(**model_inputs(batch), use_cache=False)
    finally:
        hook.remove()
    return seen[-1]


def head_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(head(hidden)) at `targets` and whether each is the top token: hidden (C, H) -> (C,), (C,)."""
    logits = head(hidden).float()  # (C, V)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logps, (logits.detach().argmax(-1) == targets)


def chunked_logps(head, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`head_logps` `chunk` positions at a time: hidden (N, H) -> (N,), (N,). With gradients, each chunk's
    (chunk, V) logits are dropped after its forward and recomputed in its backward, so at most one chunk's
    exist at a time: for a plain `nn.Linear` head by `LinearHeadLogps` (one buffer for the weight's
    gradient), for any other head (an adapter's wrapper, say) by activation checkpointing."""
    if type(head) is torch.nn.Linear and hidden.shape[0]:
        return LinearHeadLogps.apply(hidden, head.weight, head.bias, targets, chunk)
    parts = []
    for i in range(0, hidden.shape[0], chunk):
        h, t = hidden[i:i + chunk], targets[i:i + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(head_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(head_logps(head, h, t))
    if not parts:
        return hidden.sum(-1) * 0, torch.zeros(0, dtype=torch.bool, device=hidden.device)  # (0,), keeps the graph
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class LinearHeadLogps(torch.autograd.Function):
    """log softmax(hidden W^T + b) at `targets`, and whether each target is the top token, `chunk`
    positions at a time: hidden (N, H), W (V, H), b (V,) or None, targets (N,) -> (N,) float32, (N,) bool.
    No logits are kept: the backward recomputes each chunk's, turns them into their gradient in place
    (d log p_t / d logits = onehot(t) - softmax) and adds that chunk's share of W's gradient into one
    (V, H) buffer, where checkpointing each chunk separately makes a (V, H) gradient per chunk and
    adds it to the last; with a 150k-token vocabulary that is 78 MB at hidden 128, 0.9 GB at 1536."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        correct = torch.empty(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        for i in range(0, hidden.shape[0], chunk):
            logps[i:i + chunk], correct[i:i + chunk] = head_logps(lambda h: F.linear(h, weight, bias),
                                                                  hidden[i:i + chunk], targets[i:i + chunk])
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(correct)
        return logps, correct

    @staticmethod
    def backward(ctx, grad_logps, grad_correct):
        hidden, weight, bias, targets = ctx.saved_tensors
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        grad_b = torch.zeros_like(bias) if want_b else None
        for i in range(0, hidden.shape[0], ctx.chunk):
            h, t, g_out = hidden[i:i + ctx.chunk], targets[i:i + ctx.chunk], grad_logps[i:i + ctx.chunk].float()
            g = F.linear(h, weight, bias).float()  # (C, V) logits, then in place their gradient
            g.sub_(torch.logsumexp(g, -1, keepdim=True)).exp_()  # softmax, in place
            g.mul_(-g_out.unsqueeze(-1))
            g[torch.arange(len(t), device=g.device), t] += g_out
            g = g.to(weight.dtype)
            if want_h:
                grad_h[i:i + ctx.chunk] = g @ weight
            if want_w:
                grad_w.addmm_(g.t(), h)
            if want_b:
                grad_b += g.sum(0)
        return grad_h, grad_w, grad_b, None, None
