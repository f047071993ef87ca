"""Self-training in rounds, what RFT and SPIN share: each round samples from the current model,
turns the samples into a dataset (the loop's `make`), and trains on it with the offline loop (an
ordinary run, a session of its own, of another objective, SFT or DPO, whose base is the current model);
the round's result is the next round's model.

    OUT/log.jsonl                        one record per round: what was sampled, kept, scored
    OUT/round-K-data.jsonl               the round's dataset (beside the round's run: it is its input)
    OUT/round-K/{checkpoint-N,final}     the round's run, as the offline loop writes it
    OUT/final -> round-R/final           the last round's model

OUT is claimed as a run's out folder is (trainers/run_output.py: never an input, locked while the
rounds run); with `force`, the rounds run in a hidden sibling that replaces OUT once they finish.
A run that stopped is continued by running it again: rounds whose final folder is complete are kept,
and a round that stopped part-way is run again from its start.
Before the first round and after each, the model's greedy completions of the data.eval prompts are
scored by exact match with their `completion` (`eval_exact_match`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

import torch

from surgery.errors import SpecError
from surgery.io.output import atomic_folder, output_lock
from trainers import data, generation, models, run_output, templates
from trainers.loops import offline, session
from trainers.spec import Run, parse_run

# make(model, tokenizer, template, rows, round) -> (the round's dataset rows, stats to log)
MakeData = Callable[..., tuple[list[dict], dict[str, float]]]


def check(run: Run) -> None:
    rounds = run.objective_config.rounds
    if run.spec.parallel == "fsdp":
        raise SpecError(run.file, "parallel", f"{run.spec.objective.name} samples with the whole model; use "
                        "parallel: ddp")
    if rounds > 1 and not run.method.whole_model:
        raise SpecError(run.file, "objective.rounds", f"later rounds start from the previous round's whole model; "
                        f"method '{run.spec.method.name}' saves an adapter: use method full or freeze, or rounds: 1")


def train_rounds(run: Run, make: MakeData, objective: dict, quiet: bool = False, force: bool = False) -> str:
    """Run every round; returns OUT/final."""
    check(run)
    run_output.check_place(run)
    out = run.spec.out
    with output_lock(out):
        if force and os.path.isdir(out) and os.listdir(out):
            with atomic_folder(out) as staging:
                run_rounds(run, make, objective, quiet, staging)
        else:
            run_rounds(run, make, objective, quiet, out)
    return os.path.join(out, "final")


def run_rounds(run: Run, make: MakeData, objective: dict, quiet: bool, out: str) -> str:
    """The rounds, written into `out` (the run's out, or its --force sibling)."""
    spec, cfg = run.spec, run.objective_config
    rows = prompt_rows(run)
    evals = [r for i, p in enumerate(spec.data.eval)
             for r in data.read_dataset(p, ("prompt_completion",), f"{run.file}: data.eval.{i}").rows]
    os.makedirs(out, exist_ok=True)
    log = session.Log(os.path.join(out, "log.jsonl"), True, keep_until=0)
    current = spec.base
    for k in range(1, cfg.rounds + 1):
        folder = os.path.join(out, f"round-{k}")
        model, tokenizer, template = load_policy(run, current)
        if k == 1 and evals:
            log.write({"round": 0, "eval_exact_match": exact_match(model, tokenizer, template, evals, cfg)})
        done = os.path.join(folder, "final")
        if os.path.isfile(os.path.join(done, "lineage.json")):  # finished before: keep it
            current = done
            log.write({"round": k, "skipped": "finished by an earlier run", "out": done})
            continue
        new_rows, stats = make(model, tokenizer, template, rows, k)
        del model
        path = write_jsonl(os.path.join(out, f"round-{k}-data.jsonl"), new_rows)
        inner = round_run(run, current, objective, path, folder)
        # a round an earlier invocation left part-way is replaced: its data were drawn again above
        current = offline.train(inner, quiet=quiet, force=True)
        record = {"round": k, **stats, "out": current}
        if evals:
            model, tokenizer, template = load_policy(run, current)
            record["eval_exact_match"] = exact_match(model, tokenizer, template, evals, cfg)
        log.write(record)
    return publish(current, os.path.join(out, "final"))


def prompt_rows(run: Run) -> list[data.Row]:
    """The training rows sampled from each round: all of them, or `rows_per_round` drawn with the seed."""
    rows = [r for i, s in enumerate(run.spec.data.train)
            for r in data.read_dataset(s.path, ("prompt_completion",), f"{run.file}: data.train.{i}").rows]
    n = run.objective_config.rows_per_round
    if n is not None and n < len(rows):
        rows = random.Random(run.spec.seed).sample(rows, n)
    return rows


def load_policy(run: Run, path: str):
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = models.load_weights(run, path).to(device).eval()
    tokenizer = models.load_tokenizer(run.spec.model_copy(update={"base": path}))
    return model, tokenizer, templates.resolve(run.spec.chat_template, tokenizer, run.file)


def round_run(run: Run, base: str, objective: dict, train: str, out: str) -> Run:
    """The offline run of one round: this spec with another base, objective, data and out."""
    fields = run.spec.model_dump(mode="json")
    fields.update(base=base, objective=objective, out=out)
    fields["data"] = {**fields["data"], "train": [{"path": train}], "sampling": "proportional", "temperature": 1.0}
    if objective["name"] != "sft":  # the eval rows are prompt/completion: only SFT scores them as a loss
        fields["data"]["eval"] = []
        fields["eval_every"] = None
    return parse_run(fields, run.file)


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def publish(final: str, link: str) -> str:
    if os.path.islink(link):
        os.remove(link)
    os.symlink(os.path.relpath(final, os.path.dirname(link)), link)
    return link


def sample_rows(model, tokenizer, template, rows: list[data.Row], cfg, n: int, seed: int) -> list[generation.Sample]:
    return generation.sample(model, tokenizer, [r.fields["prompt"] for r in rows], template=template, n=n,
                             max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)


def exact_match(model, tokenizer, template, rows: list[data.Row], cfg) -> float:
    """Share of rows whose greedy completion is exactly their `completion`."""
    got = generation.sample(model, tokenizer, [r.fields["prompt"] for r in rows], template=template, n=1,
                            max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    return sum(s.text == r.fields["completion"] for s, r in zip(got, rows)) / max(len(rows), 1)
