"""Benchmark the SFT training loop (trainers/loops/offline.py) against TRL's SFTTrainer: training
throughput (tokens per second) and peak memory, full fine-tuning and LoRA, on the same model, rows and
batches.

The model is a Llama built here from seeded noise (hidden 512, 8 layers, vocab 32000 by default) with
a word-level tokenizer over a made-up 32000-word vocabulary and a ChatML template; the data are
prompt/completion rows of made-up sentences with log-normal lengths (a median row of ~250 tokens,
~140 of them completion). Both sides see the same rows in the same order (TRL with its sequential sampler
over the rows our loop draws), so every step has the same batch, the same padding and the same trained
tokens; the runner checks that the per-step token counts agree and compares the first step's loss.

    .venv/bin/python bench/train.py            # default: 8 steps each (2 warm-up), 9-15 minutes by the load
    .venv/bin/python bench/train.py --quick    # a smaller model and 5 steps: about a minute
    .venv/bin/python bench/train.py --packing --methods full    # padding-free on both sides
    .venv/bin/python bench/train.py --arch qwen2 --vocab 151936 --hidden 128 --packing --methods full  # the 150k head

Each run is a fresh child process; this runner imports no torch (a child's ru_maxrss starts from the
parent's resident size at fork). See bench/README.md for the figures and what they mean.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import run  # bench/run.py: child-process measurements, machine and load
from measure import maxrss_kib, package_versions, rss_kib, run_child, start_torch, write_report
from run import GB, PYTHON, RESULTS, measure

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
SIDES = ("ours", "trl")
METHODS = ("full", "lora")


# ---- the model, tokenizer and rows ---------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    arch: str = "llama"  # llama (untied head) or qwen2 (Qwen2's tied head and attention biases, as a Llama)
    vocab: int = 32000
    hidden: int = 512
    intermediate: int = 1376
    layers: int = 8
    heads: int = 8
    kv_heads: int = 4
    rows: int = 512
    seed: int = 0

    @property
    def tag(self) -> str:
        return f"{self.arch}-v{self.vocab}-h{self.hidden}-l{self.layers}-r{self.rows}"


SPECIALS = ("<unk>", "<|im_start|>", "<|im_end|>", "<pad>")
ROLE_WORDS = ("system", "user", "assistant")
PUNCT = (".", ",", "?", ":")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def made_up_words(n: int, rng: random.Random) -> list[str]:
    """n distinct lower-case words of 1-4 syllables."""
    onsets, vowels, codas = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr pl sh st th tr".split(), \
        "a e i o u ai ea ie oo ou".split(), ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"]
    out, seen = [], set(SPECIALS + ROLE_WORDS)
    while len(out) < n:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                    for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def sentence_text(words: list[str], cum: list[float], n_tokens: int, rng: random.Random) -> str:
    """About n_tokens tokens (words and punctuation) of Zipf-distributed words in sentences."""
    parts, left = [], n_tokens
    while left > 0:
        k = max(1, min(left - 1, int(rng.gauss(12, 5)))) if left > 1 else 0
        sent = rng.choices(words, cum_weights=cum, k=k)
        if sent and rng.random() < 0.3 and k > 4:
            sent.insert(rng.randrange(2, k), ",")
        parts.append(" ".join(sent) + (" " if sent else "") + rng.choice(PUNCT))
        left -= len(sent) + 1
    return " ".join(parts)


def worker_build(args: list[str]) -> None:
    """Write the model folder (config, seeded weights, tokenizer) and the rows (train.jsonl)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder, setup_json, max_length = args[0], args[1], int(args[2])
    s = Setup(**json.loads(setup_json))
    rng = random.Random(s.seed)
    fixed = list(SPECIALS + ROLE_WORDS + PUNCT)
    words = made_up_words(s.vocab - len(fixed), rng)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(fixed + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    torch.manual_seed(s.seed)
    # qwen2: Qwen2's head (tied embeddings) and attention biases in a Llama folder. A folder whose model_type
    # is qwen2 gets transformers' Qwen2 BPE tokenizer from AutoTokenizer instead of the word-level one saved
    # here, which drops every word of these rows.
    qwen2 = s.arch == "qwen2"
    config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                         max_position_embeddings=2048, tie_word_embeddings=qwen2, attention_bias=qwen2,
                         pad_token_id=3, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    tmp = folder + ".partial"
    os.makedirs(tmp, exist_ok=True)
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    # Zipf's law over the vocabulary: a few words are frequent, most are rare
    cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(words))))
    budget = max_length - 12  # ChatML markers, role names, newlines: every row fits in max_length
    with open(os.path.join(tmp, "train.jsonl"), "w") as f:
        for _ in range(s.rows):
            p = min(int(math.exp(rng.gauss(math.log(90), 0.6))), budget // 2)
            c = min(int(math.exp(rng.gauss(math.log(140), 0.6))), budget - p)
            f.write(json.dumps({"prompt": sentence_text(words, cum, max(p, 4), rng),
                                "completion": sentence_text(words, cum, max(c, 2), rng)}) + "\n")
    with open(os.path.join(tmp, ".complete"), "w") as f:
        json.dump(asdict(s), f)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


# ---- the two sides (child processes) -------------------------------------------------------------

def worker_ours(args: list[str]) -> None:
    """Our loop, `trainers.loops.train`, as `surgery train` runs it (tqdm off), with two taps: the
    batches each step builds (token counts) and the per-step log record (a timestamp)."""
    cfg, out = json.loads(args[0]), args[1]
    start_torch(cfg["threads"])
    from trainers.loops import offline, session, train
    from trainers.spec import parse_run

    spec = {
        "base": cfg["model"], "objective": {"name": "sft"}, "method": method_spec(cfg),
        "data": {"train": os.path.join(cfg["model"], "train.jsonl")}, "chat_template": "tokenizer",
        "optim": {"lr": cfg["lr"], "weight_decay": 0.0, "max_grad_norm": 1.0},
        "schedule": {"warmup_steps": cfg["lr_warmup"], "cosine": True, "total_steps": cfg["steps"]},
        "batch": {"size": cfg["batch"], "grad_accum": cfg["grad_accum"], "max_length": cfg["max_length"],
                  "packing": cfg["packing"], "logits_chunk": cfg["logits_chunk"]},
        "seed": cfg["seed"], "out": cfg["out"], "dtype": "float32",
    }
    steps: list[dict] = []
    pending: list[dict] = []
    base_rss = {}
    step_batches, write = offline.step_batches, session.Log.write

    def tapped_batches(*a, **k):
        batches = step_batches(*a, **k)
        if not base_rss:
            base_rss["before_first_step_kib"] = rss_kib()
        pending.append(counts(batches))
        return batches

    def tapped_write(self, record):
        write(self, record)
        if "loss" in record and "step" in record:
            steps.append({"t": time.perf_counter(), "cpu": time.process_time(), "loss": record["loss"],
                          **pending.pop(0)})
            if record["step"] == cfg["steps"]:
                base_rss["after_last_step_maxrss_kib"] = maxrss_kib()

    offline.step_batches, session.Log.write = tapped_batches, tapped_write
    t0 = time.perf_counter()
    train(parse_run(spec, "bench-train.yaml"), quiet=True)
    write_report(out, cfg, steps, {"t_start": t0, "t_end": time.perf_counter(), **base_rss})


def method_spec(cfg: dict) -> dict:
    if cfg["method"] == "lora":
        return {"name": "lora", "r": cfg["lora_r"], "alpha": cfg["lora_alpha"], "dropout": 0.0,
                "target_modules": "all-linear"}
    return {"name": "full"}


def counts(batches: list[dict]) -> dict:
    """Per step: real (non-pad) tokens, slots (B x T, padding included), trained tokens (labels after the
    shift). A padded batch marks its real tokens in `attention_mask`, ours packed in `sequence` (-1 on a
    row's tail), TRL's padding-free batch is one row without padding."""
    def real(b: dict) -> int:
        if "attention_mask" in b:
            return int(b["attention_mask"].sum())
        return int((b["sequence"] >= 0).sum()) if "sequence" in b else b["input_ids"].numel()

    return {"real": sum(real(b) for b in batches), "slots": int(sum(b["input_ids"].numel() for b in batches)),
            "trained": int(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))}


