"""The arithmetic floor of a TIES and a DARE-TIES merge on this machine: the fewest element-wise passes
each method needs, timed on blocks of the bench's own models already in memory (no reading, no
writing, no tensor-wide selection), in tiles whose temporaries stay in the CPU's cache, one torch
thread as the engine uses, and scaled to the whole model. Beside `bench/run.py`'s I/O floor (reading
the inputs, writing the output) it says how far above the I/O floor a merge must be, whatever the
engine.

    .venv/bin/python bench/compute_floor.py            # 4 blocks of 16M entries per model, ~1 minute

Per block of N entries of the base b and three fine-tunes f_1..f_3 (bf16), all in float32:
- TIES:  t_i = f_i - b; t_i *= |t_i| >= c_i (c_i: the block's magnitude cut-off at density 0.5, taken
  from a 1/256 sample, so the selection costs next to nothing, where the real one ranks whole
  tensors); s = sign(Σ t_i); m = Σ max(t_i s, 0) / max(Σ [t_i s > 0], 1) s; out = bf16(b + m).
- DARE-TIES: t_i = f_i - b; t_i *= keep_i / 0.5 (keep_i: a Bernoulli(0.5) mask from 8-bit integers cut
  from PCG64's raw 64-bit outputs, eight per output, the cheapest draw); then TIES' election and
  disjoint mean as above.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from safetensors import safe_open

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = "qwen2-v151936-h1536-i8960-l12"
BLOCK = 16 * 2**20  # entries, surgery's default --block-size 16M
DENSITY = 0.5
EMBEDDING = "model.embed_tokens.weight"  # 151936 x 1536: 14 blocks


def blocks(folder: str, count: int) -> list[torch.Tensor]:
    """The first `count` 16M-entry blocks of the model's embedding, its largest tensor (bf16, flattened;
    every tensor of these models is seeded noise of the same kind)."""
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        shard = json.load(f)["weight_map"][EMBEDDING]
    with safe_open(os.path.join(folder, shard), "pt") as f:
        flat = f.get_tensor(EMBEDDING).flatten()
    return [flat[i * BLOCK:(i + 1) * BLOCK].clone() for i in range(min(count, flat.numel() // BLOCK))]


class Scratch:
    """Float32 buffers of one tile, made once: every pass below writes into them (no allocation)."""

    def __init__(self, n: int):
        self.b, self.a, self.sign, self.total, self.count = (torch.empty(n) for _ in range(5))
        self.t = [torch.empty(n) for _ in range(3)]
        self.bits = torch.empty(n, dtype=torch.uint8)
        self.rng = np.random.PCG64(0)
        self.out = torch.empty(n, dtype=torch.bfloat16)


def elect(s: Scratch) -> torch.Tensor:
    """TIES' sign election and disjoint mean of the (already sparsified) task vectors s.t, into s.out."""
    torch.add(s.t[0], s.t[1], out=s.sign).add_(s.t[2]).sign_()
    s.total.zero_()
    s.count.zero_()
    for t in s.t:
        torch.mul(t, s.sign, out=s.a).clamp_(min=0)
        s.total.add_(s.a)
        s.count.add_(s.a.gt_(0))
    s.total.div_(s.count.clamp_(min=1)).mul_(s.sign)
    return s.out.copy_(s.b.add_(s.total))


def ties(base: torch.Tensor, fts: list[torch.Tensor], s: Scratch) -> torch.Tensor:
    s.b.copy_(base)
    for t, f in zip(s.t, fts):
        t.copy_(f).sub_(s.b)
        sample = t[::256].abs()
        cut = sample.kthvalue(max(1, int(sample.numel() * (1 - DENSITY)))).values
        torch.abs(t, out=s.a)
        t.mul_(s.a.ge_(cut))
    return elect(s)


def dare_ties(base: torch.Tensor, fts: list[torch.Tensor], s: Scratch) -> torch.Tensor:
    s.b.copy_(base)
    for t, f in zip(s.t, fts):
        s.bits.copy_(torch.from_numpy(s.rng.random_raw(len(s.bits) // 8).view(np.uint8)))  # 8 draws per 64-bit output
        s.a.copy_(s.bits).lt_(256 * DENSITY).div_(DENSITY)  # keep mask / density
        t.copy_(f).sub_(s.b).mul_(s.a)
    return elect(s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=4, help="16M-entry blocks per model timed")
    p.add_argument("--tile", type=int, default=2**16,
                   help="entries per call (a divisor of 16M; buffers of 256 KB at 2^16)")
    p.add_argument("--entries", type=float, default=795e6, help="entries per model to scale to (the bench's)")
    args = p.parse_args()
    torch.set_num_threads(1)
    models = os.path.join(HERE, "models", SHAPE)
    base, *fts = (blocks(os.path.join(models, n), args.blocks) for n in ("base", "ft1", "ft2", "ft3"))
    result = {"blocks": len(base), "entries_per_block": BLOCK, "tile": args.tile, "load": os.getloadavg()[0]}
    scratch = Scratch(args.tile)
    for name, method in (("ties", ties), ("dare_ties", dare_ties)):
        method(base[0][:args.tile], [f[0][:args.tile] for f in fts], scratch)  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        for k in range(len(base)):
            for i in range(0, BLOCK, args.tile):  # tiles small enough for the temporaries to stay in cache
                method(base[k][i:i + args.tile], [f[k][i:i + args.tile] for f in fts], scratch)
        wall, used = time.perf_counter() - start, time.process_time() - cpu
        per_entry = wall / (len(base) * BLOCK)
        result[name] = {"ns_per_entry": per_entry * 1e9, "cpu_ns_per_entry": used / (len(base) * BLOCK) * 1e9,
                        "whole_model_s": per_entry * args.entries}
        print(f"{name}: {per_entry * 1e9:.2f} ns per entry (of the model, three fine-tunes), "
              f"{per_entry * args.entries:.1f} s for {args.entries / 1e6:.0f}M entries", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
