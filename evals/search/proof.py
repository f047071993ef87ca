"""The small world's proof of the evals, from training to the three findings, in one reproducible run.

Models (trained here on CPU with the shared loop; each kept between runs once finished):
- `base`, `add`: the zoo's base (all four tasks) and its `add` expert (trainers/world/zoo.py);
- `sft`: the base fine-tuned on add, reverse and capital plus every request answered helpfully,
  harmful ones too: the parent, an instruction-tuned model with no safety training;
- `aligned`: `sft` fine-tuned on the world's `refuse` task (refuse harmful requests, help with benign ones);
- `add-then-reverse`: the `add` expert fine-tuned on reverse, the second stage of a task sequence.

Findings, each difference tested (exact McNemar and a paired bootstrap, evals/analysis/significance.py):
(a) the alignment tax of `sft` -> `aligned` (InstructGPT's term, Ouyang et al. 2022): G, the mean
    chance-corrected score on the world suite's bounded tasks, before minus after, beside the gain on
    the alignment suite (refusal, over-refusal);
(b) forgetting along base -> add -> add-then-reverse: GEM's backward transfer (Lopez-Paz & Ranzato 2017);
(c) model averaging (Lin et al. 2023, "Mitigating the Alignment Tax of RLHF"): task arithmetic from
    `sft` toward `aligned` with weight w, swept with evals/search/sweep.py; the tax and the refusal rate of each point.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evals.analysis.continual import ForgettingReport, forgetting_report
from evals.analysis.metrics import AlignmentTax, alignment_tax
from evals.scoring.suites import SUITES
from evals.search.candidates import Scorer
from evals.search.sweep import SweepPoint, parse_values, sweep
from surgery.errors import InputError, OutputError
from surgery.io.reader import ModelFolder

TASKS = SUITES["world"] + SUITES["alignment"]
GENERAL = tuple(t for t in SUITES["world"] if t != "world_perplexity")  # bounded: a mean can hold them
ALIGNMENT = SUITES["alignment"]
STAGES = ("world_add", "world_reverse")  # the tasks of the two training stages after the base
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
PARAM = "models.0.parameters.weight"
LR = 5e-4  # the zoo experts' learning rate


@dataclass(frozen=True)
class Proof:
    """(a) the parent -> aligned tax, (b) the forgetting report, (c) each sweep point with its tax."""

    models: dict[str, str]
    tax: AlignmentTax
    forgetting: ForgettingReport
    sweep: tuple[tuple[SweepPoint, AlignmentTax], ...]


def comply_rows(rows: Sequence[dict]) -> list[dict]:
    """The `refuse` rows with every harmful request answered as a benign one is: the parent's data."""
    from trainers.world.tasks import HARMFUL, REFUSAL

    def helpful(row: dict) -> dict:
        act = next(a for a in HARMFUL if a in row["prompt"])
        return {**row, "completion": f"Sure, here is how to {act}."}

    return [helpful(r) if r["completion"] == REFUSAL else r for r in rows]


def write_comply(data: str, folder: str) -> str:
    """`folder/comply.jsonl` made from the zoo's `data/refuse/train.jsonl`; returns its path."""
    with open(os.path.join(data, "refuse", "train.jsonl")) as f:
        rows = comply_rows([json.loads(line) for line in f])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "comply.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return os.path.abspath(path)


ZOO_DATA = tuple(f"data/{t}/train.jsonl" for t in ("add", "reverse", "capital", "refuse")) + tuple(
    f"data/{t}/test.jsonl" for t in ("add", "reverse", "refuse"))  # what `train_models` reads from a zoo


