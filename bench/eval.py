"""Benchmark the eval loop: `surgery eval` against the bare lm-eval CLI on the same model, tasks and limit;
a second `surgery eval` of unchanged weights (served from the results store); and `surgery soup` and
`surgery sweep` per candidate, with where a candidate's time goes (merge, hashing, loading the model,
lm-eval's scoring, the rest).

The model is the small world's character-level Llama (trainers/world/zoo.py `init_model`: hidden 128,
4 layers), untrained, with three more of other seeds as the soup's and the sweep's inputs. Random weights
generate until each task's token limit, which is the slow case for lm-eval's generation tasks.

    .venv/bin/python bench/eval.py                  # world suite, limit 5, each side twice: ~6 minutes under load
    .venv/bin/python bench/eval.py --repeat 3 --limit 10

Each run is a fresh child process measured as bench/run.py's are (wall, CPU, os.wait4 peak RSS, other
work from /proc/stat); this runner imports no torch. See bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict

import run  # bench/run.py: child-process measurements, machine and load
from run import BIN, GB, PYTHON, RESULTS, ROOT, measure

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "world-eval")
SEEDS = {"base": 0, "ft1": 1, "ft2": 2, "ft3": 3}
WORLD = "world_add,world_reverse,world_capital,world_capital_choice,world_perplexity"


# ---- children -----------------------------------------------------------------------------------

def worker_build(args: list[str]) -> None:
    from trainers.world.zoo import init_model

    for name, seed in SEEDS.items():
        if not os.path.exists(os.path.join(args[0], name, "config.json")):
            init_model(os.path.join(args[0], name), seed=seed)


def worker_phases(args: list[str]) -> None:
    """A `surgery` command run in this process with timers around each phase of a candidate: the merge
    (the engine writing the folder), hashing the weights (`open_checkpoint`), loading the model (lm-eval's
    HFLM, from the folder), and lm-eval's evaluation less the load. Writes the totals to args[0]."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import evals.scoring.harness as harness
    import evals.scoring.run as scoring_run
    import evals.search.soup as soup
    import evals.search.sweep as sweep
    from surgery.cli import main

    spent = {"merge": 0.0, "hash": 0.0, "load": 0.0, "tasks": 0.0, "lm_eval": 0.0, "candidates": 0}

    def timed(key, fn, count=False):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
                spent["candidates"] += int(count)
        return wrapper

    sweep.merge_spec = timed("merge", sweep.merge_spec)
    soup.merge_spec = timed("merge", soup.merge_spec)
    scoring_run.open_checkpoint = timed("hash", scoring_run.open_checkpoint, count=True)
    harness.evaluate_path = timed("lm_eval", harness.evaluate_path)
    HFLM.__init__ = timed("load", HFLM.__init__)
    TaskManager.load = timed("tasks", TaskManager.load)  # building the tasks: reading their data
    t0 = time.perf_counter()
    try:
        main(args[1:], standalone_mode=False)
    finally:
        spent["total"] = time.perf_counter() - t0
        spent["lm_eval"] -= spent["load"] + spent["tasks"]  # both happen inside lm-eval's call
        with open(args[0], "w") as f:
            json.dump(spent, f)


WORKERS = {"build": worker_build, "phases": worker_phases}


# ---- the runner ---------------------------------------------------------------------------------

def surgery_eval(model: str, args, db: str) -> list[str]:
    return [os.path.join(BIN, "surgery"), "eval", model, "--tasks", args.tasks, "--limit", str(args.limit),
            "--db", db, "--device", "cpu", "--batch-size", "8"]


def lm_eval_cli(model: str, args) -> list[str]:
    return [os.path.join(BIN, "lm_eval"), "--model", "hf", "--model_args", f"pretrained={model}", "--tasks",
            args.tasks, "--include_path", os.path.join(ROOT, "evals", "tasks"), "--limit", str(args.limit),
            "--device", "cpu", "--batch_size", "8"]


def search_args(kind: str, models: str, args, db: str, out: str) -> list[str]:
    common = ["--tasks", args.tasks, "--limit", str(args.limit), "--db", db, "--device", "cpu", "--out", out]
    if kind == "soup":
        return ["soup", *(os.path.join(models, m) for m in ("ft1", "ft2", "ft3")), *common]
    spec = os.path.join(RESULTS, "eval-sweep.yaml")
    with open(spec, "w") as f:
        json.dump({"merge_method": "linear", "models": [
            {"model": os.path.join(models, "ft1"), "parameters": {"weight": 0.5}},
            {"model": os.path.join(models, "ft2"), "parameters": {"weight": 0.5}}]}, f)  # JSON is YAML
    return ["sweep", spec, "--param", "models.0.parameters.weight", "--values", args.values, *common]


