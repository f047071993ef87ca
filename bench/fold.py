"""Benchmark `surgery fold` against PEFT on folding a LoRA adapter into a ~1.6 GB model: wall time
and peak RSS of each in a fresh child process, side by side as ratios, and how far the two outputs
differ.

The base is bench/run.py's bf16 Qwen2-shaped model (built by its builder if missing); the adapter is
a rank-16 LoRA on every linear layer of every decoder layer, written here from seeded noise (float32
factors, PEFT's own config file). PEFT's path is what one writes without surgery:
`from_pretrained`, `PeftModel.from_pretrained`, `merge_and_unload()`, `save_pretrained`.

    .venv/bin/python bench/fold.py            # full scale (~1.6 GB model); a few minutes
    .venv/bin/python bench/fold.py --quick    # 2 layers, vocab 16384 (~240 MB)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict

import run  # bench/run.py: the model builder and the child-process measurements
from run import BIN, GB, PYTHON, RESULTS, ROOT, Shape, measure

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COMPARED = ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.self_attn.k_proj.weight", "model.layers.1.mlp.gate_proj.weight")


# ---- workers (child processes; import torch) ----------------------------------------------------

def worker_adapter(args: list[str]) -> None:
    """Write a LoRA adapter folder for `shape` whose factors are seeded noise: A ~ N(0, 1/in), B ~ N(0, 0.01^2)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    folder, shape_json, base, rank = args[0], args[1], args[2], int(args[3])
    shape = Shape(**json.loads(shape_json))
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, dims in shape.tensors():
        module = name.removesuffix(".weight")
        if len(dims) == 2 and module.rsplit(".", 1)[-1] in TARGETS:
            out, inp = dims
            key = f"base_model.model.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, inp, generator=generator) / inp ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, rank, generator=generator) * 0.01
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS),
               base_model_name_or_path=base).save_pretrained(folder)


