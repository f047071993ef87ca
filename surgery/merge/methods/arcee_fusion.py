"""Arcee Fusion: keep the model's change only where it matters. Each entry's importance is its change
|m - base| times the KL divergence of softmax(m) from softmax(base) along its row; entries whose
importance reaches median + 1.5 IQR (an outlier fence over the whole tensor) take the model's value,
the rest keep the base's (Arcee AI's method, introduced with mergekit 0.1: https://arcee.ai; no paper).

Rows are softmaxed whole, so blocks of rows suffice; the three quartiles are exact order statistics of
the importance, found with two histogram stages (`surgery.merge.selection`). mergekit takes them, as
here, at sorted positions floor(q (n - 1)), but from a random sample of a million entries when a
tensor has more: there this method's exact quartiles differ from mergekit's estimates (which vary
from run to run)."""

import torch
import torch.nn.functional as F

from surgery.merge.methods.method import Block, Method, Stage, Stats
from surgery.merge.selection import bin_of_rank, signed_high_histogram, signed_low_histogram, signed_value_of_rank

QUARTILES = (0.25, 0.5, 0.75)
EPS = 1e-8


def importance(block: Block) -> torch.Tensor:
    """(r, ...) |m - base| times KL(softmax(m) || softmax(base)) of the entry's row, as mergekit computes it."""
    def make():
        base, model = block.base, block.models[0]
        p = F.softmax(model, dim=-1) + EPS
        q = F.softmax(base, dim=-1) + EPS
        kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
        return (model - base).abs() * kl

    return block.cached("importance", make)


def _ranks(numel: int) -> list[int]:
    positions = torch.tensor(QUARTILES) * (numel - 1)  # float32, as mergekit's quantile positions
    return [int(r) for r in positions.long()]


def histogram(block: Block, stats: Stats) -> Stats:
    return {"hi": signed_high_histogram(importance(block))}


def refine(block: Block, stats: Stats) -> Stats:
    bins = {bin_of_rank(stats["hi"], r) for r in _ranks(block.numel)}
    return {f"lo{b}": signed_low_histogram(importance(block), b) for b in bins}


def threshold(stats: Stats, numel: int) -> torch.Tensor:
    """median + 1.5 (q3 - q1) of the importance, in float32 as mergekit computes it."""
    values = []
    for r in _ranks(numel):
        b = bin_of_rank(stats["hi"], r)
        values.append(signed_value_of_rank(stats["hi"], stats[f"lo{b}"], b, r))
    q1, median, q3 = torch.tensor(values)
    return median + 1.5 * (q3 - q1)


def merge(block: Block, stats: Stats) -> torch.Tensor:
    if block.numel == 0:
        return block.base.clone()
    keep = (importance(block) >= threshold(stats, block.numel)).float()
    return block.base + (block.models[0] - block.base) * keep


METHOD = Method("arcee_fusion", merge, "take the model's changes of outlying importance, keep the base elsewhere",
                "https://arcee.ai", max_models=1, stages=(Stage(histogram), Stage(refine)), work=5)
