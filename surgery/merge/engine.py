"""The one merge loop: for each planned tensor, read its inputs a block of rows at a time, run the
method's statistics stages then its merge, check the result is finite, cast, and stream it to the
writer (`surgery.merge.outputs`: a model folder or a GGUF file). Working memory is a few blocks per
input whatever the model's size; the output appears only when everything has been written.

Blocks are read a couple ahead in a thread, and written in another. For a method whose statistics
passes weigh as much as its merge (TIES's exact cut-offs), the passes run in a thread of their own, with
their own reader, a few tensors ahead of the merge pass (`Statistics`). The bytes do not depend on it:
each pass still sees its blocks in row order. What a read derives from its block alone (DARE's masks,
SCE's variance) is kept, within a budget of a few blocks, for the tensor's later reads
(`surgery.merge.kept`), and the reading thread takes such work while it is ahead of the merging one
(`Method.prepare`).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from surgery.errors import NumericsError, OutputError, SurgeryError, SurgeryWarning
from surgery.io.format import num_rows, row_numel
from surgery.merge import fused
from surgery.merge.card import Card, spec_card
from surgery.merge.draws import Draws
from surgery.merge.kept import Kept
from surgery.merge.methods.method import Block, Stats
from surgery.merge.outputs import OUTPUTS, provenance, write_side_files  # noqa: F401 - provenance re-exported
from surgery.merge.plan import MergePlan, TensorJob

DEFAULT_SHARD = 5 * 1024**3
DEFAULT_BLOCK = 16 * 1024**2  # small blocks stay in cache and reuse freed pages: faster, see bench/
KEPT_BLOCKS = 8  # values kept between a tensor's reads (DARE's masks, SCE's variance): this many blocks' bytes


def arithmetic_threads(requested: int | None = None) -> int:
    """torch threads for a merge's arithmetic: by default one less than the CPUs this process may use
    (at least one), since the engine reads and writes in threads of its own. On 2 CPUs a DARE-TIES merge
    of 1.6 GB models took 15.1 s with one torch thread against 17.1 s with two (bench/README.md)."""
    if requested is not None:
        return max(1, requested)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus - 1)


class Cancelled(SurgeryError):
    """The merge was cancelled; nothing was written at the output path."""


@dataclass(frozen=True)
class Options:
    shard_size: int = DEFAULT_SHARD
    block_bytes: int = DEFAULT_BLOCK       # working set of one block, all inputs together (`row_bytes`)
    device: str = "cpu"
    force: bool = False
    card: bool = True                      # write README.md, a model card (front matter, method, inputs, spec)
    format: str = "safetensors"            # or "gguf": one file llama.cpp loads (surgery.merge.outputs)
    quant: str = "f16"                     # GGUF only: the type of its matrices (f32, f16, bf16, q8_0)


Progress = Callable[[str, int], None]  # (tensor name, bytes written)


def run_merge(plan: MergePlan, out: str, options: Options = Options(), progress: Progress | None = None,
              cancel: threading.Event | None = None, card: Card | None = None) -> str:
    """Merge into `out` atomically (a folder, or a GGUF file with `options.format`); returns its absolute
    path. The model card is `card`, or by default the plan's spec (with `options.card` off, none)."""
    if options.format not in OUTPUTS:
        raise OutputError(f"output format {options.format!r} is unknown; choose one of {', '.join(OUTPUTS)}")
    output = OUTPUTS[options.format](options)
    inputs = [p for f in plan.folders.values() for p in getattr(f, "inputs", [f.path])]  # a FoldedModel's adapters too
    out = output.check(out, inputs, options.force)
    plan.fell_back.clear()
    card = (card or spec_card(plan.spec, out)) if options.card else None
    with output.open(plan, out, options.force, card) as writer:
        ahead = plan.method.statistics_ahead and options.device == "cpu"
        merging = Prefetcher(plan, options, [(job, *read) for job in plan.jobs
                                             for read in ([] if ahead else reads_of(plan, job, options))
                                             + [(span, True, None) for span in merge_reads(plan, job, options)]])
        statistics = Statistics(plan, options) if ahead else Inline(plan, options, merging)
        try:
            for k, job in enumerate(plan.jobs):
                for block in merge_tensor(plan, job, options, merging, statistics(k)):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"merge into {out!r} cancelled; nothing was written there")
                    writer.write(job.name, block)
                    if progress:
                        progress(job.name, block.numel() * block.element_size())
            writer.finish()
        finally:
            statistics.close()
            merging.close()
            for folder in plan.folders.values():
                folder.close()  # no input file stays open after the merge (reads reopen on demand)
    fallback = plan.method.fallback
    if plan.fell_back:  # the result equals the simpler merge on those tensors: the user should know
        warnings.warn(f"{plan.method.name} fell back to {fallback.what} on {len(plan.fell_back)} of {plan.merged} "
                      f"tensors ({fallback.why})", SurgeryWarning, stacklevel=2)
    return out


