"""Benchmark the preference trainers against TRL's: DPO through our offline loop
(trainers/loops/offline.py with trainers/objectives/dpo.py) against TRL's DPOTrainer, and our GRPO loop
(trainers/loops/grpo_rollouts.py) against TRL's GRPOTrainer: optimizer steps per second, tokens per
second, CPU time and peak memory, on the same model, rows, batches and hyperparameters.

The model is bench/train.py's seeded Llama with its word-level tokenizer and ChatML template (by
default its `--quick` model: hidden 256, 4 layers, vocab 8192). The data are made up here from the
tokenizer's words, deterministically: preference rows (prompt, chosen, rejected) with log-normal
lengths, and prompts for GRPO. Both sides see the same rows in the same order, step by step (TRL
reads them sequentially in the order our loop draws them); the runner checks the per-step token
counts. GRPO's reward is a Python function on both sides (`word_reward`), its completions are
sampled with the model's own `generate` on both.

    .venv/bin/python bench/train_preference.py            # DPO and GRPO, 10 steps each (2 warm-up): ~6 minutes
    .venv/bin/python bench/train_preference.py --quick    # a smaller model and 4 steps: about a minute

Each run is a fresh child process; this runner imports no torch. See bench/README.md.
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
from dataclasses import asdict

import run  # bench/run.py: child-process measurements, machine and load
import train  # bench/train.py: the model builder and its tokenizer's vocabulary
from measure import maxrss_kib, package_versions, rss_kib, run_child, start_torch, write_report
from run import GB, RESULTS

SIDES = ("ours", "trl")
OBJECTIVES = ("dpo", "grpo")
FIXED = train.SPECIALS + train.ROLE_WORDS + train.PUNCT
REWARD = "train_preference:word_reward"  # our spec's name for it (bench/ is on the child's path)


# ---- the data (written by the runner: plain Python) ----------------------------------------------

def vocabulary(model: str) -> list[str]:
    """The tokenizer's made-up words in id order (its specials, role names and punctuation left out)."""
    with open(os.path.join(model, "tokenizer.json")) as f:
        vocab = json.load(f)["model"]["vocab"]
    return [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w not in FIXED]


def lognormal(rng: random.Random, median: int, cap: int) -> int:
    return max(2, min(int(math.exp(rng.gauss(math.log(median), 0.5))), cap))