def worker_trl(args: list[str]) -> None:
    """TRL's SFTTrainer on the same model, rows (in our loop's order) and batches; float32, no gradient
    checkpointing, AdamW, completion-only loss, nothing saved until the end; with `packing`, padding-free
    (each micro-batch's rows in one row, position ids restarting per row: the layout TRL's BFD packing
    also collates to), else padded."""
    cfg, out = json.loads(args[0]), args[1]
    torch = start_torch(cfg["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trainers.data import Mixture

    with open(os.path.join(cfg["model"], "train.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    mixture = Mixture([len(rows)], [1.0], cfg["seed"])  # our loop's draw: the same rows, step by step
    order = [r for step in range(cfg["steps"]) for _, r in mixture.draw(step, cfg["batch"])]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": rows[r]["prompt"]}],
                               "completion": [{"role": "assistant", "content": rows[r]["completion"]}]} for r in order])
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    peft_config = None
    if cfg["method"] == "lora":
        from peft import LoraConfig

        torch.manual_seed(cfg["seed"])
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0,
                                 target_modules="all-linear")
    micro = cfg["batch"] // cfg["grad_accum"]
    free = bool(cfg["packing"])  # TRL refuses max_length with padding-free and no packing; the rows fit anyway
    args_ = SFTConfig(
        output_dir=cfg["out"], report_to="none", use_cpu=True, completion_only_loss=True, packing=False,
        padding_free=free, max_length=None if free else cfg["max_length"], per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg["grad_accum"], max_steps=cfg["steps"], learning_rate=cfg["lr"],
        lr_scheduler_type="cosine", warmup_steps=cfg["lr_warmup"], weight_decay=0.0, max_grad_norm=1.0,
        optim=cfg["trl_optim"], bf16=False, fp16=False, gradient_checkpointing=False,
        train_sampling_strategy="sequential", save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=cfg["seed"], dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args_, train_dataset=data, processing_class=tok, peft_config=peft_config)
    steps: list[dict] = []
    pending: list[dict] = []
    losses: list[float] = []
    extra: dict = {}
    collate = trainer.data_collator

    def tapped_collate(examples):
        batch = collate(examples)
        pending.append(counts([batch]))
        return batch

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            mine, pending[:cfg["grad_accum"]] = pending[:cfg["grad_accum"]], []
            steps.append({"t": time.perf_counter(), "cpu": time.process_time(),
                          **{k: sum(m[k] for m in mine) for k in mine[0]}})
            if state.global_step == cfg["steps"]:
                extra["after_last_step_maxrss_kib"] = maxrss_kib()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

        def on_train_begin(self, a, state, control, **kw):
            extra["before_first_step_kib"] = rss_kib()

    trainer.data_collator = tapped_collate
    trainer.add_callback(Clock())
    t0 = time.perf_counter()
    trainer.train()
    trainer.save_model(os.path.join(cfg["out"], "final"))  # as our loop writes its final folder
    for s, loss in zip(steps, losses):
        s["loss"] = loss
    write_report(out, cfg, steps, {"t_start": t0, "t_end": time.perf_counter(), **extra})


