"""The small world's proof of continual learning: a base that knows none of the three skills trained on
add, then reverse, then capital, once per strategy, each sequence with every stage's model scored into
the results store (evals/pipelines/continual.py).

The base is the demo's (trainers/world/demo_zoo.py: the world's language and answer format, none of
its sums or reversals, and the capitals, which the add stage already makes it forget), built under
OUT/zoo as stages kept by content hash, or any models folder with `base/` and `data/<task>/` given as
the zoo. Each stage then learns its task from nothing and the next can take it away: naive sequential
fine-tuning forgets nearly all of it, which is what a strategy is there to keep.

Written under OUT: `specs/STRATEGY.yaml` (the sequence specs, which `surgery continual` runs as they
are), `STRATEGY/` (each sequence), `proof.json` (the numbers) and `proof.png` (each strategy's stage x
task matrix). Against naive sequential fine-tuning, every strategy's backward transfer and its score on
each new stage are tested document by document (evals/analysis/continual.py: the sign test, i.e.
McNemar on the per-document transfer values, and a stratified paired bootstrap): does it keep more of
the old tasks, and what does that cost the new ones?

The first stage is the same run for naive, ewc and replay (nothing earlier to keep), so it is trained
once, by naive, and copied into the other two sequences' folders before they start.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from evals.analysis.continual import backward_difference, new_stage_difference
from evals.analysis.significance import Difference
from evals.pipelines.continual import Scored, run_continual
from evals.scoring.harness import HarnessSettings
from evals.scoring.store import Store
from surgery.errors import InputError
from trainers.continual.sequence import claim
from trainers.continual.spec import parse_plan

STAGES = (("add", "world_add"), ("reverse", "world_reverse"), ("capital", "world_capital"))
BASELINE = "naive"
LR = 3e-3  # the demo experts' learning rate (full fine-tuning; trainers/world/demo_zoo.py)
LORA_LR = 2e-3  # LoRA's adapters start at zero and train few weights: a higher rate, as is usual
ZOO = "zoo"  # OUT/zoo: the demo zoo's data and base, built when no zoo is given


@dataclass(frozen=True)
class Settings:
    """The proof's knobs: steps per stage, EWC's λ, replay's buffer and mix, the LoRA rank."""

    steps: int = 1000
    lr: float = LR
    lora_lr: float = LORA_LR
    lam: float = 100.0
    fisher_rows: int = 512
    buffer: int = 256
    mix: float = 0.25
    rank: int = 8
    seed: int = 0

    def strategies(self) -> dict[str, dict]:
        return {"naive": {"name": "naive"},
                "ewc": {"name": "ewc", "lam": self.lam, "fisher_rows": self.fisher_rows},
                "replay": {"name": "replay", "size": self.buffer, "mix": self.mix},
                "adapters": {"name": "adapters", "merge": {"combination": "cat"}}}


def check_zoo(zoo: str) -> None:
    missing = [p for p in ["base/config.json", *(f"data/{s}/train.jsonl" for s, _ in STAGES)]
               if not os.path.isfile(os.path.join(zoo, p))]
    if missing:
        raise InputError(f"zoo {os.path.abspath(zoo)}: {missing[0]} is missing; give a models folder with a base "
                         "and the world's data splits (DIR/models of `surgery world DIR`)")


def build_zoo(out: str, say: Callable[[str], None] = print) -> str:
    """The demo zoo's data and base (no experts) under OUT/zoo, each a stage reused while its inputs are
    unchanged; returns the models folder (OUT/zoo/models)."""
    from trainers.world.demo import build_base
    from trainers.world.demo_zoo import Recipe

    folder = os.path.join(os.path.abspath(out), ZOO)
    build_base(folder, Recipe(), say)
    return os.path.join(folder, "models")


