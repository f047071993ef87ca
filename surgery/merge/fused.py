"""The TIES family's combine in one pass over a block, compiled (numba), on CPU.

`task_vectors.combine` with a sign election is some twenty torch operations over the block: sparsify
and scale each task vector, sum them for the election, compare, clamp and add each for the agreeing
sum, and the same again for the divisor. Each reads and writes whole block-sized float32 buffers, so
the combine costs about ten times the memory traffic of its inputs and output. Here the block is
computed a chunk of a couple of thousand entries at a time (`fused_kernel`), its scratch in cache,
each input's delta read once and the output written once: 5-10x less time than the torch path for the
combine of a 4M-entry block of three models, and with the compiled counting passes of the selection
(`selection_kernel`) a dense TIES or DARE-TIES merge of 1.6 GB models about 1.3x faster
(bench/fused.py, bench/README.md).

Every float32 operation is the one the torch path does, in the same order, so the two give the same
bits (tests/surgery/test_fused.py): the torch path stays the reference, and serves CUDA, blocks in
another layout, and installs without numba. `SURGERY_FUSED=0` in the environment turns this off.

The block is cut into contiguous spans, one per torch thread, each computed with the GIL released:
the spans are elementwise, so the result does not depend on the thread count.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

MIN_SPAN = 1 << 16  # entries: below this a span is not worth a thread


@dataclass(frozen=True)
class Survivors:
    """How one input's weighted task vector is made from its delta d, entry by entry: d, times a 0/1
    mask where given, kept only where |.| > threshold where given, times scale where it is not 1 (each
    step the torch path's, in its order)."""

    delta: torch.Tensor                 # (r, ...) float32
    mask: torch.Tensor | None = None    # (r, ...) uint8 or bool 0/1
    threshold: float | None = None      # hardshrink's
    scale: float = 1.0


def enabled() -> bool:
    """Whether compiled kernels may be used at all: `SURGERY_FUSED=0` in the environment says no (the
    combine here and the selection's counts alike)."""
    return os.environ.get("SURGERY_FUSED", "1") != "0"


def usable(base: torch.Tensor, inputs: Sequence[Survivors]) -> bool:
    """Whether the compiled combine takes this block: float32 on CPU, contiguous, and numba installed."""
    if not enabled() or not inputs:
        return False
    floats = [base, *(s.delta for s in inputs)]
    masks = [s.mask for s in inputs if s.mask is not None]
    return (all(t.dtype == torch.float32 for t in floats) and all(m.dtype in (torch.uint8, torch.bool) for m in masks)
            and all(t.device.type == "cpu" and t.is_contiguous() and t.shape == base.shape for t in floats + masks)
            and _kernel() is not None)


def elect_and_agree(base: torch.Tensor, inputs: Sequence[Survivors], weights: Sequence[float], by_count: bool,
                    normalize: bool, lambda_: float) -> torch.Tensor:
    """base + lambda * (sum of the task vectors' entries whose sign is the elected one), divided by the
    sum of the agreeing inputs' weights (1 where none agree) with `normalize`; the election by summed
    mass, or by count of signs. The same bits as `task_vectors._agreeing` and what follows it."""
    kernel = _kernel()
    n = base.numel()
    flat = lambda t: t.reshape(-1).numpy()  # noqa: E731  (views: the tensors are contiguous)
    empty = np.empty(0, np.uint8)
    deltas = tuple(flat(s.delta) for s in inputs)
    masks = tuple(empty if s.mask is None else flat(s.mask).view(np.uint8) for s in inputs)
    thresholds = np.array([-1.0 if s.threshold is None else s.threshold for s in inputs], np.float32)
    scales = np.array([s.scale for s in inputs], np.float32)
    w = np.array(weights, np.float32)
    out = torch.empty_like(base)
    b, o = flat(base), flat(out)

    def span(lo: int, hi: int) -> None:
        kernel(b, deltas, masks, thresholds, scales, w, by_count, normalize, np.float32(lambda_), o, lo, hi)

    spans = _spans(n, torch.get_num_threads())
    if len(spans) == 1:
        span(*spans[0])
    else:
        list(_pool(len(spans)).map(lambda s: span(*s), spans))
    return out


def _spans(n: int, threads: int) -> list[tuple[int, int]]:
    parts = max(1, min(threads, n // MIN_SPAN))
    step = -(-n // parts)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)] or [(0, 0)]


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="surgery-fused")


@cache
def compiled(module: str):
    """The module `surgery.merge.<module>` of numba-compiled kernels (compiled on first use and cached
    on disk by numba), or None where numba is not installed."""
    try:
        return importlib.import_module(f"surgery.merge.{module}")
    except ImportError as e:
        if e.name not in ("numba", "llvmlite"):
            raise
        return None


def _kernel():
    """The compiled combine, or None without numba."""
    kernels = compiled("fused_kernel")
    return None if kernels is None else kernels.combine