WORKERS = {"build": worker_build, "ours": worker_ours, "trl": worker_trl}


# ---- the runner ----------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark our SFT loop against TRL's SFTTrainer (see bench/README.md).")
    p.add_argument("--quick", action="store_true",
                   help="hidden 256, 4 layers, vocab 8192, 5 steps (1 warm-up): ~1 minute")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    p.add_argument("--steps", type=int, help="optimizer steps per run (default 8, quick 5)")
    p.add_argument("--warmup", type=int, help="first steps left out of the timing (default 2, quick 1)")
    p.add_argument("--batch", type=int, default=8, help="rows per optimizer step")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step")
    p.add_argument("--max-length", type=int, default=512, help="max tokens per row (rows are built to fit)")
    p.add_argument("--packing", action="store_true",
                   help="padding-free on both sides: ours batch.packing=padding_free, TRL padding_free=True")
    p.add_argument("--ours-packing", choices=("padding_free", "true"),
                   help="with --packing, our layout (default padding_free; true: rows of max_length)")
    p.add_argument("--logits-chunk", default="auto",
                   help="our batch.logits_chunk: auto (default), a number of positions, or null (the model's own head)")
    p.add_argument("--arch", choices=("llama", "qwen2"), default="llama", help="model family")
    p.add_argument("--vocab", type=int, help="vocabulary size (default 32000, quick 8192)")
    p.add_argument("--hidden", type=int, help="hidden size (default 512, quick 256); intermediate 2.7x")
    p.add_argument("--layers", type=int, help="decoder layers (default 8, quick 4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child (the same on both sides)")
    p.add_argument("--trl-optim", default="adamw_torch",
                   help="TRL's optim: adamw_torch (torch.optim.AdamW, as our loop) or adamw_torch_fused "
                        "(TRL's default)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per side and method (order alternating); the fastest is reported")
    p.add_argument("--tag", default="train", help="results are saved as bench/results/TAG.json and TAG.md")
    return p.parse_args(argv)