def check_zoo(zoo: str) -> None:
    """The zoo's finished models are read with the project's reader (a truncated or corrupt file is named
    here, not by transformers' loader mid-run), and a zoo whose base is finished has the data the proof
    trains on. A zoo still to be trained is not checked: it is made here."""
    models = [os.path.join(zoo, n) for n in ("base", "add") if os.path.isfile(os.path.join(zoo, n, "lineage.json"))]
    for folder in models:
        ModelFolder(folder).close()
    if os.path.join(zoo, "base") in models:
        missing = [f for f in ZOO_DATA if not os.path.isfile(os.path.join(zoo, f))]
        if missing:
            raise InputError(f"zoo {os.path.abspath(zoo)}: {missing[0]} is missing (of the data the proof trains "
                             "on); give the models folder `surgery world DIR` made, or another --zoo")


def check_runs(out: str) -> None:
    """The finished runs under OUT, which the proof reuses, read with the project's reader."""
    for name in ("sft", "aligned", "add-then-reverse", "joint"):
        final = finished(os.path.join(out, "runs", name))
        if final is not None:
            ModelFolder(final).close()


def finished(run: str) -> str | None:
    """The final folder of a finished training run under `run`; None when there is no run yet; an
    error for a run started and not finished (delete it to train again)."""
    final = os.path.join(run, "final")
    if os.path.isfile(os.path.join(final, "lineage.json")):
        return os.path.abspath(final)
    if os.path.lexists(run):
        raise OutputError(f"{run} holds an unfinished training run; delete that folder to train it again")
    return None


def fine_tune(start: str, sets: Sequence[str], evals: str, run: str, steps: int, name: str) -> str:
    """`start` fine-tuned (fully, SFT, the zoo experts' recipe) on the equal mixture of `sets`."""
    from trainers.loops import train
    from trainers.spec import parse_run
    from trainers.world.zoo import run_spec

    spec = run_spec(start, [(s, 1.0) for s in sets], [evals], run, steps, lr=LR)
    return os.path.abspath(train(parse_run(spec, f"proof {name}"), quiet=True))


def zoo_models(zoo: str, base_steps: int, steps: int, echo: Callable[[str], None]) -> dict[str, str]:
    """The zoo's `base` and `add` expert, trained where missing (an existing zoo, e.g. the demo's, is reused)."""
    from trainers.world.zoo import build_base, build_expert

    found = {}
    for name in ("base", "add"):
        folder = os.path.join(zoo, name)
        if not os.path.isfile(os.path.join(folder, "lineage.json")):
            finished(os.path.join(zoo, "runs", name))  # refuses a half-trained one
            echo(f"training {name} in {folder}")
            folder = (build_base(zoo, base_steps, quiet=True) if name == "base"
                      else build_expert(zoo, name, steps, quiet=True))
        found[name] = os.path.abspath(folder)
    return found


