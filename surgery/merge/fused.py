"""The task-vector family's work on CPU, compiled (numba), reading the inputs' rows as stored.

`task_vectors.combine` with a sign election is some twenty torch operations over the block: sparsify
and scale each task vector, sum them for the election, compare, clamp and add each for the agreeing
sum, and the same again for the divisor. Each reads and writes whole block-sized float32 buffers, so
the combine costs about ten times the memory traffic of its inputs and output. Here the block is
computed a chunk of a couple of thousand entries at a time (`fused_kernel`), its scratch in cache,
each input read once and the output written once.

The kernels read the rows as the checkpoint stores them (`Sources`: bf16 as its uint16 bits, or
float32), so a bf16 model is never copied to float32 whole: each chunk's task vector m - base is made
in scratch. Besides the combine: the task vectors themselves where a method needs them whole (TIES's
selection), whether a task vector is +0 throughout a block, DARE's L1 sums before and after its masks,
and SCE's variance, selected energies and merge. With the compiled counting passes of the selection
(`selection_kernel`) a DARE-TIES merge of three 1.6 GB bf16 models took 8.3 s where the torch path took
19.4 (bench/fused.py, bench/README.md).

Every float32 operation is the one the torch path does, in the same order, so the two give the same
bits (tests/surgery/test_fused.py): the torch path stays the reference, and serves CUDA, blocks in
another layout, and installs without numba. `SURGERY_FUSED=0` in the environment turns this off. The
L1 sums are float64 in both, added in different orders: they agree to float64 rounding (about 1e-16
of the sum), so the float32 scale made of their ratio is the same but where the ratio lies that close
to a float32 rounding boundary.

The combine cuts the block into contiguous spans, one per torch thread, each computed with the GIL
released: the spans are elementwise, so the result does not depend on the thread count.
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

    mask: torch.Tensor | None = None    # (r, ...) uint8 or bool 0/1
    threshold: float | None = None      # hardshrink's
    scale: float = 1.0


@dataclass(frozen=True)
class Sources:
    """A block's rows as the kernels read them: flat views of the stored rows (bf16 as its uint16 bits,
    or float32), the models all of one dtype."""

    base: np.ndarray
    models: tuple[np.ndarray, ...]
    shape: torch.Size


STORED = (torch.bfloat16, torch.float32)  # the dtypes the kernels read as they are


def enabled() -> bool:
    """Whether compiled kernels may be used at all: `SURGERY_FUSED=0` in the environment says no (the
    kernels here and the selection's counts alike)."""
    return os.environ.get("SURGERY_FUSED", "1") != "0"


def available() -> bool:
    """Whether the compiled kernels run here: enabled, and numba installed."""
    return enabled() and _kernels() is not None


def sources(base: torch.Tensor | None, models: Sequence[torch.Tensor]) -> Sources | None:
    """The rows for the kernels, or None where they cannot take them: kernels off or numba missing, no
    base, another device or layout, a dtype they do not read (convert to float32 and ask again), or
    models of mixed dtypes."""
    if base is None or not available() or not readable([base, *models]):
        return None
    return Sources(flat(base), tuple(flat(m) for m in models), base.shape)


def readable(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the kernels read these rows as they are: on CPU, contiguous, of one shape, each of a dtype they
    read (`STORED`), and all but the first (a base) of one dtype."""
    return (all(t.device.type == "cpu" and t.is_contiguous() and t.shape == tensors[0].shape and t.dtype in STORED
                for t in tensors) and len({t.dtype for t in tensors[1:]}) <= 1)


def flat(t: torch.Tensor) -> np.ndarray:
    """A contiguous CPU tensor of a dtype the kernels read (`STORED`) as the flat array they read: bf16 as its
    uint16 bits."""
    t = t.reshape(-1)  # a view: t is contiguous
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _mask_ok(mask: torch.Tensor | None, src: Sources) -> bool:
    return mask is None or (mask.dtype in (torch.uint8, torch.bool) and mask.device.type == "cpu"
                            and mask.is_contiguous() and mask.shape == src.shape)


def _mask(mask: torch.Tensor | None) -> np.ndarray:
    return np.empty(0, np.uint8) if mask is None else mask.reshape(-1).numpy().view(np.uint8)


def usable(src: Sources | None, inputs: Sequence[Survivors]) -> bool:
    """Whether the compiled combine takes this block: sources the kernels read, and masks they read."""
    return src is not None and bool(inputs) and all(_mask_ok(s.mask, src) for s in inputs)


def elect_and_agree(src: Sources, live: Sequence[int], inputs: Sequence[Survivors], weights: Sequence[float],
                    by_count: bool, normalize: bool, lambda_: float) -> torch.Tensor:
    """base + lambda * (sum of the task vectors' entries whose sign is the elected one), divided by the
    sum of the agreeing inputs' weights (1 where none agree) with `normalize`; the election by summed
    mass, or by count of signs; the task vectors those of models `live`, made as `inputs` say. The same
    bits as `task_vectors._agreeing` and what follows it."""
    kernel = _kernels().combine
    models = tuple(src.models[i] for i in live)
    masks = tuple(_mask(s.mask) for s in inputs)
    thresholds = np.array([-1.0 if s.threshold is None else s.threshold for s in inputs], np.float32)
    scales = np.array([s.scale for s in inputs], np.float32)
    w = np.array(weights, np.float32)
    out = torch.empty(src.shape, dtype=torch.float32)
    o = out.reshape(-1).numpy()

    def span(lo: int, hi: int) -> None:
        kernel(src.base, models, masks, thresholds, scales, w, by_count, normalize, np.float32(lambda_), o, lo, hi)

    each_span(span, out.numel())
    return out


def delta(src: Sources, i: int) -> torch.Tensor:
    """Model i's rows less the base's, in float32: the torch path's `m - base`, the same bits."""
    out = torch.empty(src.shape, dtype=torch.float32)
    _kernels().deltas(src.base, src.models[i], out.reshape(-1).numpy())
    return out


def changed(src: Sources, i: int) -> bool:
    """Whether model i's task vector is anything but +0 somewhere in the block."""
    return bool(_kernels().changed(src.base, src.models[i]))


def l1_sums(src: Sources, i: int, mask: torch.Tensor | None, threshold: float | None) -> tuple[float, float] | None:
    """(sum of |d|, sum of |d| over the survivors) of model i's task vector d in float64, the survivors
    those where `mask` is 1 (if given) and |d| > `threshold` (if given); None where the kernel cannot
    read the mask. The torch path's `task_vectors.total` gives the same sums up to float64 rounding."""
    if not _mask_ok(mask, src):
        return None
    before, after = _kernels().l1_sums(src.base, src.models[i], _mask(mask),
                                       np.float32(-1.0 if threshold is None else threshold))
    return float(before), float(after)


def _spans(n: int, threads: int) -> list[tuple[int, int]]:
    parts = max(1, min(threads, n // MIN_SPAN))
    step = max(1, -(-n // parts))  # an empty block is one empty span
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


def _kernels():
    """The compiled kernels' module, or None without numba."""
    return compiled("fused_kernel")


def total(x: torch.Tensor) -> float | None:
    """The sum of a float32 block in float64, or None where the kernels cannot read it. The torch path's
    `task_vectors.total` gives the same up to float64 rounding."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous() or not available():
        return None
    return float(_kernels().total(x.reshape(-1).numpy()))


def variance(src: Sources) -> torch.Tensor:
    """Per entry, the population variance of the models' task vectors (float32): `sce.welford_variance`
    of them, the same bits."""
    out = torch.empty(src.shape, dtype=torch.float32)
    _kernels().variance(src.base, src.models, out.reshape(-1).numpy())
    return out


@dataclass(frozen=True)
class Delta:
    """Model i's task vector over a block, not made: the selection's counting passes read it from the
    stored rows chunk by chunk (`selection_kernel`'s `*_of` kernels)."""

    src: Sources
    i: int

    def numel(self) -> int:
        return len(self.src.base)

    def high_counts(self) -> np.ndarray:
        return compiled("selection_kernel").high_counts_of(self.src.base, self.src.models[self.i])

    def low_counts(self, first: int) -> np.ndarray:
        return compiled("selection_kernel").low_counts_of(self.src.base, self.src.models[self.i], first)

    def equal_count(self, magnitude: int) -> int:
        return int(compiled("selection_kernel").equal_count_of(self.src.base, self.src.models[self.i], magnitude))


@dataclass(frozen=True)
class Selected:
    """SCE's selection over a block: the entries whose variance is above `threshold`, or those of a 0/1
    `mask` (the block where the tie quota fills); neither given: every entry."""

    variance: torch.Tensor | None = None  # (r, ...) float32
    threshold: float = 0.0
    mask: torch.Tensor | None = None      # (r, ...) bool or uint8


def _selected(src: Sources, sel: Selected) -> tuple[np.ndarray, np.float32, np.ndarray] | None:
    var = sel.variance
    if sel.mask is not None:
        var = None  # the mask says it all
    elif var is not None and not (var.dtype == torch.float32 and var.device.type == "cpu" and var.is_contiguous()
                                  and var.shape == src.shape):
        return None
    if not _mask_ok(sel.mask, src):
        return None
    flat = np.empty(0, np.float32) if var is None else var.reshape(-1).numpy()
    return flat, np.float32(sel.threshold), _mask(sel.mask)


def sce_energies(src: Sources, sel: Selected) -> list[float] | None:
    """Each model's sum of squares of its selected task vector, in float64; None where the kernel cannot
    read the selection. `sce.energy`'s torch path gives the same sums up to float64 rounding."""
    given = _selected(src, sel)
    if given is None:
        return None
    return [float(s) for s in _kernels().sce_energies(src.base, src.models, *given)]


def sce_merge(src: Sources, sel: Selected, weights: Sequence[float]) -> torch.Tensor | None:
    """SCE's merge of the block (`sce.merge`'s bits), or None where the kernel cannot read the selection."""
    given = _selected(src, sel)
    if given is None:
        return None
    kernel, w = _kernels().sce_merge, np.array(weights, np.float32)
    out = torch.empty(src.shape, dtype=torch.float32)
    o = out.reshape(-1).numpy()

    def span(lo: int, hi: int) -> None:
        kernel(src.base, src.models, *given, w, o, lo, hi)

    each_span(span, out.numel())
    return out


def each_span(span, n: int) -> None:
    """span(lo, hi) over contiguous spans of [0, n), one per torch thread, each in a thread of the pool."""
    spans = _spans(n, torch.get_num_threads())
    if len(spans) == 1:
        span(*spans[0])
    else:
        list(_pool(len(spans)).map(lambda s: span(*s), spans))