def row_bytes(plan: MergePlan, job: TensorJob, options: Options) -> int:
    """Bytes one row of a block of `job` takes: its inputs and the method's block-sized temporaries, in
    float32; or, where the method's compiled kernels read the inputs as stored (`Method.stored_work`),
    the inputs at their stored size (bf16: 2 bytes) and the kernels' temporaries."""
    method, row = plan.method, max(row_numel(job.shape), 1)
    if method.stored_work is None or options.device != "cpu" or not fused.available():
        return row * 4 * (len(job.sources) + method.work)
    stored = sum(2 if _stored_dtype(plan, s) == torch.bfloat16 else 4 for s in job.sources)
    return row * (stored + 4 * method.stored_work)


def _stored_dtype(plan: MergePlan, src) -> torch.dtype | None:
    info = getattr(plan.folders[src.model], "tensors", {}).get(src.name)
    return getattr(info, "dtype", None)


def rows_per_block(plan: MergePlan, job: TensorJob, options: Options) -> int:
    return max(1, options.block_bytes // row_bytes(plan, job, options))


def spans_of(plan: MergePlan, job: TensorJob, options: Options) -> list[tuple[int, int]]:
    rows = num_rows(job.shape)
    step = rows_per_block(plan, job, options)
    return [(r, min(r + step, rows)) for r in range(0, rows, step)] or [(0, 0)]


Read = tuple[tuple[int, int], bool, str | None]  # (rows, whether the merge pass uses them, a kept value's key)


def reads_of(plan: MergePlan, job: TensorJob, options: Options) -> list[Read]:
    """The blocks `statistics` loads for a tensor's statistics passes, in order, each with whether the
    merge pass uses it too (True only for a tensor of one block, which is loaded once) and the key of the
    kept value that spares its rows (`Stage.carried`)."""
    passes = () if job.copy else plan.method.passes_for(job.shared, job.per_model)
    if not passes:
        return []
    spans = spans_of(plan, job, options)
    if len(spans) == 1:
        return [(spans[0], True, None)]
    return [(span, False, stage.carried) for stage in passes for span in spans]


def merge_reads(plan: MergePlan, job: TensorJob, options: Options) -> list[tuple[int, int]]:
    """The blocks the merge pass loads, in order: none where the statistics passes already hold the
    tensor's one block."""
    if job.copy or any(final for _, final, _ in reads_of(plan, job, options)):
        return []
    return spans_of(plan, job, options)


Computed = tuple[Stats, Block | None]  # a tensor's statistics, and its one block when it has only one


def statistics(plan: MergePlan, job: TensorJob, options: Options, load=None) -> Computed:
    """The totals of the method's statistics passes over tensor `job.name`, each pass over every block
    in row order (running counts live in a per-pass copy of the statistics so far); a pass whose
    `needed` says no is skipped and its reads dropped. `load(job, span)` supplies blocks in the order
    `reads_of` lists."""
    load = load or (lambda j, span: _load(plan, j, span, options.device))
    stats: Stats = {}
    reads = reads_of(plan, job, options)
    if not reads:
        return stats, None
    spans = spans_of(plan, job, options)
    cached = load(job, spans[0]) if len(spans) == 1 else None
    for stage in plan.method.passes_for(job.shared, job.per_model):
        if stage.needed is not None and not stage.needed(job.shared, job.per_model, job.shape, stats):
            for span in spans if cached is None else ():
                getattr(load, "skip", lambda j, s: None)(job, span)  # the prefetcher drops this pass's reads
            continue
        partial: Stats = {}
        running = dict(stats)  # one per pass: blocks come in row order, running counts live here
        for span in spans:
            block = cached or load(job, span)
            for key, value in stage.run(block, running).items():
                partial[key] = partial[key] + value if key in partial else value
        stats.update(partial)
    return stats, cached


def merge_tensor(plan: MergePlan, job: TensorJob, options: Options, load=None,
                 computed: Computed | None = None) -> Iterator[torch.Tensor]:
    """The output tensor `job.name`, block by block, in the output dtype.

    `computed` is the tensor's `statistics` (computed here, with `load`, when not given); `load(job, span)`
    supplies the merge pass's blocks in the order `merge_reads` lists (the engine prefetches them)."""
    load = load or (lambda j, span: _load(plan, j, span, options.device))
    if job.copy:
        rows = num_rows(job.shape)
        yield _read(plan, job.base or job.models[0], (0, rows), None)
        return
    method = plan.method
    stats, cached = computed if computed is not None else statistics(plan, job, options, load)
    if method.fallback is not None and method.fallback.taken(job.shared, stats):
        plan.fell_back.append(job.name)
    running = dict(stats)
    for span in spans_of(plan, job, options):
        block = cached or load(job, span)
        out = method.merge(block, running)
        _check_finite(plan, job, block, out, span)
        yield out.to(device="cpu", dtype=job.dtype)


class Inline:
    """Each tensor's statistics passes, run when the merge pass asks for them, reading through the merge
    pass's own prefetcher (its requests list the passes' reads before the merge pass's)."""

    def __init__(self, plan: MergePlan, options: Options, load: Prefetcher):
        self.plan, self.options, self.load = plan, options, load

    def __call__(self, k: int) -> Computed:
        return statistics(self.plan, self.plan.jobs[k], self.options, self.load)

    def close(self) -> None:
        pass


class Statistics:
    """Runs each tensor's statistics passes in a thread of its own (reading through a prefetcher of its
    own), AHEAD tensors before the merge pass asks for them, for methods whose passes weigh as much as
    their merge (`Method.statistics_ahead`: TIES's exact selection). The passes and the merge then each
    get about one CPU: dense TIES on 1.6 GB models went from 22-23 s to 16-17 s on 2 CPUs. Where the
    passes are light (DARE's L1 norms) the extra threads cost more in contention for Python's lock than
    they overlap, so those methods keep them inline (bench/README.md). Tensors must be asked for in plan
    order; at most AHEAD + 1 results (each holding at most one block) wait at a time."""

    AHEAD = 2

    def __init__(self, plan: MergePlan, options: Options):
        self.plan, self.options, self.next = plan, options, 0
        self.reads = Prefetcher(plan, options, [(job, *read) for job in plan.jobs
                                                for read in reads_of(plan, job, options)])
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="surgery-stats")
        self.pending: deque = deque()

    def __call__(self, k: int) -> Computed:
        while self.next <= min(k + self.AHEAD, len(self.plan.jobs) - 1):
            self.pending.append(self.pool.submit(statistics, self.plan, self.plan.jobs[self.next], self.options,
                                                 self.reads))
            self.next += 1
        return self.pending.popleft().result()

    def close(self) -> None:
        """Stop: queued tensors are dropped, the running one ends at its next read (its reads are cancelled)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.reads.close()
        self.pool.shutdown(wait=True)


class Prefetcher:
    """Loads the next blocks in a worker thread while the current one is merged (reads and torch
    kernels release the GIL). Blocks must be asked for in the order of `requests`. Two blocks ahead
    rather than one: blocks of unequal cost then even out instead of stalling one thread or the other."""

    DEPTH = 2

    def __init__(self, plan: MergePlan, options: Options,
                 requests: list[tuple[TensorJob, tuple[int, int], bool, str | None]]):
        self.plan, self.options, self.requests, self.i = plan, options, requests, 0
        rereads = {r[2] for r in requests} == {True, False}  # blocks read by a statistics pass, then again
        self.kept = Kept(KEPT_BLOCKS * options.block_bytes) if rereads else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="surgery-read")
        self.ahead = deque(f for f in (self._submit(k) for k in range(self.DEPTH)) if f is not None)

    def _submit(self, i: int):
        if i >= len(self.requests):
            return None
        job, span, final, carried = self.requests[i]
        return self.pool.submit(_load, self.plan, job, span, self.options.device, final, self.kept,
                                lambda: self.i <= i, carried)  # the consumer has not asked for this block yet

    def __call__(self, job: TensorJob, span: tuple[int, int]) -> Block:
        return self._next(job, span).result()

    def skip(self, job: TensorJob, span: tuple[int, int]) -> None:
        """Drop the next request (a statistics pass the engine found it does not need): a read not yet
        started is cancelled, one under way is left to finish unused."""
        self._next(job, span).cancel()

    def _next(self, job: TensorJob, span: tuple[int, int]):
        want = self.requests[self.i]
        if want[0] is not job or want[1] != span:
            raise RuntimeError(f"prefetch order broken: expected {want[0].name} {want[1]}, got {job.name} {span}")
        future, self.i = self.ahead.popleft(), self.i + 1
        following = self._submit(self.i + self.DEPTH - 1)
        if following is not None:
            self.ahead.append(following)
        return future

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _load(plan: MergePlan, job: TensorJob, span: tuple[int, int], device: str, final: bool = True,
          kept: Kept | None = None, ahead: Callable[[], bool] = lambda: True, carried: str | None = None) -> Block:
    """Rows `span` of every input of `job` as a Block; `final`: the merge pass reads it (not only a
    statistics pass, after which the merge pass reads it again and may take what it derived from `kept`);
    `ahead()`: whether the block's consumer is still busy with an earlier one (see `Method.prepare`);
    `carried`: the key of the one kept value the pass needs (`Stage.carried`): where it is kept, the block
    holds no rows and nothing is read."""
    if carried is not None and kept is not None and kept.get((job.name, span, carried)) is not None:
        return Block(job.name, job.shape, span, None, (), job.per_model, job.shared, None, kept, final)
    base = _read(plan, job.base, span, device) if job.base else None
    models = tuple(_read(plan, s, span, device) for s in job.models)
    draws = Draws(plan.spec.seed, job.name, job.shape, len(job.models), kept, final) if plan.method.random else None
    block = Block(job.name, job.shape, span, base, models, job.per_model, job.shared, draws, kept, final)
    if plan.method.prepare is not None:
        plan.method.prepare(block, final, ahead)  # e.g. task vectors and DARE's masks, here in the reading thread
    return block


def _read(plan: MergePlan, src, span: tuple[int, int], device: str | None) -> torch.Tensor:
    """Rows `span` of an input in its stored dtype, on `device` (the block converts them to float32
    where a method asks: a compiled kernel reads bf16 rows as they are)."""
    t = plan.folders[src.model].read(src.name, span)
    return t if device is None else t.to(device=device)


def _check_finite(plan: MergePlan, job: TensorJob, block: Block, out: torch.Tensor, span: tuple[int, int]) -> None:
    if torch.isfinite(out.sum()) or torch.isfinite(out).all():  # one cheap pass; the exact check only if it fails
        return
    bad = [s.model for s, t in zip(job.sources, ((block.base,) if block.base is not None else ()) + block.models)
           if not torch.isfinite(t).all()]
    cause = f"input(s) {bad} already hold NaN/Inf there" if bad else \
        "the inputs are finite, so the method's parameters produced it (e.g. weights too large)"
    raise NumericsError(f"{plan.method.name} produced NaN or Inf in tensor {job.name!r} (rows {span[0]}-{span[1]}); "
                        f"{cause}. Nothing was written.")