def write_data(model: str, folder: str, a: argparse.Namespace, seed: int = 1) -> dict[str, str]:
    """prefs.jsonl (prompt, chosen, rejected) and prompts.jsonl (prompt, completion) in `folder`.
    Every pair fits in max_length with its chat markers, so neither side truncates."""
    words = vocabulary(model)
    cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(words))))  # Zipf's law
    rng = random.Random(seed)
    budget = a.max_length - 12  # ChatML markers and role names
    os.makedirs(folder, exist_ok=True)
    paths = {"prefs": os.path.join(folder, "prefs.jsonl"), "prompts": os.path.join(folder, "prompts.jsonl")}
    with open(paths["prefs"], "w") as f:
        for _ in range(a.rows):
            p = lognormal(rng, a.prompt_tokens, budget // 2)
            c, r = (lognormal(rng, a.answer_tokens, budget - p) for _ in range(2))
            f.write(json.dumps({"prompt": train.sentence_text(words, cum, p, rng),
                                "chosen": train.sentence_text(words, cum, c, rng),
                                "rejected": train.sentence_text(words, cum, r, rng)}) + "\n")
    with open(paths["prompts"], "w") as f:
        for _ in range(a.rows):
            p = lognormal(rng, a.prompt_tokens, budget // 2)
            f.write(json.dumps({"prompt": train.sentence_text(words, cum, p, rng), "completion": "."}) + "\n")
    return paths


def word_reward(prompt: str, completion: str, row: dict) -> float:
    """GRPO's reward: the share of the completion's words that contain the letter a (0 if it has none)."""
    words = completion.split()
    return sum("a" in w for w in words) / len(words) if words else 0.0


def trl_word_reward(completions, **_) -> list[float]:
    """The same reward in TRL's calling convention (conversational completions: lists of messages)."""
    return [word_reward("", c[-1]["content"] if isinstance(c, list) else c, {}) for c in completions]


# ---- the two sides (child processes) -------------------------------------------------------------

def counts(batch: dict) -> dict:
    """One micro-batch: real (non-pad) tokens, padded slots (B x T), trained tokens (those the loss
    scores: labels after the shift in our DPO batch, completion_mask after it in the others)."""
    trained = (batch["labels"][:, 1:] != -100) if "labels" in batch else batch["completion_mask"][:, 1:].bool()
    return {"real": int(batch["attention_mask"].sum()), "slots": int(batch["attention_mask"].numel()),
            "trained": int(trained.sum())}


def summed(records: list[dict]) -> dict:
    return {k: sum(r[k] for r in records) for k in records[0]}


def our_spec(cfg: dict) -> dict:
    if cfg["objective"] == "dpo":
        objective, train_data = {"name": "dpo", "beta": cfg["beta"]}, cfg["data"]["prefs"]
    else:
        objective = {"name": "grpo", "reward_functions": [REWARD], "group_size": cfg["group"], "beta": cfg["beta"],
                     "max_new_tokens": cfg["max_new_tokens"], "temperature": cfg["temperature"], "epsilon": 0.2,
                     "loss_type": "dapo", "scale_rewards": "group"}
        train_data = cfg["data"]["prompts"]
    return {"base": cfg["model"], "objective": objective, "method": {"name": "full"}, "data": {"train": train_data},
            "chat_template": "tokenizer", "optim": {"lr": cfg["lr"], "weight_decay": 0.0, "max_grad_norm": 1.0},
            "schedule": {"warmup_steps": 0, "cosine": True, "total_steps": cfg["steps"]},
            "batch": {"size": cfg["batch"], "grad_accum": cfg["grad_accum"], "max_length": cfg["max_length"]},
            "seed": cfg["seed"], "out": cfg["out"], "dtype": "float32"}


def worker_ours(args: list[str]) -> None:
    """`surgery train` on the spec above (progress bar off), with two taps: the step's batches (DPO:
    the offline loop's `step_batches`; GRPO: `rollout`, timed) and the per-step log record (a clock)."""
    cfg, out = json.loads(args[0]), args[1]
    start_torch(cfg["threads"])
    from trainers.loops import grpo_rollouts, offline, session, train
    from trainers.spec import parse_run

    steps: list[dict] = []
    pending: list[dict] = []
    extra: dict = {}
    step_batches, rollout, write = offline.step_batches, grpo_rollouts.rollout, session.Log.write

    def tapped_batches(*a, **k):
        batches = step_batches(*a, **k)
        extra.setdefault("before_first_step_kib", rss_kib())
        pending.append(summed([counts(b) for b in batches]))
        return batches

    def tapped_rollout(*a, **k):
        extra.setdefault("before_first_step_kib", rss_kib())
        t, cpu = time.perf_counter(), time.process_time()
        batches, stats = rollout(*a, **k)
        pending.append({**summed([counts(b) for b in batches]), "rollout_s": time.perf_counter() - t,
                        "rollout_cpu_s": time.process_time() - cpu, "reward": stats["reward"]})
        return batches, stats

    def tapped_write(self, record):
        write(self, record)
        if "loss" in record and "step" in record:
            steps.append({"t": time.perf_counter(), "cpu": time.process_time(), "loss": record["loss"],
                          **pending.pop(0)})
            if record["step"] == cfg["steps"]:
                extra["after_last_step_maxrss_kib"] = maxrss_kib()

    offline.step_batches, grpo_rollouts.rollout, session.Log.write = tapped_batches, tapped_rollout, tapped_write
    t0 = time.perf_counter()
    train(parse_run(our_spec(cfg), "bench-preference.yaml"), quiet=True)
    write_report(out, cfg, steps, {"t_start": t0, "t_end": time.perf_counter(), **extra})


def trl_common(cfg: dict) -> dict:
    """TrainingArguments both TRL trainers get: ours where they set the work (float32, no gradient
    checkpointing, torch.optim.AdamW, the cosine without warm-up, clipping), no saving until the end."""
    return dict(output_dir=cfg["out"], report_to="none", use_cpu=True, max_steps=cfg["steps"],
                gradient_accumulation_steps=cfg["grad_accum"], learning_rate=cfg["lr"], lr_scheduler_type="cosine",
                warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", bf16=False, fp16=False,
                gradient_checkpointing=False, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=cfg["seed"],
                dataloader_num_workers=0)


def drawn_rows(cfg: dict, path: str, per_step: int) -> list[dict]:
    """The rows of `path` in the order our loop draws them, step by step."""
    from trainers.data import Mixture

    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    mixture = Mixture([len(rows)], [1.0], cfg["seed"])
    return [rows[r] for step in range(cfg["steps"]) for _, r in mixture.draw(step, per_step)]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def trl_dpo(cfg: dict, torch, pending: list[dict]):
    """DPOTrainer with a frozen copy of the model as its reference, reference log-probs computed at
    each step as ours (precompute_ref_log_probs off), sigmoid loss; its collator tapped for counts."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list([{"prompt": user(r["prompt"]), "chosen": assistant(r["chosen"]),
                               "rejected": assistant(r["rejected"])}
                              for r in drawn_rows(cfg, cfg["data"]["prefs"], cfg["batch"])])

    def load():
        return AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)

    args = DPOConfig(**trl_common(cfg), per_device_train_batch_size=cfg["batch"] // cfg["grad_accum"],
                     max_length=cfg["max_length"], beta=cfg["beta"], loss_type=["sigmoid"],
                     precompute_ref_log_probs=False, train_sampling_strategy="sequential")
    trainer = DPOTrainer(model=load(), ref_model=load(), args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(cfg["model"]))
    collate = trainer.data_collator

    def tapped_collate(examples):
        batch = collate(examples)
        pending.append(counts(batch))
        return batch

    trainer.data_collator = tapped_collate
    return trainer, cfg["grad_accum"]  # collator calls per optimizer step


def trl_grpo(cfg: dict, torch, pending: list[dict]):
    """GRPOTrainer: one generation batch (batch prompts x group completions) per optimizer step, split
    into grad_accum micro-batches as ours; `generate` on the policy; its rollout tapped and timed."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_list([{"prompt": user(r["prompt"])}
                              for r in drawn_rows(cfg, cfg["data"]["prompts"], cfg["batch"])])
    args = GRPOConfig(**trl_common(cfg), per_device_train_batch_size=cfg["batch"] * cfg["group"] // cfg["grad_accum"],
                      steps_per_generation=cfg["grad_accum"], num_generations=cfg["group"], num_iterations=1,
                      max_completion_length=cfg["max_new_tokens"], temperature=cfg["temperature"], top_p=1.0, top_k=0,
                      beta=cfg["beta"], epsilon=0.2, loss_type="dapo", scale_rewards="group", shuffle_dataset=False,
                      log_completions=False)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32),
                          reward_funcs=trl_word_reward, args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(cfg["model"]))
    rollout = trainer._generate_and_score_completions

    def tapped_rollout(inputs):
        t, cpu = time.perf_counter(), time.process_time()
        out = rollout(inputs)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)  # (P*G, Tp + Tc) as TRL trains on them
        pending.append({"real": int(mask.sum()), "slots": int(mask.numel()),
                        "trained": int(out["completion_mask"].sum()), "rollout_s": time.perf_counter() - t,
                        "rollout_cpu_s": time.process_time() - cpu})
        return out

    trainer._generate_and_score_completions = tapped_rollout
    return trainer, 1  # one rollout per optimizer step


