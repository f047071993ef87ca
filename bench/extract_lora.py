"""Compare `surgery extract-lora` with `mergekit-extract-lora` (mergekit 0.1.5) on one base/fine-tune
pair at one rank: wall time and peak RSS of each in a fresh child process, side by side as ratios;
what each adapter holds (LoRA modules, modules stored whole, bytes); the relative reconstruction error
||ΔW - BA|| / ||ΔW|| of every projection both extract; and how close each adapter, loaded with PEFT on
the base, brings the logits to the fine-tune's (the share of the fine-tune's logit change it misses).

    .venv/bin/python bench/extract_lora.py demo/models/base demo/models/add --rank 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict

from run import BIN, PYTHON, RESULTS, measure  # bench/run.py: the child-process measurements

PREFIX = "base_model.model."


# ---- the comparison (a child process; imports torch) ---------------------------------------------

def worker_compare(base: str, tuned: str, ours: str, theirs: str, text: str) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def tensors(folder: str) -> dict:
        out = {}
        for f in sorted(os.listdir(folder)):
            if f.endswith(".safetensors"):
                out.update(load_file(os.path.join(folder, f)))
        return out

    def products(folder: str) -> dict:
        t = load_file(os.path.join(folder, "adapter_model.safetensors"))
        return {n[len(PREFIX):].removesuffix(".lora_A.weight"): t[n.replace("lora_A", "lora_B")] @ t[n]
                for n in t if n.endswith("lora_A.weight")}

    b, t = tensors(base), tensors(tuned)
    errors = {}
    for side, folder in (("surgery", ours), ("mergekit", theirs)):
        for module, ba in products(folder).items():
            delta = t[module + ".weight"].float() - b[module + ".weight"].float()
            errors.setdefault(module, {})[side] = ((delta - ba).norm() / delta.norm().clamp(min=1e-12)).item()
    ids = AutoTokenizer.from_pretrained(tuned)(text, return_tensors="pt").input_ids
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)(ids).logits
        tuned_logits = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32)(ids).logits
        missed = {}
        for side, folder in (("surgery", ours), ("mergekit", theirs)):
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), folder)
            got = model(ids).logits
            missed[side] = ((got - tuned_logits).norm() / (tuned_logits - base_logits).norm()).item()
    configs = {side: json.load(open(os.path.join(f, "adapter_config.json"))) for side, f in
               (("surgery", ours), ("mergekit", theirs))}
    print(json.dumps({"errors": errors, "missed": missed,
                      "bytes": {s: os.path.getsize(os.path.join(f, "adapter_model.safetensors"))
                                for s, f in (("surgery", ours), ("mergekit", theirs))},
                      "saved": {s: c.get("modules_to_save") or [] for s, c in configs.items()},
                      "targets": {s: c["target_modules"] for s, c in configs.items()}}))


# ---- the runner ----------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("tuned")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--text", default="37+45=82<|im_end|>reverse apple:elppa<|im_end|>capital of France:Paris")
    p.add_argument("--tag", default="extract-lora")
    args = p.parse_args(argv)
    base, tuned = os.path.abspath(args.base), os.path.abspath(args.tuned)  # absolute: mergekit asks the Hub otherwise
    logs, outs = os.path.join(RESULTS, "logs"), os.path.join(RESULTS, "out")
    os.makedirs(logs, exist_ok=True)
    out = {"surgery": os.path.join(outs, "extract-surgery"), "mergekit": os.path.join(outs, "extract-mergekit")}
    cmds = {"surgery": [os.path.join(BIN, "surgery"), "extract-lora", base, tuned, out["surgery"], "--rank",
                        str(args.rank), "--quiet", "--force"],
            "mergekit": [os.path.join(BIN, "mergekit-extract-lora"), "--model", tuned, "--base-model", base,
                         "--out-path", out["mergekit"], "--max-rank", str(args.rank), "--device", "cpu"]}
    measured = {}
    for name, cmd in cmds.items():
        shutil.rmtree(out[name], ignore_errors=True)
        m = measure(cmd, os.path.join(logs, f"extract-{name}.log"))
        if m.exit_code:
            sys.exit(f"error: {name} failed; see {m.log}")
        measured[name] = asdict(m)
    compared = measure([PYTHON, __file__, "compare", base, tuned, out["surgery"], out["mergekit"], args.text],
                       os.path.join(logs, "extract-compare.log"))
    with open(compared.log) as f:
        diff = json.loads(f.read().strip().splitlines()[-1])
    finish({"base": base, "tuned": tuned, "rank": args.rank, "runs": measured, "compare": diff}, args.tag)


def finish(results: dict, tag: str) -> None:
    with open(os.path.join(RESULTS, f"{tag}.json"), "w") as f:
        json.dump(results, f, indent=2)
    s, m, c = results["runs"]["surgery"], results["runs"]["mergekit"], results["compare"]
    both = [e for e in c["errors"].values() if len(e) == 2]
    mean = {side: sum(e[side] for e in both) / len(both) for side in ("surgery", "mergekit")}
    gap = max(abs(e["surgery"] - e["mergekit"]) for e in both)
    lines = [f"extract a rank-{results['rank']} LoRA of {results['tuned']} over {results['base']}", "",
             "| | surgery extract-lora | mergekit-extract-lora | surgery / mergekit |", "|---|---|---|---|",
             f"| wall time | {s['wall_s']:.1f} s | {m['wall_s']:.1f} s | {s['wall_s'] / m['wall_s']:.2f} |",
             f"| peak RSS | {s['maxrss_kib'] / 1024:.0f} MB | {m['maxrss_kib'] / 1024:.0f} MB | "
             f"{s['maxrss_kib'] / m['maxrss_kib']:.2f} |",
             f"| adapter bytes | {c['bytes']['surgery'] / 1e6:.2f} MB | {c['bytes']['mergekit'] / 1e6:.2f} MB | "
             f"{c['bytes']['surgery'] / c['bytes']['mergekit']:.2f} |",
             f"| LoRA modules | {len(c['targets']['surgery'])} | {len(c['targets']['mergekit'])} (names) | |",
             f"| stored whole | {', '.join(c['saved']['surgery']) or '-'} | {', '.join(c['saved']['mergekit'])} | |",
             f"| mean rel. error, the {len(both)} projections both extract | {mean['surgery']:.4f} | "
             f"{mean['mergekit']:.4f} | largest difference {gap:.1e} |",
             f"| logit change missed, PEFT-loaded on the base | {c['missed']['surgery']:.4f} | "
             f"{c['missed']['mergekit']:.4f} | |"]
    with open(os.path.join(RESULTS, f"{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        worker_compare(*sys.argv[2:7])
    else:
        main(sys.argv[1:])