def fresh(path: str) -> str:
    for p in (path, path + "-wal", path + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    return path


def one(label: str, cmd: list[str], logs: str, rows: list[dict]) -> dict:
    run.settle()
    m = measure(cmd, os.path.join(logs, f"eval-{label}.log"))
    row = {"label": label, **asdict(m), "cpu_s": m.cpu_s, "load": os.getloadavg()[0]}
    rows.append(row)
    status = "ok" if m.exit_code == 0 else f"FAILED (exit {m.exit_code}, see {m.log})"
    print(f"  {label:28s} wall {m.wall_s:6.1f} s  CPU {m.cpu_s:6.1f} s  peak RSS {m.maxrss_kib * 1024 / GB:5.2f} GB  "
          f"other work {m.other_cpu_s:6.1f} CPU s  {status}", flush=True)
    return row


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark surgery eval against lm-eval's CLI (see bench/README.md).")
    p.add_argument("--tasks", default=WORLD, help="comma-separated tasks (default: the world suite)")
    p.add_argument("--limit", type=int, default=5, help="documents per task")
    p.add_argument("--repeat", type=int, default=2, help="runs of each side, order alternating")
    p.add_argument("--values", default="0.25,0.5,0.75", help="the sweep's values (one candidate each)")
    p.add_argument("--parts", default="eval,stored,soup,sweep", help="which parts to run")
    p.add_argument("--tag", default="eval", help="results are saved as bench/results/TAG.json and TAG.md")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    logs = os.path.join(RESULTS, "logs")
    os.makedirs(logs, exist_ok=True)
    out = {"started": run.load_now(), "machine": run.machine(), "args": vars(args), "rows": []}
    print(f"load at start: {out['started']['uptime']}", flush=True)
    if not all(os.path.exists(os.path.join(MODELS, m, "config.json")) for m in SEEDS):
        m = measure([PYTHON, __file__, "build", MODELS], os.path.join(logs, "eval-build.log"))
        if m.exit_code:
            sys.exit(f"error: building the models failed; see {m.log}")
    model, rows = os.path.join(MODELS, "base"), out["rows"]
    db, search_db = (os.path.join(RESULTS, f"eval-{n}.sqlite") for n in ("store", "search-store"))
    if "eval" in parts:
        for rep in range(args.repeat):
            for side in (("surgery", "lm_eval") if rep % 2 == 0 else ("lm_eval", "surgery")):
                cmd = surgery_eval(model, args, fresh(db)) if side == "surgery" else lm_eval_cli(model, args)
                one(f"{side} #{rep + 1}", cmd, logs, rows)
    if "stored" in parts:
        if not os.path.exists(db):
            one("surgery (fill the store)", surgery_eval(model, args, db), logs, rows)
        one("surgery, from the store", surgery_eval(model, args, db), logs, rows)
        one("python -c 'import torch'", [PYTHON, "-c", "import torch"], logs, rows)  # the served path's floor
    for kind in ("soup", "sweep"):
        if kind in parts:
            folder = os.path.join(RESULTS, "out", f"eval-{kind}")
            shutil.rmtree(folder, ignore_errors=True)
            report = os.path.join(logs, f"eval-{kind}-phases.json")
            row = one(f"surgery {kind}", [PYTHON, __file__, "phases", report,
                                          *search_args(kind, MODELS, args, fresh(search_db), folder)], logs, rows)
            if os.path.exists(report):
                with open(report) as f:
                    row["phases"] = json.load(f)
            shutil.rmtree(folder, ignore_errors=True)
    out["finished"] = run.load_now()
    run.save_results(out, markdown(out), args.tag)


def markdown(out: dict) -> str:
    a = out["args"]
    lines = [f"# surgery eval vs lm-eval's CLI — {out['started']['time']}", "",
             f"Tasks {a['tasks']}, limit {a['limit']}, batch 8, CPU. Load at start `{out['started']['uptime']}`, "
             f"at end `{out['finished']['uptime']}`.", "",
             "| run | wall s | CPU s | peak RSS GB | other work CPU s | load (1 min) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        lines.append(f"| {r['label']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['maxrss_kib'] * 1024 / GB:.2f} | "
                     f"{r['other_cpu_s']:.1f} | {r['load']:.1f} |")
    by = {}
    for r in out["rows"]:
        by.setdefault(r["label"].split(" #")[0], []).append(r)
    if "surgery" in by and "lm_eval" in by:
        s, e = (min(by[k], key=lambda r: r["wall_s"]) for k in ("surgery", "lm_eval"))
        sc, ec = (min(r["cpu_s"] for r in by[k]) for k in ("surgery", "lm_eval"))
        lines += ["", f"- surgery eval / lm-eval CLI, best of each: wall {s['wall_s'] / e['wall_s']:.3f}x, CPU "
                  f"{sc / ec:.3f}x, peak RSS {s['maxrss_kib'] / e['maxrss_kib']:.3f}x."]
    for r in out["rows"]:
        p = r.get("phases")
        if p and p["candidates"]:
            n = p["candidates"]
            rest = p["total"] - p["merge"] - p["hash"] - p["load"] - p["tasks"] - p["lm_eval"]
            lines.append(f"- {r['label']}: {n} checkpoints scored, {p['total'] / n:.2f} s each in-process "
                         f"(merge {p['merge']:.2f} s, hashing {p['hash']:.2f} s, model load {p['load']:.2f} s, "
                         f"task data {p['tasks']:.2f} s, lm-eval's scoring {p['lm_eval']:.2f} s, rest {rest:.2f} s "
                         "over the command).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
        sys.path.insert(0, ROOT)
        WORKERS[sys.argv[1]](sys.argv[2:])
    else:
        main(sys.argv[1:])
