"""How a micro-batch's token sequences are laid out for the model (`batch.packing` of the run spec).

- padded (`packing: false`, the default): one row per sequence, right-padded to the longest, with an
  attention mask;
- packed (`packing: true`): whole sequences (never split) laid end to end in rows of at most
  `batch.max_length` tokens, placed by best-fit decreasing (longest first, each into the row it fills
  best); the rows are as wide as the fullest one;
- padding-free (`packing: padding_free`): every sequence of the micro-batch in one row, no padding.

A packed row has no attention mask: its position ids restart at 0 with each sequence, and transformers
reads the restarts as sequence boundaries (`masking_utils.find_packed_sequence_indices`): a
block-diagonal causal mask for sdpa and eager attention, varlen kernels for flash attention, so each
token attends within its own sequence, as in its own padded row. The label of each sequence's first
token is IGNORE (it would be "predicted" from the previous sequence's last token); a sequence's first
label is never a target anyway (position t predicts t + 1). A padded row's padding and a packed row's
tail are IGNORE too; a packed tail gets positions of its own (a block no sequence attends to).

Batches built this way also carry `logits_chunk` (`batch.logits_chunk`); trainers/logprobs.py reads them
(`scores`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from trainers.logprobs import AUTO, IGNORE

PADDED, PACKED, PADDING_FREE = "padded", "packed", "padding_free"


@dataclass(frozen=True)
class Layout:
    mode: Literal["padded", "packed", "padding_free"] = PADDED
    capacity: int | None = None  # a packed row's most tokens (batch.max_length)
    logits_chunk: int | str | None = AUTO  # positions, "auto" (by the vocabulary), or None: the model's own head

    @staticmethod
    def of(batch_spec) -> Layout:
        """The layout a run spec's `batch` asks for."""
        mode = {False: PADDED, True: PACKED, PADDING_FREE: PADDING_FREE}[batch_spec.packing]
        return Layout(mode, batch_spec.max_length, batch_spec.logits_chunk)


PADDED_LAYOUT = Layout()


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices grouped into bins of at most `capacity` tokens: longest first, each into the bin
    whose free space it fills most tightly (ties: the earlier bin), a new bin when none has room. A
    sequence longer than the capacity gets a bin of its own (the loop cuts rows to max_length first)."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: (free[b], b))
            bins[b].append(i)
            free[b] -= lengths[i]
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def rows_of(lengths: list[int], layout: Layout) -> list[list[int]]:
    """Which sequences go into each row of the batch, in order."""
    if layout.mode == PADDED:
        return [[i] for i in range(len(lengths))]
    if layout.mode == PADDING_FREE:
        return [list(range(len(lengths)))]
    return best_fit_decreasing(lengths, layout.capacity or max(lengths))


def collate(ids: list[list[int]], labels: list[list[int]], pad_id: int, layout: Layout) -> dict[str, torch.Tensor]:
    """The model inputs and labels of sequences `ids` (with their `labels`, IGNORE where untrained).
    Padded: (N, T) input_ids, attention_mask and labels. Packed: (R, W) input_ids, position_ids, labels
    and `sequence` (each token's sequence index, -1 on the tail)."""
    if layout.mode == PADDED:
        width = max(map(len, ids))
        return {"input_ids": torch.tensor([right_pad(s, pad_id, width) for s in ids]),  # (N, T)
                "attention_mask": torch.tensor([right_pad([1] * len(s), 0, width) for s in ids]),  # (N, T)
                "labels": torch.tensor([right_pad(s, IGNORE, width) for s in labels]),  # (N, T)
                "logits_chunk": layout.logits_chunk}
    rows = rows_of([len(s) for s in ids], layout)
    width = max(sum(len(ids[i]) for i in row) for row in rows)
    out = {"input_ids": [], "position_ids": [], "labels": [], "sequence": []}
    for row in rows:
        used = sum(len(ids[i]) for i in row)
        out["input_ids"].append([t for i in row for t in ids[i]] + [pad_id] * (width - used))
        out["position_ids"].append([p for i in row for p in range(len(ids[i]))] + list(range(width - used)))
        out["labels"].append([t for i in row for t in [IGNORE, *labels[i][1:]]] + [IGNORE] * (width - used))
        out["sequence"].append([i for i in row for _ in ids[i]] + [-1] * (width - used))
    return {**{k: torch.tensor(v) for k, v in out.items()}, "logits_chunk": layout.logits_chunk}  # each (R, W)


def right_pad(seq: list[int], value: int, width: int) -> list[int]:
    return seq + [value] * (width - len(seq))


@torch.no_grad()
def keeps_rows_apart(model) -> bool:
    """Whether the model's attention honours restarting position ids: two short sequences scored packed
    in one row give the logits they give alone, to rounding (a model whose attention ignores them lets
    the second sequence see the first, which moves its logits by far more)."""
    gen, vocab = torch.Generator().manual_seed(0), model.get_input_embeddings().num_embeddings
    a, b = (torch.randint(0, vocab, (n,), generator=gen) for n in (5, 4))
    device, was_training = next(model.parameters()).device, model.training
    model.eval()  # no dropout
    try:
        alone = [model(input_ids=s[None].to(device), use_cache=False).logits[0, -len(s):].float() for s in (a, b)]
        positions = torch.cat([torch.arange(5), torch.arange(4)])[None].to(device)
        packed = model(input_ids=torch.cat([a, b])[None].to(device), position_ids=positions,
                       use_cache=False).logits[0, -9:].float()  # (9, V)
    finally:
        model.train(was_training)
    expected = torch.cat(alone)
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 3e-2  # 16-bit kernels round differently
    return bool((packed - expected).abs().max() <= tol * (1 + expected.abs().max()))