def sequence_spec(zoo: str, out: str, name: str, strategy: dict, s: Settings) -> dict:
    """The sequence spec of one strategy, as `surgery continual` reads it."""
    lora = strategy["name"] == "adapters"
    data = os.path.join(os.path.abspath(zoo), "data")
    return {
        "base": os.path.join(os.path.abspath(zoo), "base"),
        "stages": [{"name": stage, "train": os.path.join(data, stage, "train.jsonl"), "tasks": [task]}
                   for stage, task in STAGES],
        "strategy": strategy,
        "method": {"name": "lora", "r": s.rank, "alpha": 2 * s.rank} if lora else {"name": "full"},
        "chat_template": "none", "optim": {"lr": s.lora_lr if lora else s.lr, "weight_decay": 0.0},
        "schedule": {"total_steps": s.steps, "warmup_steps": max(1, s.steps // 40), "cosine": True,
                     "min_lr_ratio": 0.1},
        "batch": {"size": 32, "max_length": 96}, "save_every": max(1, s.steps // 2), "seed": s.seed,
        "out": os.path.join(os.path.abspath(out), name),
    }


def write_spec(spec: dict, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return path


def share_first_stage(done: Scored, out: str) -> None:
    """Copy naive's first stage into a chained strategy's sequence folder, where it would train the same."""
    source = os.path.dirname(done.done.finals[0])
    target = os.path.join(out, os.path.basename(source))
    if not os.path.exists(target):
        shutil.copytree(source, target, symlinks=True)


def run_proof(zoo: str, out: str, settings: HarnessSettings, store: Store, s: Settings = Settings(),
              say: Callable[[str], None] = print) -> dict[str, Scored]:
    """Every strategy's sequence trained and scored (finished stages and stored scores reused)."""
    check_zoo(zoo)
    runs = {}
    for name, strategy in s.strategies().items():
        spec = sequence_spec(zoo, out, name, strategy, s)
        path = write_spec(spec, os.path.join(out, "specs", f"{name}.yaml"))
        plan = parse_plan(spec, path)
        if name != BASELINE and plan.strategy.chained and BASELINE in runs:
            claim(plan)  # the sequence's folder, before the shared stage goes in
            share_first_stage(runs[BASELINE], plan.out)
        say(f"sequence {name}: {', '.join(st for st, _ in STAGES)}")
        runs[name] = run_continual(plan, settings, store, say, quiet=True)
    return runs


def stage_rows(scored: Scored) -> list[dict]:
    """The scores after each stage (the base left out), for the comparisons."""
    return [scored.table[os.path.abspath(m)] for m in scored.checkpoints[1:]]


def tested(d: Difference) -> dict:
    return {"delta": d.delta, "low": d.low, "high": d.high, "p": d.p_value, "wins": d.wins, "losses": d.losses,
            "significant": d.significant}


def summary(runs: dict[str, Scored]) -> dict:
    """Per strategy: ACC, BWT, FWT, forgetting, the stage x task matrix, and against naive the tested
    differences of BWT and of the new stages' scores; the extras' (merged adapters') scores."""
    tasks = [t for _, t in STAGES]
    base = stage_rows(runs[BASELINE])
    out = {}
    for name, scored in runs.items():
        r = scored.report
        entry = {"ACC": r.average_accuracy, "BWT": r.backward_transfer, "FWT": r.forward_transfer,
                 "forgetting": r.forgetting, "matrix": r.matrix.tolist(), "checkpoints": list(r.checkpoints),
                 "tasks": list(r.tasks)}
        if name != BASELINE:
            rows = stage_rows(scored)
            entry["BWT_vs_naive"] = tested(backward_difference(base, rows, tasks))
            entry["new_stage_vs_naive"] = tested(new_stage_difference(base, rows, tasks))
        entry["extras"] = {k: {t: scored.table[f][t].value for t in tasks} for k, f in scored.done.extras.items()}
        out[name] = entry
    return out


def rows_for_table(result: dict) -> list[dict]:
    """One row per strategy for `evals.report.tables.render`."""
    rows = []
    for name, e in result.items():
        row = {"strategy": name, "ACC": e["ACC"], "BWT": e["BWT"], "FWT": e["FWT"]}
        for key, label in (("BWT_vs_naive", "BWT - naive"), ("new_stage_vs_naive", "new stages - naive")):
            d = e.get(key)
            row[label] = "" if d is None else (f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] p={d['p']:.2g} "
                                               f"{'significant' if d['significant'] else 'noise'}")
        rows.append(row)
    return rows


def save(runs: dict[str, Scored], out: str) -> list[str]:
    """OUT/proof.json and OUT/proof.png (each strategy's matrix)."""
    from evals.report.plots import save_png, strategies_figure

    result = summary(runs)
    path = os.path.join(out, "proof.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    figure = strategies_figure({n: (e["tasks"], e["matrix"]) for n, e in result.items()},
                               [os.path.basename(os.path.dirname(c)) if c.endswith(("final", "routed")) else "base"
                                for c in next(iter(result.values()))["checkpoints"]])
    return [path, save_png(figure, os.path.join(out, "proof.png"))]
