"""The safety data's trade-off on the small world: the zoo's base fine-tuned on its general tasks (add,
reverse, capital) mixed with the safety data (trainers/safety), once per mixing weight w of the
refusal part, the other parts (look-alikes, made-up countries, the medical policy) at fixed weights.
Each model is scored on the world suite and the alignment suite; against the w = 0 model each gets
its alignment tax (evals/analysis/metrics.py: G on the world suite's bounded tasks, tested) beside its
refusal rate (the mean over harm categories), over-refusal on look-alikes, uncertainty acknowledged
and the policy followed.

    OUT/data/w=W/{sft.jsonl,card.json,...}   the data built at weight W (`surgery safety-data`)
    OUT/runs/w=W/final                        the fine-tuned model
    OUT/curve.json, OUT/curve.png             the numbers, and the curve (evals/report/plots.py)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evals.analysis.metrics import AlignmentTax, alignment_tax
from evals.scoring.scores import TaskScore
from evals.scoring.suites import HARM_CATEGORIES, SUITES
from evals.search.candidates import Scorer
from surgery.errors import InputError

GENERAL = tuple(t for t in SUITES["world"] if t != "world_perplexity")  # bounded: a mean can hold them
ALIGNMENT = SUITES["alignment"]
TASKS = GENERAL + ALIGNMENT
WORLD = ("add", "reverse", "capital")  # the general data: the zoo's training rows of these tasks
OTHER_PARTS = {"lookalike": 0.1, "unanswerable": 0.05, "policy": 0.05}  # fixed; the general data weighs 1
LR = 5e-4
BATCH = 32


@dataclass(frozen=True)
class Point:
    weight: float
    model: str
    scores: dict[str, TaskScore]
    tax: AlignmentTax  # against the w = 0 model

    def rates(self) -> dict[str, float]:
        s = self.scores
        return {"refusal": sum(s[f"refusal_{c}"].value for c in HARM_CATEGORIES) / len(HARM_CATEGORIES),
                "over_refusal": s["over_refusal_lookalike"].value, "uncertainty": s["uncertainty"].value,
                "policy": s["policy_medical"].value, "tax": self.tax.tax, "G": self.tax.general_after}


def check_zoo(zoo: str) -> None:
    missing = [p for p in ["base/config.json", *(f"data/{t}/train.jsonl" for t in WORLD)]
               if not os.path.isfile(os.path.join(zoo, p))]
    if missing:
        raise InputError(f"zoo {os.path.abspath(zoo)}: {missing[0]} is missing; give the models folder that "
                         "`surgery world DIR` made (DIR/models)")


def check_weights(weights: Sequence[float]) -> None:
    if not weights or weights[0] != 0 or any(w < 0 for w in weights) or list(weights) != sorted(set(weights)):
        raise InputError(f"--weights {','.join(map(str, weights))}: give distinct increasing weights >= 0 starting at "
                         "0 (the model without refusal data, which the tax is measured against)")


def data_spec(zoo: str, out: str, weight: float, rows: int, seed: int) -> dict:
    """The safety-data spec of one point: the world's general rows (weight 1 in all) and the safety parts."""
    general = [{"path": os.path.join(os.path.abspath(zoo), "data", t, "train.jsonl"), "weight": 1 / len(WORLD)}
               for t in WORLD]
    return {"out": out, "rows": rows, "mix": {"refusal": weight, **OTHER_PARTS}, "general": general,
            "formats": ["sft"], "seed": seed}


def run_spec(base: str, train: str, out: str, steps: int, seed: int) -> dict:
    return {"base": base, "objective": {"name": "sft"}, "method": {"name": "full"}, "data": {"train": train},
            "chat_template": "none", "optim": {"lr": LR, "weight_decay": 0.0},
            "schedule": {"total_steps": steps, "warmup_steps": max(1, steps // 40), "cosine": True,
                         "min_lr_ratio": 0.1},
            "batch": {"size": BATCH, "max_length": 96}, "save_every": max(1, steps // 2), "seed": seed, "out": out}


def train_point(zoo: str, out: str, weight: float, steps: int, seed: int, say: Callable[[str], None]) -> str:
    """The model of one weight (kept when finished; a run that stopped continues from its checkpoint)."""
    from trainers.continual.sequence import finished, last_checkpoint
    from trainers.loops import train
    from trainers.safety.build import SafetySpec, build
    from trainers.spec import parse_run

    tag = f"w={weight:g}"
    run = os.path.join(out, "runs", tag)
    if finished(os.path.join(run, "final")):
        return os.path.abspath(os.path.join(run, "final"))
    data = os.path.join(out, "data", tag)
    if not os.path.isfile(os.path.join(data, "card.json")):
        build(SafetySpec.model_validate(data_spec(zoo, data, weight, steps * BATCH, seed)), f"safety data {tag}",
              force=True)
    say(f"training {tag} ({steps} steps)")
    spec = run_spec(os.path.join(os.path.abspath(zoo), "base"), os.path.join(data, "sft.jsonl"), run, steps, seed)
    return os.path.abspath(train(parse_run(spec, f"safety curve {tag}"), resume=last_checkpoint(run), quiet=True))


def run_curve(zoo: str, out: str, score: Scorer, weights: Sequence[float], steps: int = 300, seed: int = 0,
              say: Callable[[str], None] = print) -> list[Point]:
    check_zoo(zoo)
    check_weights(weights)
    models = {w: train_point(zoo, out, w, steps, seed, say) for w in weights}
    scores = {w: score(m) for w, m in models.items()}
    parent = scores[weights[0]]
    return [Point(w, models[w], scores[w], alignment_tax(parent, scores[w], GENERAL, ALIGNMENT, seed=seed))
            for w in weights]


def curve_rows(points: Sequence[Point]) -> list[dict]:
    rows = []
    for p in points:
        r = p.rates()
        rows.append({"weight": p.weight, "refusal": r["refusal"], "over-refusal": r["over_refusal"],
                     "uncertainty": r["uncertainty"], "policy": r["policy"], "G": r["G"], "tax": r["tax"],
                     "tax tested": ("significant" if p.tax.significant else "noise") if p.weight else "",
                     "tax p": p.tax.tax_test.p_value if p.weight else None})
    return rows


def save(points: Sequence[Point], out: str) -> list[str]:
    """OUT/curve.json (every point's rates, tax with its test, and per-task scores) and OUT/curve.png."""
    from evals.report.plots import save_png, tradeoff_figure

    result = [{**p.rates(), "weight": p.weight, "model": p.model,
               "tax_interval": [p.tax.tax_test.low, p.tax.tax_test.high], "tax_p": p.tax.tax_test.p_value,
               "tax_significant": p.tax.significant, "scores": {t: s.value for t, s in p.scores.items()}}
              for p in points]
    path = os.path.join(out, "curve.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    series = {name: [r[name] for r in result] for name in ("refusal", "over_refusal", "uncertainty", "policy", "tax")}
    figure = tradeoff_figure([p.weight for p in points], series, "refusal", "over_refusal", "tax")
    return [path, save_png(figure, os.path.join(out, "curve.png"))]
