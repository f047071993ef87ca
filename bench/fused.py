"""Benchmark the compiled TIES-family combine (surgery/merge/fused.py) against the torch path it
replaces on CPU, side by side in one run: first on one block in this process, then on whole merges in
fresh processes with `SURGERY_FUSED=0` and without it, order alternating, outputs compared byte for byte.

    .venv/bin/python bench/fused.py                    # block + whole merges on bench/run.py's full-size models
    .venv/bin/python bench/fused.py --quick            # 2 layers, vocab 16384
    .venv/bin/python bench/fused.py --merges none      # the block only (no models needed)

The block: 4M entries, a base and three models (the base plus N(0, 1) noise) stored in float32 or
bf16, weights 1, normalised; the torch path converts them to float32 and subtracts, the compiled one
reads them as stored; `ties` with a hardshrink threshold (density 0.5's cut-off), `dare_ties` with a
uint8 mask and a rescale, `ties_count` with the election by count. Best of --repeat calls each, 1 and
2 threads.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from functools import partial

import run  # bench/run.py: the model builder, the specs and the child-process measurements
from run import BIN, RESULTS, measure

CASES = ("ties", "dare_ties", "ties_count")


def block_inputs(case: str, n: int, stored):
    """A base, three models (base + N(0, 1) noise) stored in `stored`, and how each task vector is made."""
    import torch

    from surgery.merge.fused import Survivors

    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=g).to(stored)
    models = [(base.float() + torch.randn(n, generator=g)).to(stored) for _ in range(3)]
    if case == "dare_ties":
        masks = [(torch.rand(n, generator=g) < 0.5).view(torch.uint8) for _ in range(3)]
        return base, models, [Survivors(m, None, 2.0) for m in masks]
    return base, models, [Survivors(None, 0.6745, 1.0)] * 3  # |N(0, 1)|'s median: density 0.5


def torch_combine(base, models, inputs, by_count: bool):
    """The torch path of task_vectors.combine for these inputs (weights 1, normalised, lambda 1), from
    the stored rows: float32 copies, the deltas, the combine."""
    from surgery.merge.methods import task_vectors

    b = base.float()
    tvs = [task_vectors._applied(m.float() - b, s, fresh=False) for m, s in zip(models, inputs)]
    mixed, divisor = task_vectors._agreeing([1.0] * len(tvs), tvs, "count" if by_count else "sum", True)
    return mixed.div_(divisor).add_(b)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_block(n: int, repeat: int) -> list[str]:
    import torch

    from surgery.merge import fused

    rows = ["| case | stored | threads | torch ms | fused ms | speed-up | same bits |",
            "|---|---|---:|---:|---:|---:|---|"]
    for case, stored in ((c, s) for c in CASES for s in (torch.float32, torch.bfloat16)):
        base, models, inputs = block_inputs(case, n, stored)
        by_count = case == "ties_count"
        slow = partial(torch_combine, base, models, inputs, by_count)
        fast = partial(fused.elect_and_agree, fused.sources(base, models), range(3), inputs, [1.0] * 3, by_count,
                       True, 1.0)
        same = torch.equal(slow().view(torch.int32), fast().view(torch.int32))
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t, f = [], []
            for _ in range(2):  # alternating, best of each
                t.append(best(slow, repeat))
                f.append(best(fast, repeat))
            name = str(stored).removeprefix("torch.")
            rows.append(f"| {case} | {name} | {threads} | {min(t) * 1e3:.1f} | {min(f) * 1e3:.1f} "
                        f"| {min(t) / min(f):.2f}x | {'yes' if same else 'NO'} |")
    return rows


def digest(folder: str) -> str:
    h = hashlib.sha256()
    for path in run.weight_files(folder):
        with open(path, "rb") as f:
            while chunk := f.read(64 * 1024**2):
                h.update(chunk)
    return h.hexdigest()[:12]


def bench_merges(args: argparse.Namespace) -> list[str]:
    shape = run.shape_of(args)
    fts = list(run.input_set(args.inputs))
    dirs = run.build_all(shape, fts, args)
    work = os.path.join(RESULTS, "fused")
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    rows = ["| method | torch wall s | fused wall s | speed-up | torch CPU s | fused CPU s | torch RSS GB | "
            "fused RSS GB | same bytes |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for method in args.merges.split(","):
        s = run.spec(method, dirs["base"], [dirs[t] for t in fts])
        path = run.write_spec(f"{args.inputs}-{method}", s, work)
        run.warm([f for d in run.spec_inputs(s) for f in run.weight_files(d)])
        got: dict[str, list] = {"0": [], "1": []}
        hashes: dict[str, str] = {}
        for r in range(args.runs):
            for flag in (("0", "1") if r % 2 == 0 else ("1", "0")):
                out = os.path.join(work, f"out-{flag}")
                shutil.rmtree(out, ignore_errors=True)
                run.settle()
                os.environ["SURGERY_FUSED"] = flag
                m = measure([os.path.join(BIN, "surgery"), "merge", path, out, "--quiet"],
                            os.path.join(work, "logs", f"{method}-{flag}-{r}.log"))
                if m.exit_code:
                    sys.exit(f"error: {method} with SURGERY_FUSED={flag} failed; see {m.log}")
                got[flag].append(m)
                hashes[flag] = digest(out)
        os.environ.pop("SURGERY_FUSED", None)
        for flag in hashes:
            shutil.rmtree(os.path.join(work, f"out-{flag}"))
        t, f = (min(got[k], key=lambda m: m.wall_s) for k in ("0", "1"))
        rows.append(f"| {method} | {t.wall_s:.1f} | {f.wall_s:.1f} | {t.wall_s / f.wall_s:.2f}x "
                    f"| {t.user_s + t.sys_s:.1f} | {f.user_s + f.sys_s:.1f} | {t.maxrss_kib * 1024 / 1e9:.2f} "
                    f"| {f.maxrss_kib * 1024 / 1e9:.2f} | {'yes' if hashes['0'] == hashes['1'] else 'NO'} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description="The compiled TIES combine against the torch path (bench/README.md).")
    p.add_argument("--entries", type=int, default=1 << 22, help="entries in the block (default 4M)")
    p.add_argument("--repeat", type=int, default=5, help="calls per timing of the block (the best counts)")
    p.add_argument("--merges", default="ties,dare_ties", help="methods merged whole, or 'none'")
    p.add_argument("--inputs", default="dense", help="bench/run.py's input set for the merges")
    p.add_argument("--runs", type=int, default=2, help="runs of each engine per merge, order alternating")
    p.add_argument("--quick", action="store_true", help="small models: 2 layers, vocab 16384")
    p.add_argument("--layers", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--shard-mb", type=int, default=1024)
    args = p.parse_args()
    print(f"load: {run.load_now()['uptime']}", flush=True)
    print("\n".join(bench_block(args.entries, args.repeat)), flush=True)
    if args.merges != "none":
        print("\n".join(bench_merges(args)), flush=True)
    print(f"load: {run.load_now()['uptime']}")


if __name__ == "__main__":
    main()