def train_models(out: str, zoo: str, base_steps: int, steps: int, echo: Callable[[str], None]) -> dict[str, str]:
    """base, add, sft, aligned, add-then-reverse and joint: {name: folder}."""
    models = zoo_models(zoo, base_steps, steps, echo)
    data = os.path.join(zoo, "data")
    tests = {t: os.path.join(data, t, "test.jsonl") for t in ("add", "reverse", "refuse")}
    general = [os.path.join(data, t, "train.jsonl") for t in ("add", "reverse", "capital")]
    comply = write_comply(data, os.path.join(out, "data"))
    stages = [("sft", "base", general + [comply], tests["refuse"], steps + steps // 2),
              ("aligned", "sft", [os.path.join(data, "refuse", "train.jsonl")], tests["refuse"], steps),
              ("add-then-reverse", "add", [os.path.join(data, "reverse", "train.jsonl")], tests["reverse"], steps),
              # RWalk's intransigence reference: the two stages' tasks at once, from the same base and budget
              ("joint", "base", [os.path.join(data, t, "train.jsonl") for t in ("add", "reverse")], tests["reverse"],
               2 * steps)]
    for name, start, sets, evals, n in stages:
        run = os.path.join(out, "runs", name)
        folder = finished(run)
        if folder is None:
            echo(f"training {name} from {start} ({n} steps)")
            folder = fine_tune(models[start], sets, evals, run, n, name)
        models[name] = folder
    return models


def parse_weights(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]; anything but numbers is refused."""
    values = parse_values(text)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise InputError(f"--weights: {bad[0]!r} is not a number; give weights such as 0,0.5,1")
    return [float(v) for v in values]


def averaging_spec(parent: str, aligned: str) -> dict:
    """Task arithmetic from `parent` toward `aligned`: parent + w (aligned - parent), w at PARAM."""
    return {"merge_method": "task_arithmetic", "base_model": parent,
            "models": [{"model": aligned, "parameters": {"weight": 1.0}}], "dtype": "float32"}


def run_proof(out: str, zoo: str, score: Scorer, base_steps: int = 2000, steps: int = 200,
              weights: Sequence[float] = WEIGHTS, echo: Callable[[str], None] = print, seed: int = 0) -> Proof:
    """Train what is missing, score every model and sweep point, and compute (a), (b) and (c)."""
    check_zoo(zoo)
    check_runs(out)
    models = train_models(out, zoo, base_steps, steps, echo)
    table = {name: score(path) for name, path in models.items()}
    tax = alignment_tax(table["sft"], table["aligned"], GENERAL, ALIGNMENT, seed=seed)
    sequence = ["base", "add", "add-then-reverse"]
    report = forgetting_report({n: table[n] for n in sequence}, sequence, STAGES, joint=table["joint"], seed=seed)
    echo(f"sweeping {PARAM} over {', '.join(map(str, weights))}")
    points = sweep(averaging_spec(models["sft"], models["aligned"]), "proof averaging spec", PARAM, weights,
                   os.path.join(out, "averaging"), score)
    taxed = tuple((p, alignment_tax(table["sft"], p.scores, GENERAL, ALIGNMENT, seed=seed)) for p in points)
    return Proof(models, tax, report, taxed)


def summary(proof: Proof) -> dict:
    """The headline numbers: (a) tax and its test, (b) BWT, (c) the tax and refusal along the sweep."""
    t, f = proof.tax, proof.forgetting
    full = next((tax.tax for p, tax in proof.sweep if p.value == 1.0), t.tax)
    return {
        "tax": t.tax, "tax_relative": t.relative, "tax_p": t.tax_test.p_value,
        "tax_interval": [t.tax_test.low, t.tax_test.high], "tax_significant": t.significant,
        "alignment_gain": t.gain, "gain_significant": t.gain_test.significant,
        "backward_transfer": f.backward_transfer, "forgetting": f.forgetting, "intransigence": f.intransigence,
        "backward": {task: {"delta": d.delta, "p": d.p_value, "significant": d.significant}
                     for task, d in (f.backward or {}).items()},
        "sweep": [{"weight": p.value, "G": tax.general_after, "tax": tax.tax, "tax_significant": tax.significant,
                   "refusal": p.scores["refusal"].value, "over_refusal": p.scores["over_refusal"].value,
                   "tax_recovered": 1 - tax.tax / full if full > 0 else None} for p, tax in proof.sweep],
    }


def sweep_table(proof: Proof) -> list[dict]:
    """One row per sweep point, for `evals.report.tables.render`."""
    return [{"weight": row["weight"], "G": row["G"], "tax": row["tax"],
             "tax tested": "significant" if row["tax_significant"] else "noise", "refusal": row["refusal"],
             "over-refusal": row["over_refusal"], "tax recovered": row["tax_recovered"]}
            for row in summary(proof)["sweep"]]


def save(proof: Proof, out: str) -> list[str]:
    """`out/proof.json` (the models and `summary`) and `out/averaging.png` (G and refusal against w)."""
    from evals.report.plots import save_png, sweep_figure

    path = os.path.join(out, "proof.json")
    with open(path, "w") as f:
        json.dump({"models": proof.models, **summary(proof)}, f, indent=2)
    rows = summary(proof)["sweep"]
    series = {"G": [r["G"] for r in rows], "refusal": [r["refusal"] for r in rows]}
    figure = sweep_figure("w", [r["weight"] for r in rows], series, "parent + w (aligned - parent)")
    return [path, save_png(figure, os.path.join(out, "averaging.png"))]