def worker_peft(args: list[str]) -> None:
    """PEFT's way: load the model and the adapter, merge_and_unload, save_pretrained."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter, out = args
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out)


WORKERS = {"adapter": worker_adapter, "peft": worker_peft}


# ---- the runner (no torch here: children's peak RSS must not start from ours) -------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark surgery fold against PEFT merge_and_unload (see bench/README.md).")
    p.add_argument("--quick", action="store_true", help="small model: 2 layers, vocab 16384")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--repeat", type=int, default=1, help="runs of each (alternating order); the fastest is reported")
    p.add_argument("--tag", default="fold", help="results are saved as bench/results/TAG.json and TAG.md")
    return p.parse_args(argv)


def ensure_base(shape: Shape, logs: str) -> str:
    base = run.model_dirs(shape)["base"]
    if not run.is_built(base):
        print(f"building {base} ({shape.params / 1e6:.0f}M params, bf16)", flush=True)
        m = measure([PYTHON, run.__file__, "build", base, json.dumps(asdict(shape)), "0", "0", str(1024**3)],
                    os.path.join(logs, "build-base.log"))
        if m.exit_code:
            sys.exit(f"error: building the base failed; see {m.log}")
    return base


def passthrough_spec(base: str) -> str:
    """A merge that copies the base: surgery's merging memory bound, which folding should keep."""
    path = os.path.join(RESULTS, "specs", "fold-passthrough.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"merge_method: passthrough\nmodels:\n  - model: {base}\n")
    return path


def timed(name: str, cmd: list[str], out: str, logs: str, inputs: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    run.warm(inputs)  # both start from a warm page cache
    run.settle()
    m = measure(cmd, os.path.join(logs, f"fold-{name}.log"))
    if m.exit_code:
        sys.exit(f"error: {name} failed; see {m.log}")
    print(f"{name:8} {m.wall_s:7.1f} s wall, {m.cpu_s:7.1f} s CPU, peak RSS {m.maxrss_kib * 1024 / GB:5.2f} GB",
          flush=True)
    return asdict(m)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    shape = Shape(vocab=16384, layers=2) if args.quick else Shape()
    logs, outs = os.path.join(RESULTS, "logs"), os.path.join(RESULTS, "out")
    os.makedirs(logs, exist_ok=True)
    os.makedirs(outs, exist_ok=True)
    base = ensure_base(shape, logs)
    adapter = os.path.join(outs, f"lora-r{args.rank}-{shape.tag}")
    if not os.path.exists(os.path.join(adapter, "adapter_config.json")):
        measure([PYTHON, __file__, "adapter", adapter, json.dumps(asdict(shape)), base, str(args.rank)],
                os.path.join(logs, "fold-adapter.log"))
    inputs = run.weight_files(base) + run.weight_files(adapter)
    out = {name: os.path.join(outs, f"fold-{name}") for name in ("surgery", "peft", "merge")}
    cmds = {"surgery": [os.path.join(BIN, "surgery"), "fold", base, adapter, out["surgery"], "--quiet"],
            "peft": [PYTHON, __file__, "peft", base, adapter, out["peft"]],
            "merge": [os.path.join(BIN, "surgery"), "merge", passthrough_spec(base), out["merge"], "--quiet"]}
    samples: dict[str, list[dict]] = {k: [] for k in cmds}
    for rep in range(args.repeat):
        for name in (list(cmds) if rep % 2 == 0 else list(cmds)[::-1]):
            samples[name].append(timed(name, cmds[name], out[name], logs, inputs))
    shutil.rmtree(out["merge"], ignore_errors=True)
    compared = measure([PYTHON, run.__file__, "compare", out["surgery"], out["peft"], *COMPARED],
                       os.path.join(logs, "fold-compare.log"))
    with open(os.path.join(ROOT, compared.log)) as f:
        diff = json.loads(f.read().strip().splitlines()[-1])
    for folder in out.values():  # 1.6 GB each; the adapter (small) is kept for the next run
        shutil.rmtree(folder, ignore_errors=True)
    results = {"machine": run.machine(), "versions": run.versions(), "shape": asdict(shape), "params": shape.params,
               "model_bytes": shape.params * 2, "adapter_bytes": run.folder_bytes(adapter), "rank": args.rank,
               "best": {k: min(v, key=lambda m: m["wall_s"]) for k, v in samples.items()}, "compare": diff}
    finish(results, args.tag)


def finish(results: dict, tag: str) -> None:
    with open(os.path.join(RESULTS, f"{tag}.json"), "w") as f:
        json.dump(results, f, indent=2)
    s, p, m = results["best"]["surgery"], results["best"]["peft"], results["best"]["merge"]

    def rss(m: dict) -> float:
        return m["maxrss_kib"] * 1024 / GB

    lines = [f"fold a rank-{results['rank']} LoRA ({results['adapter_bytes'] / 1e6:.0f} MB) into a "
             f"{results['model_bytes'] / GB:.2f} GB bf16 model ({results['params'] / 1e6:.0f}M params)", "",
             "| | surgery fold | PEFT | surgery / PEFT |", "|---|---|---|---|",
             f"| wall time | {s['wall_s']:.1f} s | {p['wall_s']:.1f} s | {s['wall_s'] / p['wall_s']:.2f} |",
             f"| CPU time | {s['user_s'] + s['sys_s']:.1f} s | {p['user_s'] + p['sys_s']:.1f} s | "
             f"{(s['user_s'] + s['sys_s']) / (p['user_s'] + p['sys_s']):.2f} |",
             f"| peak RSS | {rss(s):.2f} GB | {rss(p):.2f} GB | {rss(s) / rss(p):.2f} |", "",
             f"The same model copied by `surgery merge` (passthrough, no adapter), the merging bound: "
             f"{m['wall_s']:.1f} s, peak RSS {rss(m):.2f} GB; fold / merge peak RSS = {rss(s) / rss(m):.2f}.", "",
             "outputs compared (max abs diff, fraction bitwise equal): " + "; ".join(
                 f"{n}: {d.get('max_abs_diff', d.get('error'))}, {d.get('frac_bitwise_equal', '')}"
                 for n, d in results["compare"]["tensors"].items())]
    with open(os.path.join(RESULTS, f"{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
        WORKERS[sys.argv[1]](sys.argv[2:])
    else:
        main(sys.argv[1:])
