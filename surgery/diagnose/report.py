"""Plain-text reports for the terminal: a merge plan (for --dry-run) and a checkpoint inspection."""

from __future__ import annotations

import math
import os
from collections import Counter

from surgery.diagnose.inspect import Inspection
from surgery.io.format import num_rows
from surgery.io.reader import ModelFolder
from surgery.merge.engine import Options, row_bytes, rows_per_block
from surgery.merge.plan import MergePlan


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def peak_working_set(plan: MergePlan, options: Options) -> int:
    """Largest working set of one block (inputs plus the method's temporaries)."""
    peak = 0
    for job in plan.jobs:
        step = min(num_rows(job.shape), rows_per_block(plan, job, options))
        peak = max(peak, step * row_bytes(plan, job, options))
    return peak


def describe_plan(plan: MergePlan, options: Options) -> str:
    passes = 1 + len(plan.method.stages)
    lines = [
        f"spec        {plan.file} (sha256 {plan.spec.digest()[:12]})",
        f"method      {plan.method.name}: {plan.method.summary}",
        "models      " + "\n            ".join(f"{k} -> {v.path}" for k, v in plan.folders.items()),
        f"tensors     {len(plan.jobs)} to write, {len(plan.out_layers)} layers",
        f"read        {human(plan.read_bytes)} (statistics stages re-read large tensors: up to {passes} passes)",
        f"write       {human(plan.write_bytes)} in shards of at most {human(options.shard_size)}",
        f"peak memory about {human(peak_working_set(plan, options))} of working set "
        f"(block size {human(options.block_bytes)}) plus the Python runtime",
    ]
    lines += [f"warning     {w}" for w in plan.warnings]  # parameters ignored or kept for mergekit compatibility
    if plan.vocab is not None:
        lines += plan.vocab.lines()  # pre-flight: vocabulary sizes, mismatches, chat templates
    if plan.method.fallback is not None:
        lines.append(fallback_line(plan))
    return "\n".join(lines)


def fallback_line(plan: MergePlan) -> str:
    """How many tensors take the method's fallback, where the headers tell (their inputs are the same
    bytes of the same files); otherwise that the merge reports it."""
    fallback = plan.method.fallback
    same = sum(not j.copy and _same_bytes(plan, j) for j in plan.jobs)
    if same:
        return (f"fallback    {same} of {plan.merged} tensors fall back to {fallback.what}: their inputs are the "
                "same files")
    return f"fallback    tensors fall back to {fallback.what} when {fallback.why}; the merge reports how many"


def _same_bytes(plan: MergePlan, job) -> bool:
    """Every input of `job` is read unchanged (a plain model folder) from the same bytes of one file."""
    folders = [plan.folders[s.model] for s in job.sources]
    if any(type(f) is not ModelFolder for f in folders):  # folded or vocabulary-aligned: reads differ
        return False
    places = {(os.path.realpath(plan.info(s).file), plan.info(s).start) for s in job.sources}
    return len(places) == 1


def describe_inspection(r: Inspection, tensors: bool = True) -> str:
    lines = [f"{r.path}", f"  files       {', '.join(r.files)}",
             f"  parameters  {r.parameters:,} ({human(r.nbytes)})",
             "  dtypes      " + ", ".join(f"{k}: {v:,}" for k, v in r.dtypes.items())]
    if r.stored:
        counts = Counter()
        for name, dtype, shape in r.tensors:
            counts[r.stored.get(name, dtype)] += math.prod(shape)
        lines.append("  stored      " + ", ".join(f"{k}: {v:,}" for k, v in counts.most_common()))
    if r.config:
        arch = ", ".join(r.config.get("architectures", []) or [r.config.get("model_type", "?")])
        lines.append(f"  config      {arch}, {r.config.get('num_hidden_layers', r.config.get('n_layer', '?'))} layers")
    if r.adapter:
        lines.append("  adapter     " + "\n              ".join(f"{k}: {v}" for k, v in r.adapter.items()))
    if r.provenance:
        lines.append("  provenance  " + "\n              ".join(
            f"{k.removeprefix('surgery.')}: {v if len(v) < 200 else v[:200] + '...'}"
            for k, v in sorted(r.provenance.items())))
    if tensors:
        width = max((len(n) for n, _, _ in r.tensors), default=0)
        lines.append("  tensors")
        lines += [f"    {n:<{width}}  {d:<8}  {list(s)}" + (f"  ({r.stored[n]})" if n in r.stored else "")
                  for n, d, s in r.tensors]
    return "\n".join(lines)