def setup_of(args: argparse.Namespace) -> Setup:
    s = (Setup(vocab=8192, hidden=256, intermediate=688, layers=4, heads=4, kv_heads=2, rows=128) if args.quick
         else Setup())
    hidden = args.hidden or s.hidden
    heads = max(1, hidden // 64)
    return Setup(arch=args.arch, vocab=args.vocab or s.vocab, hidden=hidden,
                 intermediate=s.intermediate if not args.hidden else int(hidden * 2.6875),
                 layers=args.layers or s.layers, heads=heads if args.hidden else s.heads,
                 kv_heads=max(1, heads // 2) if args.hidden else s.kv_heads, rows=s.rows, seed=s.seed)


def ensure_model(s: Setup, args: argparse.Namespace, logs: str) -> str:
    folder = os.path.join(MODELS, f"{s.tag}-m{args.max_length}")
    if not os.path.exists(os.path.join(folder, ".complete")):
        print(f"building {folder}", flush=True)
        m = measure([PYTHON, __file__, "build", folder, json.dumps(asdict(s)), str(args.max_length)],
                    os.path.join(logs, "train-build.log"))
        if m.exit_code:
            sys.exit(f"error: building the model failed; see {m.log}")
    return folder


def child_cfg(side: str, method: str, model: str, args: argparse.Namespace, steps: int, warmup: int) -> dict:
    return {"side": side, "method": method, "model": model, "threads": args.threads, "steps": steps, "warmup": warmup,
            "batch": args.batch, "grad_accum": args.grad_accum, "max_length": args.max_length,
            "lr": 1e-4 if method == "full" else 1e-3,
            "lr_warmup": 1, "seed": 0, "packing": packing_of(side, args), "logits_chunk": logits_chunk(args),
            "lora_r": 16, "lora_alpha": 32,
            "trl_optim": args.trl_optim,
            "out": os.path.join(RESULTS, "out", f"train-{side}-{method}")}


def logits_chunk(args: argparse.Namespace) -> int | str | None:
    return None if args.logits_chunk == "null" else int(args.logits_chunk) if args.logits_chunk.isdigit() else "auto"


def packing_of(side: str, args: argparse.Namespace):
    """The side's layout: False (padded), or ours `padding_free`/True and TRL's padding-free (True)."""
    if not args.packing:
        return False
    return True if side == "trl" or args.ours_packing == "true" else "padding_free"


def one_run(side: str, method: str, model: str, args, steps: int, warmup: int, logs: str, rep: int) -> dict:
    cfg = child_cfg(side, method, model, args, steps, warmup)
    shutil.rmtree(cfg["out"], ignore_errors=True)
    print(f"  {side:4s} {method:4s} ...", end=" ", flush=True)
    m, r = run_child(__file__, side, cfg, os.path.join(logs, f"train-{side}-{method}-{rep}.json"),
                     os.path.join(logs, f"train-{side}-{method}-{rep}.log"), args.threads)
    shutil.rmtree(cfg["out"], ignore_errors=True)
    if r is None:
        print(f"FAILED (exit {m.exit_code}, see {m.log})", flush=True)
        return {"measured": asdict(m), "failed": True}
    out = summarize_run(r, warmup)
    out["measured"] = {**asdict(m), "cpu_s": m.cpu_s}
    print(f"{out['real_tok_s']:7.0f} real tok/s ({out['step_s']:.2f} s/step, {out['real_tok_cpu_s']:.0f} per CPU s), "
          f"peak RSS {m.maxrss_kib * 1024 / GB:5.2f} GB, wall {m.wall_s:5.1f} s, other work {m.other_cpu_s:5.1f} CPU s",
          flush=True)
    return out


def summarize_run(r: dict, warmup: int) -> dict:
    steps = r["steps"]
    timed = steps[warmup:]
    t0 = steps[warmup - 1]["t"]  # the clock starts when the last warm-up step ends
    secs = timed[-1]["t"] - t0
    cpu = timed[-1]["cpu"] - steps[warmup - 1]["cpu"]  # this process's CPU time over the timed steps
    tot = {k: sum(s[k] for s in timed) for k in ("real", "slots", "trained")}
    durations = [b["t"] - a["t"] for a, b in zip(steps[warmup - 1:], timed)]
    return {"timed_steps": len(timed), "timed_s": secs, "step_s": secs / len(timed),
            **{f"{k}_tokens": v for k, v in tot.items()},
            "timed_cpu_s": cpu, "real_tok_cpu_s": tot["real"] / cpu,
            "real_tok_s": tot["real"] / secs, "trained_tok_s": tot["trained"] / secs, "slot_tok_s": tot["slots"] / secs,
            "step_durations_s": [round(d, 3) for d in durations],
            "per_step_counts": [{k: s[k] for k in ("real", "slots", "trained")} for s in steps],
            "losses": [s.get("loss") for s in steps], "setup_s": steps[0]["t"] - r["t_start"],
            "rss_before_first_step_gb": r.get("before_first_step_kib", 0) * 1024 / GB,
            "maxrss_after_last_step_gb": r.get("after_last_step_maxrss_kib", 0) * 1024 / GB}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    steps = args.steps or (5 if args.quick else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if not 0 < warmup < steps:
        sys.exit("error: --warmup must be at least 1 and below --steps")
    methods = [m for m in args.methods.split(",") if m]
    sides = [s for s in args.sides.split(",") if s]
    logs = os.path.join(RESULTS, "logs")
    os.makedirs(logs, exist_ok=True)
    os.makedirs(os.path.join(RESULTS, "out"), exist_ok=True)
    s = setup_of(args)
    results = {"started": run.load_now(), "machine": run.machine(), "versions": versions(), "setup": asdict(s),
               "args": vars(args), "steps": steps, "warmup": warmup}
    print(f"load at start: {results['started']['uptime']}", flush=True)
    model = ensure_model(s, args, logs)
    results["model"] = os.path.relpath(model, run.ROOT)
    results["methods"] = {}
    for i, method in enumerate(methods):
        samples: dict[str, list[dict]] = {side: [] for side in sides}
        for rep in range(args.repeat):
            order = sides if (i + rep) % 2 == 0 else sides[::-1]
            for side in order:
                samples[side].append(one_run(side, method, model, args, steps, warmup, logs, rep))
        best = {side: min((x for x in v if not x.get("failed")), key=lambda x: x["timed_s"], default=v[0])
                for side, v in samples.items()}
        best["all"] = {side: [round(x.get("real_tok_s", 0)) for x in v] for side, v in samples.items()}
        results["methods"][method] = best
    results["finished"] = run.load_now()
    run.save_results(results, markdown(results), args.tag)


def versions() -> dict:
    return package_versions(("torch", "transformers", "trl", "peft", "surgery"))


def layout_text(a: dict) -> str:
    chunk = f", ours batch.logits_chunk={a.get('logits_chunk', 'auto')}"
    if not a.get("packing"):
        return "padded" + chunk
    return f"ours batch.packing={a.get('ours_packing') or 'padding_free'}, TRL padding_free=True" + chunk


def markdown(results: dict) -> str:
    s, a = results["setup"], results["args"]
    lines = [f"# our SFT loop vs TRL {results['versions']['trl']} SFTTrainer — {results['started']['time']}", "",
             f"Model: {s['arch']}, vocab {s['vocab']}, hidden {s['hidden']}, intermediate {s['intermediate']}, "
             f"{s['layers']} layers, {s['heads']} heads ({s['kv_heads']} KV), "
             f"{'tied' if s['arch'] == 'qwen2' else 'untied'}, float32. Layout: "
             f"{layout_text(a)}. "
             f"Batch {a['batch']} rows = {a['grad_accum']} micro-batches of {a['batch'] // a['grad_accum']}, "
             f"max length {a['max_length']}, AdamW (TRL optim `{a['trl_optim']}`), {results['steps']} steps of which "
             f"the first {results['warmup']} are not timed; {a['threads']} torch thread(s) each. "
             f"Machine: {results['machine']['cpus']} CPUs ({results['machine']['cpu']}). Load at start: "
             f"`{results['started']['uptime']}`; at end: `{results['finished']['uptime']}`.", "",
             "| method | side | real tok/s | trained tok/s | s/step | real tok per CPU s | peak RSS GB | "
             "RSS at step 1 GB | CPU s (whole child) | other work CPU s | step-1 loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, r in results["methods"].items():
        for side in SIDES:
            x = r.get(side)
            if not x or x.get("failed"):
                lines.append(f"| {method} | {side} | failed | | | | | | | | |")
                continue
            m = x["measured"]
            lines.append(f"| {method} | {side} | {x['real_tok_s']:.0f} | {x['trained_tok_s']:.0f} | "
                         f"{x['step_s']:.2f} | {x['real_tok_cpu_s']:.0f} | "
                         f"{m['maxrss_kib'] * 1024 / GB:.2f} | {x['rss_before_first_step_gb']:.2f} | "
                         f"{m['cpu_s']:.1f} | {m['other_cpu_s']:.1f} | {x['losses'][0]:.4f} |")
    lines += [""]
    for method, r in results["methods"].items():
        o, t = r.get("ours"), r.get("trl")
        if o and t and not o.get("failed") and not t.get("failed"):
            same = o["per_step_counts"] == t["per_step_counts"]
            ratio = o["real_tok_s"] / t["real_tok_s"]
            cpu_ratio = o["real_tok_cpu_s"] / t["real_tok_cpu_s"]
            rss = o["measured"]["maxrss_kib"] / t["measured"]["maxrss_kib"]
            grown = [x["measured"]["maxrss_kib"] * 1024 / GB - x["rss_before_first_step_gb"] for x in (o, t)]
            want = (1.3, 0.7) if a.get("packing") else (1.0, 1.0)  # issue 14's packing targets; else parity
            met = ratio >= want[0] and rss <= want[1]
            lines.append(f"- {method}: ours / TRL throughput {ratio:.2f}x (per CPU second {cpu_ratio:.2f}x), "
                         f"peak RSS {rss:.2f}x, peak above the RSS at step 1 {grown[0]:.2f} / {grown[1]:.2f} GB = "
                         f"{grown[0] / grown[1]:.2f}x (target >= {want[0]}x at <= {want[1]}x: "
                         f"{'met' if met else 'missed'}); "
                         f"per-step token counts {'identical' if same else 'DIFFER'} ({o['real_tokens']} real, "
                         f"{o['slots_tokens']} padded slots, {o['trained_tokens']} trained tokens timed); "
                         f"step times ours {o['step_durations_s']}, "
                         f"TRL {t['step_durations_s']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
        sys.path.insert(0, run.ROOT)  # `trainers` from the repository root
        WORKERS[sys.argv[1]](sys.argv[2:])
    else:
        main(sys.argv[1:])