def worker_trl(args: list[str]) -> None:
    """TRL's trainer for the objective, with a callback that clocks every optimizer step."""
    cfg, out = json.loads(args[0]), args[1]
    torch = start_torch(cfg["threads"])
    from transformers import TrainerCallback

    steps: list[dict] = []
    pending: list[dict] = []
    losses: list[float] = []
    extra: dict = {}
    trainer, per_step = (trl_dpo if cfg["objective"] == "dpo" else trl_grpo)(cfg, torch, pending)

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            mine, pending[:per_step] = pending[:per_step], []
            steps.append({"t": time.perf_counter(), "cpu": time.process_time(), **summed(mine)})
            if state.global_step == cfg["steps"]:
                extra["after_last_step_maxrss_kib"] = maxrss_kib()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])
                if "reward" in logs and len(steps) >= len(losses):
                    steps[len(losses) - 1]["reward"] = logs["reward"]

        def on_train_begin(self, a, state, control, **kw):
            extra["before_first_step_kib"] = rss_kib()

    trainer.add_callback(Clock())
    t0 = time.perf_counter()
    trainer.train()
    trainer.save_model(os.path.join(cfg["out"], "final"))  # as our loop writes its final folder
    for s, loss in zip(steps, losses):
        s["loss"] = loss
    write_report(out, cfg, steps, {"t_start": t0, "t_end": time.perf_counter(), **extra})


