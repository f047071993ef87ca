"""What a run's identity costs at its start: the sha256 of every input file (trainers/checkpoint.py
`input_hashes`: the base folder's files and the data), beside the load of the same base that every run
does anyway (transformers' `from_pretrained`, then one read of every weight, as a first step does:
safetensors maps the file lazily, so the load alone reads little), in one process, alternating, the faster of `--repeat`
tries of each reported.

    .venv/bin/python bench/run_identity.py                 # a ~0.5 GB float32 Llama, ~1 minute
    .venv/bin/python bench/run_identity.py --layers 4      # smaller
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load_and_read(cls, base: str) -> float:
    model = cls.from_pretrained(base, dtype=torch.float32)
    return float(sum(p.detach().sum() for p in model.parameters()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from surgery.demo.tiny import build_model
    from trainers.checkpoint import input_hashes
    from trainers.spec import parse_run

    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(os.path.join(tmp, "base"), "llama", seed=0, hidden_size=args.hidden,
                           intermediate_size=args.hidden * 11 // 4, num_hidden_layers=args.layers,
                           num_attention_heads=16, num_key_value_heads=16, vocab_size=args.vocab)
        size = sum(os.path.getsize(os.path.join(base, n)) for n in os.listdir(base))
        spec = {"base": base, "objective": {"name": "sft"}, "data": {"train": "runs/data/instruct.jsonl"},
                "optim": {"lr": 1e-4}, "schedule": {"total_steps": 1}, "out": os.path.join(tmp, "out")}
        run = parse_run(spec, "bench.yaml")
        hashing, loading = [], []
        for _ in range(args.repeat):
            hashing.append(timed(lambda: input_hashes(run)))
            loading.append(timed(lambda: load_and_read(AutoModelForCausalLM, base)))
        h, ld = min(hashing), min(loading)
        print(f"base {size / 2**20:.0f} MiB ({args.layers} layers, hidden {args.hidden}, vocab {args.vocab}); "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"input hashes {h:.3f} s ({size / 2**20 / h:.0f} MiB/s), from_pretrained + one read of the weights "
              f"{ld:.3f} s, ratio hashes/load {h / ld:.2f}")


if __name__ == "__main__":
    main()