WORKERS = {"ours": worker_ours, "trl": worker_trl}


# ---- the runner ----------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark our DPO and GRPO against TRL's trainers (see bench/README.md).")
    p.add_argument("--quick", action="store_true",
                   help="hidden 128, 2 layers, vocab 4096, shorter rows, 4 steps (1 warm-up)")
    p.add_argument("--objectives", default=",".join(OBJECTIVES),
                   help="comma-separated subset of " + ",".join(OBJECTIVES))
    p.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    p.add_argument("--steps", type=int, help="optimizer steps per run (default 10, quick 4)")
    p.add_argument("--warmup", type=int, help="first steps left out of the timing (default 2, quick 1)")
    p.add_argument("--batch", type=int, default=8,
                   help="DPO: pairs per optimizer step; GRPO: prompts per step is batch / 2")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step")
    p.add_argument("--group", type=int, default=8, help="GRPO: completions per prompt (TRL's num_generations)")
    p.add_argument("--max-new-tokens", type=int, help="GRPO: longest completion (default 32, quick 16)")
    p.add_argument("--beta", type=float, default=0.1,
                   help="DPO's beta and GRPO's KL weight (non-zero: a reference model on both sides)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child (the same on both sides)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per side and objective (order alternating); the fastest is reported")
    p.add_argument("--tag", default="preference", help="results are saved as bench/results/TAG.json and TAG.md")
    a = p.parse_args(argv)
    a.steps = a.steps or (4 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    a.max_new_tokens = a.max_new_tokens or (16 if a.quick else 32)
    a.max_length = 256 if a.quick else 384  # DPO: every row is built to fit
    a.prompt_tokens, a.answer_tokens, a.rows = (32, 48, 64) if a.quick else (64, 96, 256)
    return a


def setup_of(a: argparse.Namespace) -> train.Setup:
    """bench/train.py's --quick model by default (already built by it); a smaller one with --quick."""
    if a.quick:
        return train.Setup(vocab=4096, hidden=128, intermediate=344, layers=2, heads=4, kv_heads=2, rows=64)
    return train.Setup(vocab=8192, hidden=256, intermediate=688, layers=4, heads=4, kv_heads=2, rows=128)


def child_cfg(side: str, objective: str, model: str, data: dict, a: argparse.Namespace) -> dict:
    grpo = objective == "grpo"
    return {"side": side, "objective": objective, "model": model, "data": data, "threads": a.threads, "steps": a.steps,
            "warmup": a.warmup, "batch": a.batch // 2 if grpo else a.batch, "grad_accum": a.grad_accum,
            "max_length": a.max_length, "lr": 1e-5 if grpo else 5e-5, "beta": a.beta, "seed": 0, "group": a.group,
            "max_new_tokens": a.max_new_tokens, "temperature": 1.0,
            "out": os.path.join(RESULTS, "out", f"pref-{side}-{objective}")}


def one_run(side: str, objective: str, model: str, data: dict, a: argparse.Namespace, logs: str, rep: int) -> dict:
    cfg = child_cfg(side, objective, model, data, a)
    shutil.rmtree(cfg["out"], ignore_errors=True)
    print(f"  {objective:4s} {side:4s} ...", end=" ", flush=True)
    name = f"pref-{objective}-{side}-{rep}"
    m, r = run_child(__file__, side, cfg, os.path.join(logs, name + ".json"), os.path.join(logs, name + ".log"),
                     a.threads)
    shutil.rmtree(cfg["out"], ignore_errors=True)
    if r is None or len(r["steps"]) != a.steps:
        print(f"FAILED (exit {m.exit_code}, see {m.log})", flush=True)
        return {"measured": asdict(m), "failed": True}
    out = summarize_run(r, a.warmup)
    out["measured"] = {**asdict(m), "cpu_s": m.cpu_s}
    print(f"{out['steps_s']:.3f} steps/s ({out['step_s']:.2f} s/step, {out['steps_cpu_s']:.3f} per CPU s), "
          f"{out['real_tok_s']:6.0f} real tok/s, peak RSS {m.maxrss_kib * 1024 / GB:4.2f} GB, wall {m.wall_s:5.1f} s, "
          f"other work {m.other_cpu_s:5.1f} CPU s", flush=True)
    return out


def summarize_run(r: dict, warmup: int) -> dict:
    """bench/train.py's figures of the timed steps, with steps per second and GRPO's rollout share."""
    out = train.summarize_run(r, warmup)
    out.update(steps_s=out["timed_steps"] / out["timed_s"], steps_cpu_s=out["timed_steps"] / out["timed_cpu_s"])
    timed = r["steps"][warmup:]
    if "rollout_s" in timed[0]:
        # sampling, rewards, reference log-probs
        out["rollout_share"] = sum(s["rollout_s"] for s in timed) / out["timed_s"]
        out["rollout_cpu_step_s"] = sum(s["rollout_cpu_s"] for s in timed) / len(timed)
        # forward, backward, step
        out["update_cpu_step_s"] = out["timed_cpu_s"] / len(timed) - out["rollout_cpu_step_s"]
        out["rewards"] = [s.get("reward") for s in r["steps"]]
    return out


def main(argv: list[str]) -> None:
    a = parse_args(argv)
    if not 0 < a.warmup < a.steps:
        sys.exit("error: --warmup must be at least 1 and below --steps")
    if a.batch % (2 * a.grad_accum):
        sys.exit("error: --batch must be a multiple of 2 x --grad-accum (GRPO takes batch / 2 prompts per step)")
    objectives = [o for o in a.objectives.split(",") if o]
    sides = [s for s in a.sides.split(",") if s]
    logs = os.path.join(RESULTS, "logs")
    os.makedirs(logs, exist_ok=True)
    s = setup_of(a)
    results = {"started": run.load_now(), "machine": run.machine(),
               "versions": package_versions(("torch", "transformers", "trl", "surgery")), "setup": asdict(s),
               "args": vars(a)}
    print(f"load at start: {results['started']['uptime']}", flush=True)
    model = train.ensure_model(s, argparse.Namespace(max_length=512), logs)  # train.py's folder (its SFT rows unused)
    data = write_data(model, os.path.join(RESULTS, "out", "pref-data"), a)
    results["model"] = os.path.relpath(model, run.ROOT)
    results["objectives"] = {}
    for i, objective in enumerate(objectives):
        samples: dict[str, list[dict]] = {side: [] for side in sides}
        for rep in range(a.repeat):
            for side in (sides if (i + rep) % 2 == 0 else sides[::-1]):
                samples[side].append(one_run(side, objective, model, data, a, logs, rep))
        best = {side: min((x for x in v if not x.get("failed")), key=lambda x: x["timed_s"], default=v[0])
                for side, v in samples.items()}
        best["all"] = {side: [round(x.get("steps_s", 0), 4) for x in v] for side, v in samples.items()}
        results["objectives"][objective] = best
    results["finished"] = run.load_now()
    run.save_results(results, markdown(results), a.tag)


def markdown(results: dict) -> str:
    s, a = results["setup"], results["args"]
    trl = results["versions"]["trl"]
    lines = [f"# our DPO and GRPO vs TRL {trl} DPOTrainer and GRPOTrainer — {results['started']['time']}", "",
             f"Model: Llama, vocab {s['vocab']}, hidden {s['hidden']}, intermediate {s['intermediate']}, "
             f"{s['layers']} layers, {s['heads']} heads ({s['kv_heads']} KV), float32, a frozen copy as the reference "
             f"(beta {a['beta']}). DPO: {a['batch']} pairs per step in {a['grad_accum']} micro-batches, "
             f"max length {a['max_length']}. GRPO: {a['batch'] // 2} prompts x {a['group']} completions per step in "
             f"{a['grad_accum']} micro-batches, up to {a['max_new_tokens']} new tokens, temperature 1. AdamW, cosine, "
             f"{a['steps']} steps of which the first {a['warmup']} are not timed; {a['threads']} torch thread(s) each. "
             f"Machine: {results['machine']['cpus']} CPUs. Load at start: `{results['started']['uptime']}`; "
             f"at end: `{results['finished']['uptime']}`.", "",
             "| objective | side | steps/s | s/step | steps per CPU s | real tok/s | real tok per CPU s | "
             "rollout share | peak RSS GB | RSS at step 1 GB | CPU s (whole child) | other work CPU s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for objective, r in results["objectives"].items():
        for side in SIDES:
            x = r.get(side)
            if not x or x.get("failed"):
                lines.append(f"| {objective} | {side} | failed |" + " |" * 10)
                continue
            m = x["measured"]
            share = f"{x['rollout_share']:.2f}" if "rollout_share" in x else "—"
            lines.append(f"| {objective} | {side} | {x['steps_s']:.3f} | {x['step_s']:.2f} | {x['steps_cpu_s']:.3f} | "
                         f"{x['real_tok_s']:.0f} | {x['real_tok_cpu_s']:.0f} | {share} | "
                         f"{m['maxrss_kib'] * 1024 / GB:.2f} | {x['rss_before_first_step_gb']:.2f} | "
                         f"{m['cpu_s']:.1f} | {m['other_cpu_s']:.1f} |")
    lines += [""] + [line for objective, r in results["objectives"].items() for line in comparison(objective, r)]
    return "\n".join(lines) + "\n"


def comparison(objective: str, r: dict) -> list[str]:
    o, t = r.get("ours"), r.get("trl")
    if not (o and t) or o.get("failed") or t.get("failed"):
        return []
    rss = o["measured"]["maxrss_kib"] / t["measured"]["maxrss_kib"]
    line = (f"- {objective}: ours / TRL steps per second {o['steps_s'] / t['steps_s']:.2f}x (per CPU second "
            f"{o['steps_cpu_s'] / t['steps_cpu_s']:.2f}x), peak RSS {rss:.2f}x; "
            f"step times ours {o['step_durations_s']}, TRL {t['step_durations_s']}.")
    if "rollout_cpu_step_s" in o:
        line += (f" CPU s per step, rollout (sampling, rewards, reference log-probs) + update (forward, backward, "
                 f"AdamW): ours {o['rollout_cpu_step_s']:.2f} + {o['update_cpu_step_s']:.2f}, TRL "
                 f"{t['rollout_cpu_step_s']:.2f} + {t['update_cpu_step_s']:.2f}.")
    same = o["per_step_counts"] == t["per_step_counts"]
    if objective == "dpo":
        losses = ", ".join(f"{x:.4f}/{y:.4f}" for x, y in zip(o["losses"], t["losses"]))
        line += (f" Per-step token counts {'identical' if same else 'DIFFER'} ({o['real_tokens']} real, "
                 f"{o['slots_tokens']} padded slots, {o['trained_tokens']} scored tokens timed); "
                 f"losses ours/TRL by step: {losses}.")
    else:
        trained = [(x["trained"], y["trained"]) for x, y in zip(o["per_step_counts"], t["per_step_counts"])]
        line += (f" Completion tokens by step (ours, TRL): {trained}; real tokens timed {o['real_tokens']} and "
                 f"{t['real_tokens']}, padded slots {o['slots_tokens']} and {t['slots_tokens']}; "
                 f"mean reward by step ours {[round(x, 3) for x in o['rewards']]}, "
                 f"TRL {[round(x, 3) if x is not None else None for x in t['rewards']]}.")
    return [line]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
        sys.path.insert(0, run.ROOT)  # `trainers` from the repository root
        WORKERS[sys.argv[1]](sys.argv[2:])
    else:
        main(sys.argv[1:])
